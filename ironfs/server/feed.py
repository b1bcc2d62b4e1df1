"""The replication feed under /api/v1/replication: what a replica follows.

One long-polled document describes the whole server (accounts with their
password hashes, every set's settings, volume.json and log head) and carries a
generation, a SHA-256 digest of its content: a replica asks again with the
generation it has and the answer comes when something changed (at once for
commits and settings made through this server, within a second for changes by
another process such as `ironfs gc` or `ironfs account`, or within
FULL_REFRESH_S for two such changes to one set within one tick of the file
system's clock). Commits and packs of
any account are then read by name. Only the admin's password or a replication
token (`ironfs replica token`) opens the feed, and a replication token opens
nothing else."""
import hashlib
import json
import math
import os
import threading
import time

from werkzeug.routing import Rule

from ironfs.errors import Forbidden, UsageError
from ironfs.format import log as commitlog, pack as packfmt
from ironfs.server.responses import json_response
from ironfs.server.sync import LONG_POLL_MAX, SyncApi, pack_name
from ironfs.store.accounts import check_account_name

RECHECK_S = 1.0         # how often a waiting feed looks for changes made by other processes
FULL_REFRESH_S = 30.0   # and how often it reads every set afresh

RULES = [
    Rule("/api/v1/replication/state", endpoint="feed_state", methods=["GET"]),
    Rule("/api/v1/replication/accounts/<account_name>/sets/<set_name>/log/<int:seq>", endpoint="feed_commit",
         methods=["GET"]),
    Rule("/api/v1/replication/accounts/<account_name>/sets/<set_name>/packs/<name>", endpoint="feed_pack",
         methods=["GET", "HEAD"]),
]
ENDPOINTS = {rule.endpoint for rule in RULES}


def _stamp(path: str) -> tuple:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def check_replicator(account: dict) -> None:
    if not account["admin"] or account["role"] not in ("owner", "replica"):
        raise Forbidden("The replication feed is for the admin or a replication token.",
                        "Make a token on this server with 'ironfs replica token'.")


class FeedApi:
    """Each set's part of the state is cached with the file stamps of its set.json,
    volume.json and log folder, and read again only when they (or this process's
    record of the set's changes) say it changed: a wake-up costs a few stat calls
    per set, not a read of every log. Everything is read afresh every
    FULL_REFRESH_S, against a change by another process that a coarse file
    time could hide."""

    def __init__(self, root, sets, sync_api: SyncApi):
        self.root, self.sets, self.sync = root, sets, sync_api
        self._lock = threading.Lock()
        self._cache: dict[tuple, tuple] = {}   # (account, set) -> (stamp, entry, digest)
        self._full_at = -math.inf

    def state(self) -> dict:
        with self._lock:
            changed = self.sets.take_changed_sets()
            now = time.monotonic()
            if now - self._full_at >= FULL_REFRESH_S:
                self._full_at, self._cache = now, {}
            accounts, digest, seen = [], hashlib.sha256(), set()
            fingerprint = self.root.fingerprint()   # reads and hashes the certificate: once a call
            digest.update(fingerprint.encode())
            for row in self.root.accounts.export():
                digest.update(json.dumps(row, sort_keys=True).encode())
                sets = []
                for name in self.sets.names(row["name"]):
                    key = (row["name"], name)
                    got = self._set_state(key, stale=key in changed)
                    if got is not None:   # None: being created this instant, the next answer has it
                        seen.add(key)
                        sets.append(got[0])
                        digest.update(got[1])
                accounts.append(dict(row, sets=sets))
            for key in self._cache.keys() - seen:
                del self._cache[key]
        return {"fingerprint": fingerprint, "accounts": accounts, "generation": digest.hexdigest()}

    def _set_state(self, key: tuple, stale: bool):
        """(entry, digest) of one set, from the cache while its stamp holds."""
        set_dir = self.sets.set_dir(*key)
        try:
            stamp = tuple(_stamp(os.path.join(set_dir, *part))
                          for part in (("set.json",), ("volume", "volume.json"), ("volume", "log")))
            cached = self._cache.get(key)
            if cached is not None and cached[0] == stamp and not stale:
                return cached[1:]
            with open(os.path.join(set_dir, "set.json")) as f:
                info = json.load(f)
            with open(os.path.join(set_dir, "volume", "volume.json")) as f:
                volume = json.load(f)
            head = (commitlog.list_seqs(os.path.join(set_dir, "volume", "log")) or [0])[-1]
        except FileNotFoundError:
            return None
        entry = {"name": key[1], "set": info, "volume": volume, "head": head}
        self._cache[key] = (stamp, entry, hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).digest())
        return self._cache[key][1:]

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
        state = self.state()
        if state["generation"] != after or wait <= 0:
            return json_response(state)
        with self.sync.long_polls.hold(account["name"]):   # only a poll that will wait holds a place
            while True:
                left = deadline - time.monotonic()
                if state["generation"] != after or left <= 0 or self.sets.closing:
                    return json_response(state)
                seen = self.sets.wait_for_change(seen, min(left, RECHECK_S))
                state = self.state()

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
