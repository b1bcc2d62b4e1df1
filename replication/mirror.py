"""The disk side of a replica: one data root per source, kept a copy of it.

    <replica>/replica.db                         positions, errors, held packs (replication/state.py)
    <replica>/sources/<source>/                  a data root: `ironfs serve --read-only` serves it
    <replica>/sources/<source>/accounts/...      the source's accounts, sets and volumes, byte for byte
    <replica>/sources/<source>/incoming/         downloads in progress (packs, commits), never served
    <replica>/sources/<source>/held/<a>/<s>/     packs the source dropped, kept for --delete-delay days

Order is what makes it safe: a pack is renamed into the volume only after its
bytes hash to its name and its index reads; a commit is renamed into the log
only after its own hash checks and every pack it names is in place; so each
replica volume is at every instant a verify-clean prefix of its source, and
the log on disk is the position a restart resumes from."""
import json
import os
import time

from ironfs.errors import CorruptData, IroncoreError
from ironfs.format import log as commitlog, pack as packfmt
from ironfs.format.fsutil import publish, write_atomic
from ironfs.store.accounts import AccountStore, check_account_name
from ironfs.store.dataroot import FORMAT as DATA_ROOT_FORMAT, make_layout
from ironfs.store.sets import check_set_name

DAY_NS = 86400 * 10**9


class ReplicationError(IroncoreError):
    """Something the source sent cannot be applied yet; the follower retries."""


def sources_dir(replica_root: str) -> str:
    return os.path.join(replica_root, "sources")


