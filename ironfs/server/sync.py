"""The sync API under /api/v1/sets: what clients use to back up and restore.

A backup takes the set's writer lease, uploads packs (each checked against its
SHA-256 name and declared length), then uploads the commit that names them.
A restore, or a client catching up, reads the commit log, pack indexes and
byte ranges of packs. Every route works on the caller's own account only; no
route removes a snapshot or a pack."""
import logging
import math
import os
import threading
from collections import Counter
from contextlib import contextmanager

from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import wrap_file

from ironfs.errors import Forbidden, IroncoreError, NotFound, UsageError, WrongSecret
from ironfs.format import crypto, log as commitlog, pack as packfmt
from ironfs.server.responses import json_response
from ironfs.store import retention
from ironfs.store.sets import MACHINE_ID_RE, PACK_NAME_RE

logger = logging.getLogger(__name__)

LONG_POLL_MAX = 60.0
LONG_POLLS_PER_ACCOUNT = 4   # long polls one account may have waiting at once (each holds a worker)
LONG_POLLS_TOTAL = 32        # and all accounts together: a quarter of serve.WORKERS
LONG_POLL_RETRY_S = 5
MAX_BLOB_QUERY = 100_000
LEASE_HEADER = "Ironcore-Lease"
SEND_CHUNK = 256 * 1024   # file bodies go out in pieces this big (werkzeug's default 8 KiB costs a call each)


def declared_length(request: Request) -> int:
    """Uploads must say how long they are (no chunked bodies): the length is checked."""
    if request.content_length is None:
        raise UsageError("An upload needs a Content-Length header.")
    return request.content_length


def pack_name(name: str) -> str:
    if not PACK_NAME_RE.fullmatch(name):
        raise UsageError(f"{name!r} is not a pack name.")
    return name


class TooManyLongPolls(IroncoreError):
    """Answered 429 with Retry-After."""

    def __init__(self):
        super().__init__("Too many long polls are waiting for this account (or this server).",
                         f"Wait {LONG_POLL_RETRY_S} s and ask again, or ask without 'wait'.")
        self.retry_after = LONG_POLL_RETRY_S


class LongPolls:
    """Counts the long polls waiting, so they cannot take every worker; thread-safe."""

    def __init__(self, per_account: int = LONG_POLLS_PER_ACCOUNT, total: int = LONG_POLLS_TOTAL):
        self.per_account, self.total = per_account, total
        self._waiting: Counter = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, account_name: str):
        with self._lock:
            if self._waiting[account_name] >= self.per_account or self._waiting.total() >= self.total:
                raise TooManyLongPolls()
            self._waiting[account_name] += 1
        try:
            yield
        finally:
            with self._lock:
                self._waiting[account_name] -= 1


RULES = [
    Rule("/api/v1/sets", endpoint="list_sets", methods=["GET"]),
    Rule("/api/v1/sets/<set_name>", endpoint="get_set", methods=["GET"]),
    Rule("/api/v1/sets/<set_name>", endpoint="create_set", methods=["PUT"]),
    Rule("/api/v1/sets/<set_name>", endpoint="edit_set", methods=["PATCH"]),
    Rule("/api/v1/sets/<set_name>/machines/<host>", endpoint="set_machine", methods=["PUT"]),
    Rule("/api/v1/sets/<set_name>/slots/<slot>", endpoint="replace_slot", methods=["PUT"]),
    Rule("/api/v1/sets/<set_name>/lease", endpoint="acquire_lease", methods=["POST"]),
    Rule("/api/v1/sets/<set_name>/lease", endpoint="renew_lease", methods=["PUT"]),
    Rule("/api/v1/sets/<set_name>/lease", endpoint="release_lease", methods=["DELETE"]),
    Rule("/api/v1/sets/<set_name>/blobs", endpoint="check_blobs", methods=["POST"]),
    Rule("/api/v1/sets/<set_name>/packs/<name>", endpoint="put_pack", methods=["PUT"]),
    Rule("/api/v1/sets/<set_name>/packs/<name>", endpoint="get_pack", methods=["GET", "HEAD"]),
    Rule("/api/v1/sets/<set_name>/packs/<name>/index", endpoint="get_pack_index", methods=["GET"]),
    Rule("/api/v1/sets/<set_name>/commits/<int:seq>", endpoint="put_commit", methods=["PUT"]),
    Rule("/api/v1/sets/<set_name>/log", endpoint="get_log", methods=["GET"]),
    Rule("/api/v1/sets/<set_name>/log/<int:seq>", endpoint="get_commit", methods=["GET"]),
    Rule("/api/v1/sets/<set_name>/snapshots", endpoint="list_snapshots", methods=["GET"]),
    Rule("/api/v1/password", endpoint="change_password", methods=["POST"]),
]


