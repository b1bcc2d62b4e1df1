"""Run reports under /api/v1/sets/<set>/reports: each client run (scheduled or
by hand) posts one; `ironcore reports SET` and the console read them.

    <root>/accounts/<account>/<set>/reports/<received_ns>-<random>.json

One file per report, written atomically, at most REPORT_MAX_BYTES each; the
newest KEEP are kept per set, and fewer when they would pass SET_MAX_BYTES:
reports sit outside the account's quota, so they are bounded here instead.
The server adds `id`, `received_ns` and `account`; the rest is the client's
(FORMAT: docs/API.md), checked for shape and size, never trusted for paths."""
import json
import os
import secrets
import threading
import time

from werkzeug.routing import Rule

from ironfs.errors import UsageError
from ironfs.format.fsutil import write_atomic
from ironfs.server.responses import json_response

KEEP = 500                 # reports kept per set
REPORT_MAX_BYTES = 256 * 1024     # one report as posted
SET_MAX_BYTES = 16 * 1024 * 1024  # all of a set's reports together
LIST_MAX = 1000
STATUSES = {"ok", "warning", "failed", "skipped", "stopped"}
REQUIRED = {"status": str, "started_ns": int}

RULES = [
    Rule("/api/v1/sets/<set_name>/reports", endpoint="add_report", methods=["POST", "PUT"]),
    Rule("/api/v1/sets/<set_name>/reports", endpoint="list_reports", methods=["GET"]),
]
ENDPOINTS = {rule.endpoint for rule in RULES}


class ReportsApi:
    """Handlers for RULES; `account` is the authenticated caller."""

    def __init__(self, sets, json_body):
        self.sets, self.json_body = sets, json_body
        self._lock = threading.Lock()

    def folder(self, account: str, set_name: str) -> str:
        return os.path.join(self.sets.require(account, set_name), "reports")

    def add_report(self, request, account, set_name):
        report = self.json_body(request, REPORT_MAX_BYTES)
        for key, kind in REQUIRED.items():
            if not isinstance(report.get(key), kind):
                raise UsageError(f"A report needs {key!r} ({kind.__name__}).")
        if report["status"] not in STATUSES:
            raise UsageError(f"A report's status is one of {', '.join(sorted(STATUSES))}.")
        report.pop("set", None)
        folder = self.folder(account["name"], set_name)
        received = time.time_ns()
        report_id = f"{received:020d}-{secrets.token_hex(4)}"
        stored = {**report, "id": report_id, "set": set_name, "received_ns": received, "account": account["name"]}
        with self._lock:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            write_atomic(os.path.join(folder, report_id + ".json"), json.dumps(stored).encode())
            self._prune(folder)
        return json_response({"id": report_id}, 201)

    def list_reports(self, request, account, set_name):
        """The newest `limit` reports (default 20), oldest first."""
        try:
            limit = int(request.args.get("limit", 20))
        except ValueError:
            limit = 0
        if not 1 <= limit <= LIST_MAX:
            raise UsageError(f"limit is a number from 1 to {LIST_MAX}.")
        folder = self.folder(account["name"], set_name)
        out = []
        for name in self._names(folder)[-limit:]:
            try:
                with open(os.path.join(folder, name)) as f:
                    out.append(json.load(f))
            except (FileNotFoundError, ValueError):
                continue   # pruned meanwhile
        return json_response(out)

    def _prune(self, folder: str) -> None:
        """Drop the oldest reports beyond KEEP or SET_MAX_BYTES (the newest always stays)."""
        kept, total = 0, 0
        for name in reversed(self._names(folder)):
            path = os.path.join(folder, name)
            try:
                size = os.path.getsize(path)
            except FileNotFoundError:
                continue
            if kept and (kept >= KEEP or total + size > SET_MAX_BYTES):
                os.unlink(path)
                continue
            kept, total = kept + 1, total + size

    @staticmethod
    def _names(folder: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            return []
