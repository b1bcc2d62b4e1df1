"""Backup sets on the server: their settings, their volumes, the writer lease,
and the only two ways data gets in (a pack upload and a snapshot commit).

    <root>/accounts/<account>/<set>/set.json    settings and per-machine switches
    <root>/accounts/<account>/<set>/lease.json  the writer lease, if any
    <root>/accounts/<account>/<set>/volume/     the set's volume (format 1)

What a client sends is checked before it becomes part of a volume: a pack must
hash to its name and carry a readable index; a commit must pass its own hash,
be the next in sequence, be a snapshot (never a forget or drop: history is
removed only by the server), and name only packs that are present. Anything
that fails is removed whole, and a refusal over quota or for a full disk also
removes what the refused run had uploaded and ends its lease, so nothing of it
is kept. No commit is added on top of a commit log that does not verify."""
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time

from ironfs.errors import (CorruptData, DamagedLog, DiskFull, IroncoreError, NotFound, UsageError, VolumeBusy,
                           VolumeFormatError)
from ironfs.format import log as commitlog, pack as packfmt
from ironfs.format.fsutil import TMP_PREFIX, discard, publish, raise_if_full, tmp_name, write_atomic
from ironfs.format.volume import FORMAT as VOLUME_FORMAT, Volume
from ironfs.store.retention import policy_of
from ironfs.store.setoptions import check_daemon_settings

logger = logging.getLogger(__name__)

SET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PACK_NAME_RE = re.compile(r"^[0-9a-f]{64}$")
LEASE_SECONDS = 120          # a holder renews well within this; a crashed one frees the set after it
LOCAL_MACHINE = "server"     # the machine of lease holders that run beside the server (gc, import-seed)
MACHINE_ID_RE = re.compile(r"^[0-9a-f]{32}$")   # a client installation's id (client.config.machine_id)
MAX_COMMIT = 1 << 30         # a commit of ten million files is far below this
CHUNK = 1 << 20
USAGE_STAMP = ".usage-changed"   # touched by gc so that a running server counts the account's usage again
SETTINGS_KEYS = {"sources", "excludes", "schedule", "retention", "block_size", "description",
                 "hooks", "local_copy", "bandwidth_limit", "allow_empty_source"}   # the daemon's: setoptions.py
# Records a client's commit may hold; "forget", "drop" and "damaged" belong to the server's own tools.
CLIENT_RECORDS = {"commit", "pack", "content", "ver", "del", "stats"}


class QuotaExceeded(IroncoreError):
    exit_code = 5


class LeaseLost(IroncoreError):
    """The caller's lease expired (it was not renewed in time)."""

    exit_code = 4


def check_set_name(name: str) -> str:
    if not SET_NAME_RE.fullmatch(name or ""):
        raise UsageError(f"{name!r} is not a valid set name.",
                         "Use letters, digits, '.', '_' and '-', starting with a letter or digit.")
    return name


def check_settings(settings) -> dict:
    if not isinstance(settings, dict) or not set(settings) <= SETTINGS_KEYS:
        raise UsageError("Set settings must be an object with the keys " + ", ".join(sorted(SETTINGS_KEYS)) + ".")
    for key in ("sources", "excludes"):
        value = settings.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and len(v) < 4096 for v in value):
            raise UsageError(f"Setting {key!r} must be a list of paths or patterns.")
    if not isinstance(settings.get("allow_empty_source", False), bool):
        raise UsageError("Setting 'allow_empty_source' must be true or false.")
    check_daemon_settings(settings)
    if len(json.dumps(settings)) > 65536:
        raise UsageError("Set settings are too large.")
    return settings


