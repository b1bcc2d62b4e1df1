"""The replication feed under /api/v1/replication: what a replica follows.

One long-polled document describes the whole server (accounts with their
password hashes, every set's settings, volume.json and log head) and carries a
generation, the SHA-256 of its content: a replica asks again with the
generation it has and the answer comes when something changed (at once for
commits and settings made through this server, within a second for changes by
another process such as `ironfs gc` or `ironfs account`). Commits and packs of
any account are then read by name. Only the admin's password or a replication
token (`ironfs replica token`) opens the feed, and a replication token opens
nothing else."""
import hashlib
import json
import math
import os
import time

from werkzeug.routing import Rule

from ironfs.errors import Forbidden, UsageError
from ironfs.format import log as commitlog, pack as packfmt
from ironfs.server.responses import json_response
from ironfs.server.sync import LONG_POLL_MAX, SyncApi, pack_name
from ironfs.store.accounts import check_account_name

RECHECK_S = 1.0    # how often a waiting feed looks for changes made by other processes

RULES = [
    Rule("/api/v1/replication/state", endpoint="feed_state", methods=["GET"]),
    Rule("/api/v1/replication/accounts/<account_name>/sets/<set_name>/log/<int:seq>", endpoint="feed_commit",
         methods=["GET"]),
    Rule("/api/v1/replication/accounts/<account_name>/sets/<set_name>/packs/<name>", endpoint="feed_pack",
         methods=["GET", "HEAD"]),
]
ENDPOINTS = {rule.endpoint for rule in RULES}


def check_replicator(account: dict) -> None:
    if not account["admin"] or account["role"] not in ("owner", "replica"):
        raise Forbidden("The replication feed is for the admin or a replication token.",
                        "Make a token on this server with 'ironfs replica token'.")


class FeedApi:
    def __init__(self, root, sets, sync_api: SyncApi):
        self.root, self.sets, self.sync = root, sets, sync_api

    def state(self) -> dict:
        accounts = []
        for row in self.root.accounts.export():
            sets = []
            for name in self.sets.names(row["name"]):
                set_dir = self.sets.set_dir(row["name"], name)
                try:
                    with open(os.path.join(set_dir, "set.json")) as f:
                        info = json.load(f)
                    with open(os.path.join(set_dir, "volume", "volume.json")) as f:
                        volume = json.load(f)
                    head = (commitlog.list_seqs(os.path.join(set_dir, "volume", "log")) or [0])[-1]
                except FileNotFoundError:   # being created this instant: the next answer has it
                    continue
                sets.append({"name": name, "set": info, "volume": volume, "head": head})
            accounts.append(dict(row, sets=sets))
        body = {"fingerprint": self.root.fingerprint(), "accounts": accounts}
        body["generation"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return body

    def feed_state(self, request, account):
        """The state now, or (with `after` = the generation the caller has and `wait`
        seconds) as soon as it differs from that."""
        check_replicator(account)
        after = request.args.get("after", "")
        try:
            wait = float(request.args.get("wait", 0))
        except ValueError:
            wait = math.nan
        if not (math.isfinite(wait) and wait >= 0):
            raise UsageError(f"wait is a number of seconds (0 to {LONG_POLL_MAX:.0f}).")
        deadline = time.monotonic() + min(wait, LONG_POLL_MAX)
        seen = self.sets.changes
        while True:
            state = self.state()
            left = deadline - time.monotonic()
            if state["generation"] != after or left <= 0 or self.sets.closing:
                return json_response(state)
            seen = self.sets.wait_for_change(seen, min(left, RECHECK_S))

    def _volume_dir(self, account_name: str, set_name: str) -> str:
        check_account_name(account_name)
        self.sets.require(account_name, set_name)
        return self.sets.volume_dir(account_name, set_name)

    def feed_commit(self, request, account, account_name, set_name, seq):
        check_replicator(account)
        if seq < 1:
            raise UsageError("Commits are numbered from 1.")
        path = os.path.join(self._volume_dir(account_name, set_name), "log", commitlog.commit_name(seq))
        return self.sync.send_file(request, path)

    def feed_pack(self, request, account, account_name, set_name, name):
        check_replicator(account)
        path = os.path.join(self._volume_dir(account_name, set_name), packfmt.pack_relpath(pack_name(name)))
        return self.sync.send_file(request, path, ranges=True)
