"""Snapshots by name: the UTC names shown everywhere (CLI, API, WebDAV, FUSE) and the
ways a user may point at one."""
import datetime

from ironfs.errors import NotFound


def resolve_snapshot(catalog, spec: str | int | None) -> dict:
    snaps = catalog.snapshots()
    if not snaps:
        raise NotFound("This set has no snapshot yet.", "Run a backup first.")
    if spec in (None, "latest"):
        return snaps[-1]
    for s in snaps:
        if str(s["seq"]) == str(spec) or s["name"] == spec:
            return s
    raise NotFound(f"There is no snapshot {spec!r} in this set.", "List them with 'ironcore snapshots SET'.")


def snapshot_name(time_ns: int) -> str:
    """A UTC time as snapshots are named, valid on Windows too: YYYY-MM-DDTHH-MM-SSZ."""
    t = datetime.datetime.fromtimestamp(time_ns / 1e9, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H-%M-%SZ")


def name_snapshots(history: list[dict]) -> None:
    """Give each snapshot of a volume's whole history (forgotten ones too, by seq) its
    unique name, in place: its UTC second, and for a later snapshot in a second that
    an earlier one took, "-SEQ" after it. Derived from the full history, a name never
    changes when retention forgets a neighbour. The catalog calls this, so the CLI,
    the API, WebDAV and FUSE all show and accept the same names."""
    taken: set[str] = set()
    for snap in history:
        stamp = snapshot_name(snap["time_ns"])
        snap["name"] = stamp if stamp not in taken else f"{stamp}-{snap['seq']}"
        taken.add(stamp)


def snapshot_names(snapshots: list[dict]) -> dict[str, int]:
    """Name -> seq, for folder views (WebDAV, FUSE)."""
    return {snap["name"]: snap["seq"] for snap in snapshots}
