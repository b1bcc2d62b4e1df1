"""One run of a set on a server, as `ironcore backup` does it by hand and the
daemon does it on schedule: the pre-backup command, the backup (with the set's
bandwidth limit and local copy), the post-backup command, and the report.

Statuses: ok; warning (a snapshot was made, but some files could not be read,
or the local copy or the post-backup command failed); failed (no snapshot);
skipped (the pre-backup command failed and the set does not continue after
that); stopped (asked to stop: SIGTERM, `ironcore daemon --stop`).

Stopping waits for a safe point: the backup engine reports every entry and
every chunk read to its progress object, and that object raises StopRequested
on the main thread when a stop was asked for. The run then unwinds as after
any error: no commit, the packs already uploaded stay on the server as orphans
that the next run adopts (nothing is sent twice), the lease is released. Once
the walk is over there are no more such points, so a run that is committing
finishes its commit."""
import logging
import os
import threading
import time

from client import config, hooks, reports
from client.backup import Backup
from client.localcopy import LocalCopy, LocalCopyError
from client.remote_volume import RemoteVolume
from ironfs.errors import IroncoreError

logger = logging.getLogger(__name__)


class StopRequested(IroncoreError):
    exit_code = 130

    def __init__(self):
        super().__init__("The backup was stopped at a safe point; nothing of it was committed.",
                         "The next run goes on from there: the packs already sent are reused.")


class SafePoints:
    """The progress object the backup engine calls on its main thread: it passes
    the calls on (a terminal progress bar) and raises StopRequested once `stop` is set."""

    def __init__(self, stop: threading.Event, inner=None):
        self.stop, self.inner = stop, inner

    def entry(self) -> None:
        if self.inner is not None:
            self.inner.entry()
        if self.stop.is_set():
            raise StopRequested()

    def bytes(self, n: int) -> None:
        if self.inner is not None:
            self.inner.bytes(n)
        if self.stop.is_set():
            raise StopRequested()


def new_report(name: str, reason: str) -> dict:
    return {"set": name, "host": config.host_name(), "reason": reason, "status": "failed",
            "started_ns": time.time_ns(), "finished_ns": None, "duration_s": 0.0, "snapshot": None,
            "files_new": 0, "files_changed": 0, "files_unchanged": 0, "files_deleted": 0, "files_failed": 0,
            "failed": [], "bytes_read": 0, "bytes_stored": 0, "bytes_sent": 0, "error": None, "error_type": None,
            "hooks": {}, "local_copy": None}


def run_server_set(server, name: str, bset, info: dict, read_secret, reason: str = "manual",
                   stop: threading.Event | None = None, progress=None) -> tuple[dict, dict, IroncoreError | None]:
    """Run set `name` once. Returns (report, the backup engine's own report or {},
    the error that failed the run or None); the report has been sent (or queued) either way."""
    stop = stop or threading.Event()
    settings = info["settings"]
    report = new_report(name, reason)
    backup = None
    error: IroncoreError | None = None
    unexpected: BaseException | None = None
    env = {"IRONCORE_SET": name}
    pre = (settings.get("hooks") or {}).get("pre")
    post = (settings.get("hooks") or {}).get("post")
    try:
        if pre:
            result = report["hooks"]["pre"] = hooks.run_hook(pre, env, stop)
            logger.info("event=hook set=%s hook=pre ok=%s exit=%s seconds=%.1f", name, result["ok"],
                        result["exit_code"], result["seconds"])
            if stop.is_set():
                raise StopRequested()
            if not result["ok"]:
                message = hooks.describe_failure("pre", result, pre.get("timeout", hooks.HOOK_TIMEOUT_DEFAULT))
                if not pre.get("continue_on_error"):
                    report["status"] = "skipped"
                    raise IroncoreError(message + " The backup was skipped.",
                                        "Fix the command, or let the set back up anyway with "
                                        f"'ironcore set edit {name} --pre-continue-on-error'.")
                report["warnings"] = [message + " The set continues after that, so the backup ran."]
        backup = run_backup(server, name, bset, info, read_secret, stop, progress, report)
    except IroncoreError as exc:
        error = exc
        if isinstance(exc, StopRequested):
            report["status"] = "stopped"
        elif report["status"] != "skipped":
            report["status"] = "failed"
        report["error"] = exc.message
        report["error_type"] = type(exc).__name__
    except (Exception, KeyboardInterrupt) as exc:   # reported, the post-command run, then raised on
        unexpected = exc
        report["status"] = "stopped" if isinstance(exc, KeyboardInterrupt) else "failed"
        report["error"] = "Interrupted." if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        report["error_type"] = type(exc).__name__
    if post:
        env["IRONCORE_BACKUP_STATUS"] = "ok" if error is None and unexpected is None else report["status"]
        result = report["hooks"]["post"] = hooks.run_hook(post, env)
        logger.info("event=hook set=%s hook=post ok=%s exit=%s seconds=%.1f", name, result["ok"],
                    result["exit_code"], result["seconds"])
        if not result["ok"]:
            report.setdefault("warnings", []).append(
                hooks.describe_failure("post", result, post.get("timeout", hooks.HOOK_TIMEOUT_DEFAULT)))
    if backup is not None and error is None and unexpected is None:
        report["status"] = "warning" if (report["files_failed"] or report.get("warnings")
                                         or (report["local_copy"] or {}).get("error")) else "ok"
    report["finished_ns"] = time.time_ns()
    report["duration_s"] = round((report["finished_ns"] - report["started_ns"]) / 1e9, 3)
    report["bytes_sent"] = server.bytes_sent
    logger.info("event=run-end set=%s reason=%s status=%s snapshot=%s seconds=%.1f", name, reason,
                report["status"], report["snapshot"], report["duration_s"])
    reports.send(server, report)
    if unexpected is not None:
        raise unexpected
    return report, backup or {}, error


def run_backup(server, name, bset, info, read_secret, stop, progress, report) -> dict:
    """The backup itself, into `report`; returns the engine's own report."""
    settings = info["settings"]
    volume = RemoteVolume(server, name, info)
    try:
        volume.open_key(read_secret)
        server.limit_uploads(settings.get("bandwidth_limit"))
        local = None
        if settings.get("local_copy"):
            local = LocalCopy(settings["local_copy"], volume)
            try:
                local.prepare()
                volume.local_copy = local
            except IroncoreError as exc:
                report["local_copy"] = {"folder": settings["local_copy"], "error": exc.message}
                local = None
        cache_dir = os.path.join(config.home(), "cache")
        result = Backup(volume, bset, cache_dir, progress=SafePoints(stop, progress)).run()
        report.update(snapshot=result["snapshot"], files_new=result["files_new"],
                      files_changed=result["files_changed"], files_unchanged=result["files_unchanged"],
                      files_deleted=result["deleted"], files_failed=len(result["errors"]),
                      failed=result["errors"][:reports.MAX_FAILED_LISTED], bytes_read=result["bytes_read"],
                      bytes_stored=result["bytes_stored"])
        if local is not None:
            try:
                report["local_copy"] = local.catch_up()
            except (LocalCopyError, IroncoreError) as exc:
                report["local_copy"] = {"folder": local.folder, "error": exc.message}
        return result
    finally:
        volume.close()