class SourceMirror:
    def __init__(self, replica_root: str, source_name: str):
        self.name = source_name
        self.root = os.path.join(sources_dir(replica_root), source_name)
        self._accounts = None   # as last taken from the feed

    # --- the data root ---------------------------------------------------------------------
    def ensure(self, url: str) -> None:
        """Make the source's data root on first use: a TLS certificate of its own (for
        serving restores) and `replica_of`, which keeps `ironfs serve` read-only on it."""
        for sub in ("incoming", "held"):
            os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
        settings_path = os.path.join(self.root, "ironfs.json")
        if os.path.exists(settings_path):
            source = self.settings().get("replica_of") or self.settings().get("promoted_from") or {}
            if source.get("url") != url:
                raise IroncoreError(f"The replica's folder for source {self.name} holds {source.get('url')}, "
                                    f"not {url}.", "Give this source another name in the config file.")
            return
        make_layout(self.root)
        AccountStore(os.path.join(self.root, "accounts.db")).close()
        settings = {"format": DATA_ROOT_FORMAT, "created_ns": time.time_ns(), "admin_sees_all_accounts": False,
                    "replica_of": {"source": self.name, "url": url}}
        write_atomic(settings_path, json.dumps(settings, indent=1).encode())

    def settings(self) -> dict:
        with open(os.path.join(self.root, "ironfs.json")) as f:
            return json.load(f)

    def promoted(self) -> bool:
        try:
            return "replica_of" not in self.settings()
        except FileNotFoundError:
            return False

    def promote(self) -> None:
        settings = self.settings()
        source = settings.pop("replica_of", None)
        if source is None:
            raise IroncoreError(f"Source {self.name} was promoted already.",
                                f"Serve it with 'ironfs serve --data-root {self.root}'.")
        settings["promoted_from"] = dict(source, promoted_ns=time.time_ns())
        write_atomic(os.path.join(self.root, "ironfs.json"), json.dumps(settings, indent=1).encode())

    # --- places ------------------------------------------------------------------------------
    def volume_dir(self, account: str, set_name: str) -> str:
        return os.path.join(self.root, "accounts", check_account_name(account), check_set_name(set_name), "volume")

    def pack_path(self, account: str, set_name: str, pack: str) -> str:
        return os.path.join(self.volume_dir(account, set_name), packfmt.pack_relpath(pack))

    def incoming(self, account: str, set_name: str) -> str:
        path = os.path.join(self.root, "incoming", account, set_name)
        os.makedirs(path, exist_ok=True)
        return path

    def head(self, account: str, set_name: str) -> int:
        return (commitlog.list_seqs(os.path.join(self.volume_dir(account, set_name), "log")) or [0])[-1]

    def has_pack(self, account: str, set_name: str, pack: str) -> bool:
        return os.path.exists(self.pack_path(account, set_name, pack))

    # --- accounts and sets ---------------------------------------------------------------------
    def apply_state(self, state: dict) -> list[tuple[str, str, int]]:
        """Take the accounts and set settings of a feed answer; (account, set, source head) of every set."""
        accounts = [{k: a[k] for k in ("name", "password_hash", "quota", "admin", "created_ns")}
                    for a in state["accounts"]]
        if accounts != self._accounts:
            store = AccountStore(os.path.join(self.root, "accounts.db"))
            try:
                store.mirror(accounts)
            finally:
                store.close()
            self._accounts = accounts
        heads = []
        for account in state["accounts"]:
            for s in account["sets"]:
                vdir = self.volume_dir(account["name"], s["name"])
                for sub in ("log", "packs"):
                    os.makedirs(os.path.join(vdir, sub), exist_ok=True)
                self._write_if_changed(os.path.join(vdir, "volume.json"), s["volume"])
                self._write_if_changed(os.path.join(os.path.dirname(vdir), "set.json"), s["set"])
                heads.append((account["name"], s["name"], int(s["head"])))
        return heads

    @staticmethod
    def _write_if_changed(path: str, value: dict) -> None:
        data = json.dumps(value, indent=1).encode()
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return
        except FileNotFoundError:
            pass
        write_atomic(path, data)

    # --- packs -----------------------------------------------------------------------------------
    def publish_pack(self, account: str, set_name: str, pack: str, tmp: str, size: int, digest: str) -> None:
        """Rename a downloaded pack (whose bytes hash to `digest`) into the volume if it is
        whole; CorruptData (and the download removed) if not."""
        try:
            if digest != pack or os.path.getsize(tmp) != size:
                raise CorruptData(f"Pack {pack} arrived damaged (its bytes hash to {digest}); fetching it again.")
            packfmt.read_index(tmp)
        except BaseException:
            os.unlink(tmp)
            raise
        final = self.pack_path(account, set_name, pack)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        publish(tmp, final)

    # --- commits -----------------------------------------------------------------------------------
    @staticmethod
    def commit_packs(path: str, seq: int) -> tuple[dict[str, int], list[str]]:
        """The packs (name: size) a commit adds and the packs it drops, after its own
        hash check; CorruptData if it is damaged or is not commit `seq`."""
        packs, drops = {}, []
        try:
            for rec in commitlog.read_commit(path):
                if rec["t"] == "commit" and rec.get("seq") != seq:
                    raise CorruptData(f"it is commit {rec.get('seq')}")
                if rec["t"] == "pack":
                    packs[str(rec["name"])] = int(rec["size"])
                elif rec["t"] == "drop":
                    drops.append(str(rec["name"]))
        except (CorruptData, KeyError, TypeError, ValueError) as exc:
            raise CorruptData(f"Commit {seq} arrived damaged ({exc}); fetching it again.") from None
        return packs, drops

    def publish_commit(self, account: str, set_name: str, seq: int, staged: str) -> None:
        vdir = self.volume_dir(account, set_name)
        if self.head(account, set_name) != seq - 1:
            raise ReplicationError(f"Commit {seq} of {account}/{set_name} does not follow the replica's log.")
        publish(staged, os.path.join(vdir, "log", commitlog.commit_name(seq)))

    def hold_dropped(self, account: str, set_name: str, pack: str) -> int | None:
        """Move a pack the source dropped out of the volume into held/ (kept until
        released); its size, or None if it is not there (moved before a restart)."""
        src = self.pack_path(account, set_name, pack)
        try:
            size = os.path.getsize(src)
        except FileNotFoundError:
            return None
        dest_dir = os.path.join(self.root, "held", account, set_name)
        os.makedirs(dest_dir, exist_ok=True)
        os.replace(src, os.path.join(dest_dir, pack))
        return size

    def release_held(self, account: str, set_name: str, pack: str) -> None:
        try:
            os.unlink(os.path.join(self.root, "held", account, set_name, pack))
        except FileNotFoundError:
            pass