def check_volume_config(config) -> dict:
    """A volume.json as a client proposes it: format 1 with at least one well-formed key slot."""
    try:
        ok = (config["format"] == VOLUME_FORMAT and bytes.fromhex(config["id"]) and len(config["id"]) == 32
              and config["slots"] and all({"name", "kdf", "nonce", "wrapped"} <= set(s) for s in config["slots"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise UsageError("The volume description is not a valid format 1 volume.json.")
    return config


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def lease_holder(lease: dict) -> str:
    """Who holds a lease, for messages: host name, machine id and process."""
    machine, pid = lease.get("machine"), lease.get("pid")
    parts = ([f"machine {machine}"] if machine and machine != LOCAL_MACHINE else []) + \
        ([f"process {pid}"] if pid else [])
    return f"{lease['host']} ({', '.join(parts)})" if parts else lease["host"]


def read_exactly(stream, length: int, sink) -> None:
    """Copy `length` bytes from a request body to `sink`; UsageError if it ends early."""
    left = length
    while left:
        chunk = stream.read(min(CHUNK, left))
        if not chunk:
            raise UsageError(f"The upload ended after {length - left} of the {length} bytes it declared.",
                             "Send it again.")
        sink(chunk)
        left -= len(chunk)


class SetStore:
    """The sets of every account of a data root; shared by the server's threads."""

    def __init__(self, root, lease_seconds: float = LEASE_SECONDS):
        self.root = root
        self.lease_seconds = lease_seconds
        self._lock = threading.Lock()
        self._set_locks: dict[tuple, threading.Condition] = {}
        self._volumes: dict[tuple, Volume] = {}
        self._usage: dict[str, int] = {}
        self._usage_seen: dict[str, int | None] = {}
        self._closing = False
        self._changes = threading.Condition()   # notified on any commit or settings change (the replication feed)
        self.changes = 0
        self._changed_sets: set[tuple] = set()  # (account, set) changed since the feed last asked

    # --- places --------------------------------------------------------------------
    def set_dir(self, account: str, name: str) -> str:
        return os.path.join(self.root.account_dir(account), check_set_name(name))

    def volume_dir(self, account: str, name: str) -> str:
        return os.path.join(self.set_dir(account, name), "volume")

    def _cond(self, account: str, name: str) -> threading.Condition:
        """The set's lock; also notified when a commit lands (the log feed waits on it)."""
        with self._lock:
            return self._set_locks.setdefault((account, name), threading.Condition())

    def exists(self, account: str, name: str) -> bool:
        return os.path.isfile(os.path.join(self.set_dir(account, name), "set.json"))

    def require(self, account: str, name: str) -> str:
        path = self.set_dir(account, name)
        if not os.path.isfile(os.path.join(path, "set.json")):
            raise NotFound(f"Account {account} has no set named {name!r}.",
                           "List the sets with 'ironcore set list'.")
        return path

    def volume(self, account: str, name: str) -> Volume:
        self.require(account, name)
        with self._lock:
            vol = self._volumes.get((account, name))
            if vol is None:
                vol = self._volumes[(account, name)] = Volume(self.volume_dir(account, name))
            return vol

    def check_log(self, name: str, vol: Volume) -> None:
        """DamagedLog, for the client and the admin, unless the set's commit log verifies
        (Volume.check_log): no commit is ever added on top of a damaged one."""
        try:
            vol.check_log()
        except DamagedLog as exc:
            raise DamagedLog(f"The commit log of set {name} on the server is damaged, so nothing can be added to "
                             f"the set: {exc.message}",
                             "The server's administrator must repair the log first (docs/OPERATIONS.md, "
                             "'A damaged commit log'); 'ironfs verify' shows the damage.") from None

    # --- settings ------------------------------------------------------------------
    def _read_json(self, path: str) -> dict:
        with open(path) as f:
            return json.load(f)

    def info(self, account: str, name: str) -> dict:
        path = self.require(account, name)
        info = self._read_json(os.path.join(path, "set.json"))
        info["volume"] = self.volume(account, name).config
        return info

    def names(self, account: str) -> list[str]:
        folder = self.root.account_dir(account)
        if not os.path.isdir(folder):
            return []
        return sorted(n for n in os.listdir(folder) if SET_NAME_RE.fullmatch(n)
                      and os.path.isfile(os.path.join(folder, n, "set.json")))

    def create(self, account: str, name: str, settings: dict, volume_config: dict) -> dict:
        check_settings(settings)
        check_volume_config(volume_config)
        path = self.set_dir(account, name)
        with self._cond(account, name):
            if self.exists(account, name):
                raise VolumeBusy(f"Account {account} has a set named {name!r} already.",
                                 "Pick another name, or use that set.")
            vdir = os.path.join(path, "volume")
            for sub in ("log", "packs"):
                os.makedirs(os.path.join(vdir, sub), exist_ok=True)
            write_atomic(os.path.join(vdir, "volume.json"), json.dumps(volume_config, indent=1).encode())
            write_atomic(os.path.join(path, "set.json"), json.dumps(
                {"name": name, "created_ns": time.time_ns(), "settings": settings, "machines": {}}, indent=1).encode())
        logger.info("event=set-created account=%s set=%s", account, name)
        self.changed(account, name)
        return self.info(account, name)

    def _update(self, account: str, name: str, change) -> dict:
        path = os.path.join(self.require(account, name), "set.json")
        with self._cond(account, name):
            info = self._read_json(path)
            change(info)
            write_atomic(path, json.dumps(info, indent=1).encode())
        self.changed(account, name)
        return self.info(account, name)

    def update_settings(self, account: str, name: str, settings: dict) -> dict:
        check_settings(settings)
        if "retention" in settings:
            policy_of(settings["retention"])   # refuse a policy that does not parse

        def change(info):
            old = info["settings"].get("retention")
            if "retention" in settings and settings["retention"] != old:
                info["retention_before"], info["retention_changed_ns"] = old, time.time_ns()
            info["settings"].update(settings)
        return self._update(account, name, change)

    def forget(self, account: str, name: str, seqs: list[int], after_commit: bool = False) -> int:
        """The server's own commit that stops listing these snapshots (retention). Not while
        another backup holds the set, unless `after_commit`: its holder has just committed."""
        vol = self.volume(account, name)
        cond = self._cond(account, name)
        with cond:
            held = self._current_lease(account, name)
            if held is not None and not after_commit:
                raise VolumeBusy(f"Set {name} is being backed up by {lease_holder(held)}.",
                                 "Apply retention when that backup has finished (it also runs after each backup).")
            self.check_log(name, vol)
            seq = (vol.seqs() or [0])[-1] + 1
            commit = commitlog.CommitWriter(os.path.join(vol.root, "log"), seq,
                                            {"kind": "forget", "time_ns": time.time_ns(), "host": "server"})
            commit.add({"t": "forget", "snapshots": sorted(seqs)})
            commit.finish()
            vol.refresh()
            cond.notify_all()
        logger.info("event=forget account=%s set=%s seq=%d snapshots=%d", account, name, seq, len(seqs))
        self.changed(account, name)
        return seq

    def set_machine(self, account: str, name: str, host: str, scheduled: bool) -> dict:
        if not host or len(host) > 255:
            raise UsageError("A machine needs a host name of at most 255 characters.")
        return self._update(account, name, lambda info: info["machines"].setdefault(host, {}).update(
            scheduled=bool(scheduled)))

    def replace_slot(self, account: str, name: str, slot: dict) -> None:
        """Put a re-wrapped key slot in place of the slot of the same name (owner only:
        the caller checks). The master key is unchanged, so no data is touched."""
        vol = self.volume(account, name)
        with self._cond(account, name):
            config = dict(vol.config)
            if not {"name", "kdf", "nonce", "wrapped"} <= set(slot):
                raise UsageError("A key slot needs name, kdf, nonce and wrapped.")
            config["slots"] = [s for s in config["slots"] if s["name"] != slot["name"]] + [slot]
            write_atomic(os.path.join(vol.root, "volume.json"), json.dumps(config, indent=1).encode())
            vol.config = config
        self.changed(account, name)

    # --- the writer lease ------------------------------------------------------------
    def _lease_path(self, account: str, name: str) -> str:
        return os.path.join(self.set_dir(account, name), "lease.json")

    def _current_lease(self, account: str, name: str) -> dict | None:
        """The lease in force: not expired, and for a holder on this machine (gc) one whose process lives."""
        try:
            lease = self._read_json(self._lease_path(account, name))
        except (FileNotFoundError, ValueError):
            return None
        if lease.get("machine", LOCAL_MACHINE) == LOCAL_MACHINE and lease.get("pid") \
                and not process_alive(lease["pid"]):
            return None
        return lease if lease["expires"] > time.time() else None

    def _save_lease(self, account: str, name: str, lease: dict) -> None:
        write_atomic(self._lease_path(account, name), json.dumps(lease).encode())

    def acquire_lease(self, account: str, name: str, host: str, pid: int | None = None,
                      machine: str | None = LOCAL_MACHINE, replaces_own: bool = False) -> dict:
        """The set for one writer, named by its machine id and process: a live lease is never
        taken over (other machines, even of the same host name, get VolumeBusy naming the
        holder); only the very same process may take it again (a retry whose answer was lost),
        or, with `replaces_own`, another process of the same machine, which says so because
        it holds that machine's lock on the set (so the holder's run is dead).
        The answer lists orphan packs (uploaded by a run that never committed) to adopt."""
        self.require(account, name)
        with self._cond(account, name):
            held = self._current_lease(account, name)
            same_machine = machine is not None and held is not None and held.get("machine") == machine
            if held is not None and not (same_machine and (replaces_own or held.get("pid") == pid)):
                since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(held["acquired"]))
                raise VolumeBusy(f"Set {name} is being backed up by {lease_holder(held)} (since {since}).",
                                 f"Wait for that backup to finish; if {held['host']} crashed, the set is free "
                                 f"again {int(held['expires'] - time.time()) + 1} s from now.")
            vol = self.volume(account, name)
            self.check_log(name, vol)
            self._remove_partial_uploads(vol)
            lease = {"id": secrets.token_hex(16), "host": host, "machine": machine, "pid": pid,
                     "acquired": time.time(), "expires": time.time() + self.lease_seconds, "packs": []}
            self._save_lease(account, name, lease)
            orphans = self.orphan_packs(vol)
        logger.info("event=lease account=%s set=%s host=%r machine=%s pid=%s", account, name, host, machine, pid)
        return {"lease": lease["id"], "host": host, "seconds": self.lease_seconds, "acquired": lease["acquired"],
                "head": (vol.seqs() or [0])[-1], "orphans": [{"name": n, "size": s} for n, s in orphans]}

    def _remove_partial_uploads(self, vol: Volume) -> None:
        """Uploads cut off by a crash of either side; no upload runs without the lease."""
        folders = [os.path.join(vol.root, "log")] + [os.path.join(vol.root, "packs", d)
                                                     for d in os.listdir(os.path.join(vol.root, "packs"))]
        for folder in folders:
            for entry in os.listdir(folder):
                if entry.startswith(TMP_PREFIX):
                    os.unlink(os.path.join(folder, entry))

    def orphan_packs(self, vol: Volume) -> list[tuple[str, int]]:
        """(name, size) of pack files that no commit names (a run died or was refused)."""
        live = {n for (n,) in vol.refresh().db.execute("SELECT name FROM packs")}
        return [(n, os.path.getsize(p)) for n, p in sorted(vol.all_pack_files().items()) if n not in live]

    def _check_lease(self, account: str, name: str, lease_id: str) -> dict:
        lease = self._current_lease(account, name)
        if lease is None or not secrets.compare_digest(lease["id"], lease_id or ""):
            raise LeaseLost(f"This machine no longer holds set {name}: its lease expired before it was renewed.",
                            "Run the backup again (check the network if this repeats).")
        return lease

    def renew_lease(self, account: str, name: str, lease_id: str) -> None:
        self.require(account, name)
        with self._cond(account, name):
            lease = self._check_lease(account, name, lease_id)
            lease["expires"] = time.time() + self.lease_seconds
            self._save_lease(account, name, lease)

    def release_lease(self, account: str, name: str, lease_id: str) -> None:
        self.require(account, name)
        with self._cond(account, name):
            self._check_lease(account, name, lease_id)
            os.unlink(self._lease_path(account, name))

    # --- usage and quota ---------------------------------------------------------------
    def usage(self, account: str) -> int:
        """Bytes of packs and commits the account's volumes hold: counted once, then kept up
        to date, and counted again when another process (gc) has marked the account changed."""
        stamp = self._usage_stamp(account)
        with self._lock:
            if account not in self._usage or self._usage_seen.get(account) != stamp:
                total = 0
                for dirpath, _, files in os.walk(self.root.account_dir(account)):
                    if os.path.basename(dirpath) == "log" or os.path.basename(os.path.dirname(dirpath)) == "packs":
                        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files
                                     if not f.startswith(TMP_PREFIX))
                self._usage[account] = total
                self._usage_seen[account] = stamp
            return self._usage[account]

    def _usage_stamp(self, account: str) -> int | None:
        try:
            return os.stat(os.path.join(self.root.account_dir(account), USAGE_STAMP)).st_mtime_ns
        except FileNotFoundError:
            return None

    def _reserve(self, account: str, nbytes: int, quota: int | None) -> None:
        used = self.usage(account)
        with self._lock:
            if quota is not None and self._usage[account] + nbytes > quota:
                raise QuotaExceeded(
                    f"Quota Exceeded: account {account} uses {used} of its {quota} bytes and this upload "
                    f"needs {nbytes} more.",
                    "Ask the administrator for a larger quota, or remove old snapshots through the set's "
                    "retention policy; nothing of this backup was kept.")
            self._usage[account] += nbytes

    def _release(self, account: str, nbytes: int) -> None:
        with self._lock:
            self._usage[account] = self._usage.get(account, nbytes) - nbytes

    def count_stored(self, account: str, nbytes: int) -> None:
        """Bytes gc added (positive) or removed (negative); a running server, another
        process, notices the account's usage stamp and counts again."""
        self.usage(account)
        with self._lock:
            self._usage[account] += nbytes
            stamp = os.path.join(self.root.account_dir(account), USAGE_STAMP)
            with open(stamp, "a"):
                os.utime(stamp)
            self._usage_seen[account] = self._usage_stamp(account)

    def _drop_run(self, account: str, name: str, lease: dict) -> None:
        """Remove the packs the lease holder uploaded and no commit names (a refusal over
        quota or for a full disk), and end its lease: the run is over, nothing more of it
        gets in (an upload still on its way is refused before it is published)."""
        vol = self.volume(account, name)
        live = {n for (n,) in vol.refresh().db.execute("SELECT name FROM packs")}
        for pack_name in lease["packs"]:
            if pack_name in live:
                continue
            path = vol.pack_path(pack_name)
            try:
                size = os.path.getsize(path)
                os.unlink(path)
                self._release(account, size)
            except FileNotFoundError:
                pass
        os.unlink(self._lease_path(account, name))

    def _note_run_pack(self, account: str, name: str, lease_id: str, pack_name: str) -> None:
        """Add a pack to those the lease's run uploaded (removed if the run is refused);
        LeaseLost if the run has ended meanwhile (refused, or its lease expired)."""
        with self._cond(account, name):
            lease = self._check_lease(account, name, lease_id)
            lease["packs"].append(pack_name)
            self._save_lease(account, name, lease)

    def _refuse_run(self, account: str, name: str, lease_id: str) -> None:
        """The disk filled during the lease's run: remove what it uploaded."""
        with self._cond(account, name):
            lease = self._current_lease(account, name)
            if lease is not None and lease["id"] == lease_id:
                self._drop_run(account, name, lease)

    # --- data in ---------------------------------------------------------------------
    def receive_pack(self, account: str, name: str, lease_id: str, pack_name: str, stream, length: int,
                     quota: int | None) -> bool:
        """Store an uploaded pack if it hashes to its name and its index reads; False if
        it was there already."""
        if not PACK_NAME_RE.fullmatch(pack_name):
            raise UsageError(f"{pack_name!r} is not a pack name (64 hex digits).")
        vol = self.volume(account, name)
        final = vol.pack_path(pack_name)
        with self._cond(account, name):
            lease = self._check_lease(account, name, lease_id)
            if os.path.exists(final):
                read_exactly(stream, length, lambda chunk: None)
                return False
            try:
                self._reserve(account, length, quota)
            except QuotaExceeded:
                self._drop_run(account, name, lease)
                raise
        folder = os.path.dirname(final)
        tmp = tmp_name(folder, "upload-")
        f = None
        try:
            try:
                os.makedirs(folder, exist_ok=True)
                f = open(tmp, "wb")
                h = hashlib.sha256()
                read_exactly(stream, length, lambda chunk: (h.update(chunk), f.write(chunk)))
                if h.hexdigest() != pack_name:
                    raise CorruptData(f"Pack {pack_name} was rejected whole: its bytes hash to {h.hexdigest()}.",
                                      "Send it again; it was damaged on the way.")
                f.close()
                packfmt.read_index(tmp)
                self._note_run_pack(account, name, lease_id, pack_name)   # first, so a refused run removes it
                publish(tmp, final)
            except OSError as exc:
                raise_if_full(exc, f"pack {pack_name}")
        except BaseException as exc:
            if f is not None:
                discard(f, tmp)
            self._release(account, length)
            if isinstance(exc, DiskFull):   # as over quota: keep nothing of the run, or every retry fails the same
                self._refuse_run(account, name, lease_id)
            raise
        logger.info("event=pack account=%s set=%s pack=%s bytes=%d", account, name, pack_name, length)
        return True

    def receive_commit(self, account: str, name: str, lease_id: str, seq: int, stream, length: int,
                       quota: int | None) -> int:
        """Add a snapshot commit: checked whole, then published and applied; a refusal keeps nothing."""
        if not 0 < length <= MAX_COMMIT:
            raise UsageError(f"A commit must be between 1 byte and {MAX_COMMIT} bytes long.")
        vol = self.volume(account, name)
        log_dir = os.path.join(vol.root, "log")
        cond = self._cond(account, name)
        with cond:
            lease = self._check_lease(account, name, lease_id)
            tmp = tmp_name(log_dir, f"upload-{seq}-")
            f = open(tmp, "wb")
            h = hashlib.sha256()
            try:
                read_exactly(stream, length, lambda chunk: (h.update(chunk), f.write(chunk)))
                f.close()
                self.check_log(name, vol)
                final = vol.commit_path(seq)
                head = (vol.seqs() or [0])[-1]
                if seq <= head:
                    with open(final, "rb") as old:
                        if hashlib.file_digest(old, "sha256").digest() == h.digest():
                            return seq   # a retry of a commit that landed: the answer was lost
                    raise VolumeBusy(f"Commit {seq} of set {name} exists already.",
                                     "Another run committed first; run the backup again.")
                if seq != head + 1:
                    raise UsageError(f"Commit {seq} does not follow the set's last commit {head}.")
                self._check_commit(vol, tmp, seq)
                try:
                    self._reserve(account, length, quota)
                except QuotaExceeded:
                    self._drop_run(account, name, lease)
                    raise
                try:
                    publish(tmp, final)
                    vol.refresh()
                except BaseException:
                    self._release(account, length)
                    if os.path.exists(final):
                        os.unlink(final)
                        vol.rebuild_catalog()
                    raise
            except OSError as exc:
                discard(f, tmp)
                try:
                    raise_if_full(exc, f"commit {seq}")
                except DiskFull:
                    self._drop_run(account, name, lease)
                    raise
            finally:
                discard(f, tmp)
            lease["packs"] = []
            lease["expires"] = time.time() + self.lease_seconds
            self._save_lease(account, name, lease)
            cond.notify_all()
        logger.info("event=commit account=%s set=%s seq=%d bytes=%d", account, name, seq, length)
        self.changed(account, name)
        return seq

    def _check_commit(self, vol: Volume, path: str, seq: int) -> None:
        try:
            for i, rec in enumerate(commitlog.read_commit(path)):
                if i == 0 and (rec.get("seq") != seq or rec.get("kind") != "snapshot"):
                    raise UsageError("A client may only add snapshot commits, numbered in sequence.")
                if rec["t"] not in CLIENT_RECORDS:
                    raise UsageError(f"A client commit may not hold {rec['t']!r} records: history is removed "
                                     "only by the server's retention and gc.")
                if rec["t"] == "pack":
                    try:
                        size = os.path.getsize(vol.pack_path(str(rec["name"])))
                    except (FileNotFoundError, KeyError):
                        raise UsageError(f"The commit names pack {rec.get('name')}, which was not uploaded.",
                                         "Upload the pack, then the commit.") from None
                    if size != rec.get("size"):
                        raise UsageError(f"The commit gives pack {rec['name']} a wrong size.")
        except (CorruptData, VolumeFormatError) as exc:
            raise UsageError(f"The commit was rejected whole: {exc.message}", "Send it again.") from None

    def wait_for_commit(self, account: str, name: str, after: int, timeout: float) -> int:
        """The set's last commit, waiting up to `timeout` s for one past `after` (the log feed)."""
        vol = self.volume(account, name)
        cond = self._cond(account, name)
        deadline = time.monotonic() + timeout
        with cond:
            while True:
                head = (vol.seqs() or [0])[-1]
                left = deadline - time.monotonic()
                if head > after or left <= 0 or self._closing:
                    return head
                cond.wait(min(left, 5.0))   # also notices commits made by another process

    @property
    def closing(self) -> bool:
        return self._closing

    def changed(self, account: str | None = None, name: str | None = None) -> None:
        """Wake the replication feed's long polls: something in a set changed."""
        with self._changes:
            if account is not None:
                self._changed_sets.add((account, name))
            self.changes += 1
            self._changes.notify_all()

    def take_changed_sets(self) -> set[tuple]:
        """The (account, set) pairs this process changed since the last call."""
        with self._changes:
            changed, self._changed_sets = self._changed_sets, set()
            return changed

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """The change counter, waiting up to `timeout` s for it to pass `seen`."""
        with self._changes:
            if self.changes == seen and not self._closing:
                self._changes.wait(timeout)
            return self.changes

    def shutdown(self) -> None:
        """Answer every waiting long poll now, so the server can stop without waiting them out."""
        self._closing = True
        self.changed()
        with self._lock:
            conds = list(self._set_locks.values())
        for cond in conds:
            with cond:
                cond.notify_all()
