"""Run reports: every run of a set (by the daemon or by hand) sends one to the
server, which keeps them per set (`ironcore reports SET`, later the console).
A report that cannot be sent (the server is down: the very reason the run
failed) waits in $IRONCORE_HOME/outbox/ and goes with the next one."""
import json
import logging
import os
import secrets

from client import config
from ironfs.errors import IroncoreError
from ironfs.format.fsutil import write_atomic
from ironfs.format.snapshots import snapshot_name
from ironfs.server.reports import REPORT_MAX_BYTES
from ironfs.store.sizes import format_size

logger = logging.getLogger(__name__)

MAX_FAILED_LISTED = 1000    # failed files named in a report; the count is always whole


def outbox() -> str:
    path = os.path.join(config.home(), "outbox")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def send(server, report: dict) -> bool:
    """Send the reports waiting in the outbox, then this one; True if all went.
    Never raises for the network: what did not go waits for the next run."""
    folder = outbox()
    write_atomic(os.path.join(folder, f"{report['started_ns']:020d}-{secrets.token_hex(4)}.json"),
                 json.dumps(report).encode())
    sent_all = True
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".json")):
        path = os.path.join(folder, name)
        try:
            with open(path) as f:
                waiting = json.load(f)
            server.call("POST", f"/api/v1/sets/{waiting['set']}/reports", json=fitted(waiting), retry_for=10)
        except (IroncoreError, ValueError, KeyError) as exc:
            message = getattr(exc, "message", str(exc))
            if getattr(exc, "status", None) in (400, 404, 413):   # the set is gone or the report refused: drop it
                logger.warning("event=report-dropped file=%s error=%r", name, message)
                os.unlink(path)
                continue
            logger.warning("event=report-waiting file=%s error=%r", name, message)
            sent_all = False
            break
        os.unlink(path)
    return sent_all


def fitted(report: dict) -> dict:
    """The report within the server's REPORT_MAX_BYTES: fewer failed files named if
    need be (`files_failed` still counts them all)."""
    failed = report.get("failed") or []
    while failed and len(json.dumps(report)) > REPORT_MAX_BYTES:
        failed = failed[:len(failed) // 2]
        report = dict(report, failed=failed)
    return report


def line(report: dict) -> str:
    """One report as one line for `ironcore reports`."""
    when = snapshot_name(report["started_ns"])
    counts = (f"{report.get('files_new', 0)} new, {report.get('files_changed', 0)} changed, "
              f"{report.get('files_deleted', 0)} deleted, {report.get('files_failed', 0)} failed")
    data = f"read {format_size(report.get('bytes_read', 0))}, sent {format_size(report.get('bytes_sent', 0))}"
    snap = f" snapshot {report['snapshot']}" if report.get("snapshot") else ""
    return (f"{when}  {report.get('host', ''):<12} {report.get('reason', ''):<9} {report['status']:<8}"
            f"{snap}  {counts}; {data} in {report.get('duration_s', 0):.1f} s")


def details(report: dict) -> list[str]:
    """The lines under a report that needs attention: its error, hooks, failed files."""
    out = []
    if report.get("error"):
        out.append(f"    error: {report['error']}")
    for name, hook in (report.get("hooks") or {}).items():
        state = "ok" if hook["ok"] else "FAILED"
        out.append(f"    {name}-backup command: {state} (exit {hook['exit_code']}, {hook['seconds']:.1f} s)")
        for text in hook["output"].splitlines()[-5:]:
            out.append(f"      | {text}")
    for f in report.get("failed", [])[:20]:
        out.append(f"    not backed up: {f['path']}: {f['error']}")
    if (report.get("local_copy") or {}).get("error"):
        out.append(f"    local copy: {report['local_copy']['error']}")
    return out
