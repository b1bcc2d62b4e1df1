"""Snapshots by name: the UTC names shown everywhere (CLI, WebDAV, FUSE) and the
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
        if str(s["seq"]) == str(spec) or snapshot_name(s["time_ns"]) == spec:
            return s
    raise NotFound(f"There is no snapshot {spec!r} in this set.", "List them with 'ironcore snapshots SET'.")


def snapshot_name(time_ns: int) -> str:
    """The snapshot's UTC name, valid on Windows too: YYYY-MM-DDTHH-MM-SSZ."""
    t = datetime.datetime.fromtimestamp(time_ns / 1e9, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H-%M-%SZ")


def snapshot_names(snapshots: list[dict]) -> dict[str, int]:
    """UTC name -> seq for folder views (WebDAV, FUSE); a second snapshot in the same
    second gets its number appended, so every snapshot has a name of its own."""
    names: dict[str, int] = {}
    for snap in snapshots:
        name = snapshot_name(snap["time_ns"])
        names[name if name not in names else f"{name}-{snap['seq']}"] = snap["seq"]
    return names