class SyncApi:
    """Handlers for RULES; `account` is the authenticated caller (ApiApp checks it first)."""

    def __init__(self, root, sets, metrics, json_body):
        self.root, self.sets, self.metrics, self.json_body = root, sets, metrics, json_body
        self.long_polls = LongPolls()

    # --- sets and their settings ----------------------------------------------------------
    def list_sets(self, request, account):
        out = []
        for name in self.sets.names(account["name"]):
            info = self.sets.info(account["name"], name)
            out.append({"name": name, "settings": info["settings"], "machines": info["machines"],
                        "slots": [s["name"] for s in info["volume"]["slots"]]})
        return json_response(out)

    def get_set(self, request, account, set_name):
        return json_response(self.sets.info(account["name"], set_name))

    def create_set(self, request, account, set_name):
        body = self.json_body(request)
        info = self.sets.create(account["name"], set_name, body.get("settings", {}), body.get("volume"))
        return json_response(info, 201)

    def edit_set(self, request, account, set_name):
        return json_response(self.sets.update_settings(account["name"], set_name,
                                                       self.json_body(request).get("settings", {})))

    def set_machine(self, request, account, set_name, host):
        scheduled = self.json_body(request).get("scheduled")
        if not isinstance(scheduled, bool):
            raise UsageError('The body must be {"scheduled": true} or {"scheduled": false}.')
        return json_response(self.sets.set_machine(account["name"], set_name, host, scheduled))

    def replace_slot(self, request, account, set_name, slot):
        if account["role"] != "owner":
            raise Forbidden("Changing a key slot needs the account password, not a machine token.")
        body = self.json_body(request)
        if body.get("name") != slot:
            raise UsageError("The slot's name must match the URL.")
        self.sets.replace_slot(account["name"], set_name, body)
        return json_response({"slot": slot})

    def change_password(self, request, account):
        """The owner changes the password; every set's `login` slot is re-wrapped
        under the new one on the server, which has both passwords just now."""
        if account["role"] != "owner":
            raise Forbidden("Changing the password needs the current password, not a machine token.")
        body = self.json_body(request)
        old, new = body.get("old"), body.get("new")
        if not isinstance(old, str) or not isinstance(new, str) or len(new) < 8:
            raise UsageError('The body must be {"old": ..., "new": ...}; the new password needs 8 characters.')
        self.root.accounts.authenticate(account["name"], old)
        rewrapped, stale = [], []
        for name in self.sets.names(account["name"]):
            vol = self.sets.volume(account["name"], name)
            slot = next((s for s in vol.config["slots"] if s["name"] == "login"), None)
            if slot is None:
                continue
            try:
                master, _ = crypto.open_slots([slot], old.encode(), vol.id)
            except WrongSecret:
                stale.append(name)
                continue
            self.sets.replace_slot(account["name"], name,
                                   crypto.make_slot("login", new.encode(), master, vol.id, slot["kdf"]))
            rewrapped.append(name)
        self.root.accounts.set_password(account["name"], new)
        return json_response({"rewrapped": rewrapped, "stale": stale})

    # --- backing up -------------------------------------------------------------------
    def acquire_lease(self, request, account, set_name):
        body = self.json_body(request)
        host = str(body.get("host", ""))[:255]
        if not host:
            raise UsageError("A lease needs the machine's host name.")
        machine, pid = body.get("machine"), body.get("pid")
        if machine is not None and not (isinstance(machine, str) and MACHINE_ID_RE.fullmatch(machine)):
            raise UsageError("A lease's machine is the installation's id: 32 hex digits.")
        if pid is not None and not (type(pid) is int and 0 < pid < 1 << 32):
            raise UsageError("A lease's pid is the holder's process number.")
        replaces_own = body.get("replaces_own", False)
        if type(replaces_own) is not bool:
            raise UsageError("A lease's replaces_own is true or false.")
        return json_response(self.sets.acquire_lease(account["name"], set_name, host, pid, machine, replaces_own),
                             201)

    def renew_lease(self, request, account, set_name):
        self.sets.renew_lease(account["name"], set_name, request.headers.get(LEASE_HEADER, ""))
        return json_response({"renewed": True})

    def release_lease(self, request, account, set_name):
        self.sets.release_lease(account["name"], set_name, request.headers.get(LEASE_HEADER, ""))
        return json_response({"released": True})

    def check_blobs(self, request, account, set_name):
        """Which of these blob ids the set does not hold in a sound pack."""
        ids = self.json_body(request).get("ids")
        if not isinstance(ids, list) or len(ids) > MAX_BLOB_QUERY:
            raise UsageError(f'The body must be {{"ids": [hex, ...]}} with at most {MAX_BLOB_QUERY} ids.')
        try:
            wanted = {bytes.fromhex(i) for i in ids}
        except (TypeError, ValueError):
            raise UsageError("Blob ids are hex strings.") from None
        present = self.sets.volume(account["name"], set_name).refresh().blob_locations(wanted)
        return json_response({"missing": sorted(b.hex() for b in wanted - present.keys())})

    def put_pack(self, request, account, set_name, name):
        length = declared_length(request)
        added = self.sets.receive_pack(account["name"], set_name, request.headers.get(LEASE_HEADER, ""),
                                       pack_name(name), request.environ["wsgi.input"], length, account["quota"])
        return json_response({"pack": name, "stored": added}, 201 if added else 200)

    def put_commit(self, request, account, set_name, seq):
        length = declared_length(request)
        self.sets.receive_commit(account["name"], set_name, request.headers.get(LEASE_HEADER, ""), seq,
                                 request.environ["wsgi.input"], length, account["quota"])
        self.metrics.count_commit()
        try:   # retention runs on the server after each backup; a failure there does not undo the backup
            retention.apply(self.sets, account["name"], set_name, after_commit=True)
        except IroncoreError as exc:
            logger.warning("event=retention-failed account=%s set=%s error=%r", account["name"], set_name, exc.message)
        return json_response({"seq": seq}, 201)

    # --- reading --------------------------------------------------------------------------
    def send_file(self, request, path: str, ranges: bool = False) -> Response:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise NotFound(f"{os.path.basename(path)} is not in this set.") from None
        size = os.fstat(f.fileno()).st_size
        response = Response(wrap_file(request.environ, f, SEND_CHUNK), mimetype="application/octet-stream",
                            direct_passthrough=True)
        response.content_length = size   # whole answers say their length too, so a cut one is noticed
        if ranges:
            response.make_conditional(request, accept_ranges=True, complete_length=size)
        return response

    def get_pack(self, request, account, set_name, name):
        vol = self.sets.volume(account["name"], set_name)
        return self.send_file(request, vol.pack_path(pack_name(name)), ranges=True)

    def get_pack_index(self, request, account, set_name, name):
        """The index trailer alone, so a client learns a pack's blobs without its data."""
        vol = self.sets.volume(account["name"], set_name)
        path = vol.pack_path(pack_name(name))
        if not os.path.exists(path):
            raise NotFound(f"Pack {name} is not in this set (gc may have dropped it).")
        entries = vol.pack_index(name)
        size = os.path.getsize(path)
        want = packfmt.FOOTER.size + len(entries) * packfmt.ENTRY.size
        with open(path, "rb") as f:
            f.seek(size - want)
            tail = f.read(want)
        return Response(tail, mimetype="application/octet-stream", headers={"Ironcore-Pack-Size": str(size)})

    def get_log(self, request, account, set_name):
        """Commit numbers after `after`; with `wait` seconds, a long poll for the next one."""
        try:
            after = int(request.args.get("after", 0))
            wait = float(request.args.get("wait", 0))
        except ValueError:
            wait = math.nan
        if not (math.isfinite(wait) and wait >= 0 and after >= 0):
            raise UsageError(f"after is a commit number and wait a number of seconds (0 to {LONG_POLL_MAX:.0f}).")
        wait = min(wait, LONG_POLL_MAX)
        head = self.sets.wait_for_commit(account["name"], set_name, after, 0)
        if head <= after and wait > 0:
            with self.long_polls.hold(account["name"]):   # only a poll that will wait holds a place
                head = self.sets.wait_for_commit(account["name"], set_name, after, wait)
        return json_response({"head": head, "seqs": list(range(after + 1, head + 1))})

    def get_commit(self, request, account, set_name, seq):
        vol = self.sets.volume(account["name"], set_name)
        if seq < 1:
            raise UsageError("Commits are numbered from 1.")
        return self.send_file(request, os.path.join(vol.root, "log", commitlog.commit_name(seq)))

    def list_snapshots(self, request, account, set_name):
        return json_response(self.sets.volume(account["name"], set_name).refresh().snapshots())
