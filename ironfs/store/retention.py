"""Applying a set's retention policy on the server, as a `forget` commit.

The policy lives in the set's settings (clients edit it); when and from what
it last changed is kept by the server beside them. For GRACE_DAYS after a
change, a snapshot taken before the change goes only if the previous policy
would also let it go (no policy at all keeps everything): a stolen client
that edits the policy cannot erase history before the owner notices."""
import datetime
import time

from ironfs.errors import UsageError
from ironfs.format.retention import Policy, decide

GRACE_DAYS = 7


def policy_of(settings: dict | None) -> Policy | None:
    if not settings:
        return None
    try:
        return Policy(**settings)
    except TypeError as exc:
        raise UsageError(f"The retention policy is not valid: {exc}.") from None


def plan(info: dict, snapshots: list[dict], now: datetime.datetime) -> list[dict]:
    """Per snapshot: seq, time_ns, keep, kept_by, reason."""
    policy = policy_of(info["settings"].get("retention"))
    if policy is None or not snapshots:
        return [{"seq": s["seq"], "time_ns": s["time_ns"], "keep": True, "kept_by": ["no policy"], "reason": ""}
                for s in snapshots]
    verdicts = decide(snapshots, policy, now)
    changed_ns = info.get("retention_changed_ns") or 0
    in_grace = now.timestamp() * 1e9 < changed_ns + GRACE_DAYS * 86400e9
    if in_grace:
        before = policy_of(info.get("retention_before"))
        kept_before = {v.seq for v in decide(snapshots, before, now) if v.keep} if before else \
            {s["seq"] for s in snapshots}
        until = datetime.datetime.fromtimestamp(changed_ns / 1e9 + GRACE_DAYS * 86400, datetime.timezone.utc)
        for v in verdicts:
            if not v.keep and v.time_ns < changed_ns and v.seq in kept_before:
                v.kept_by.append(f"grace period of the policy change, until {until:%Y-%m-%d %H:%M} UTC")
                v.reason = ""
    return [{"seq": v.seq, "time_ns": v.time_ns, "keep": v.keep, "kept_by": v.kept_by, "reason": v.reason}
            for v in verdicts]


def apply(sets, account: str, name: str, dry_run: bool = False, now: datetime.datetime | None = None,
          after_commit: bool = False) -> dict:
    """Decide and, unless dry_run, forget what the policy lets go. Returns the report."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    info = sets.info(account, name)
    snapshots = sets.volume(account, name).refresh().snapshots()
    verdicts = plan(info, snapshots, now)
    gone = [v["seq"] for v in verdicts if not v["keep"]]
    seq = None
    if gone and not dry_run:
        seq = sets.forget(account, name, gone, after_commit)
    return {"set": name, "snapshots": verdicts, "forgotten": gone if not dry_run else [], "commit": seq,
            "dry_run": dry_run, "time_ns": time.time_ns()}


def apply_to_volume(volume, settings: dict, dry_run: bool = False, now: datetime.datetime | None = None) -> dict:
    """The same for a volume folder (a local set, a seed copy), with the policy given:
    no grace period, since the policy comes from whoever runs the command."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    verdicts = plan({"settings": {"retention": settings}}, volume.refresh().snapshots(), now)
    gone = [v["seq"] for v in verdicts if not v["keep"]]
    seq = None
    if gone and not dry_run:
        with volume.writer() as writer:
            commit = writer.start_commit("forget")
            commit.add({"t": "forget", "snapshots": gone})
            seq = writer.finish_commit(commit)
    return {"set": volume.root, "snapshots": verdicts, "forgotten": gone if not dry_run else [], "commit": seq,
            "dry_run": dry_run, "time_ns": time.time_ns()}
