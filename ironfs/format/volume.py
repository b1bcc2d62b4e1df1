"""A volume: the stored, versioned filesystem of one backup set (format 1).

    <volume>/volume.json       format, parameters, key slots
    <volume>/log/<seq>.commit  the commit log, the source of truth
    <volume>/packs/<ab>/<sha>  immutable packs
    <volume>/catalog.db        SQLite catalog derived from log + packs
    <volume>/lock              flock()ed by the one writer

Readers open a volume and read; one writer at a time appends packs and a
commit through `VolumeWriter`."""
import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ironfs.errors import (CorruptData, DamagedLog, DiskFull, IroncoreError, MissingData, VolumeBusy,
                           VolumeFormatError, WrongSecret)
from ironfs.format import crypto, directio, log as commitlog, pack as packfmt
from ironfs.format.blobfilter import BlobFilter
from ironfs.format.catalog import Catalog, remove_catalog_files
from ironfs.format.faults import armed, crashpoint
from ironfs.format.fsutil import TMP_PREFIX, fsync_dir, write_atomic

logger = logging.getLogger(__name__)

FORMAT = 1
MAX_BLOB = 128 * 1024           # the seed's transfer block (FAQ 2.13)
PACK_TARGET = 16 * 1024 * 1024  # big enough for few files, small enough to lose little on a crash
SPAN_GAP = 256 * 1024           # read_blobs reads across gaps this small rather than seek
SPAN_MAX = 4 * 1024 * 1024      # and at most this much at once
DIRECT_SPAN = 256 * 1024        # spans this long are read past the page cache,
SPAN_BUFFER = SPAN_MAX + 2 * 4096  # into aligned buffers of this size (a span and its alignment)
SPAN_BUFFERS = 4                # kept for reuse
PACK_FDS = 64                   # pack files kept open for reading
PUBLISH_AHEAD = 2               # full packs being published while the next fills


@dataclass(frozen=True)
class ReadShape:
    """How readers should batch their reads of a volume: small files per job
    (fewer hand-offs between workers), blobs of a large file per group, at
    least this many threads reading a large file's blobs, and whether the
    packs are files on this machine. Those are read past the page cache in
    large spans, and a restore writes files in one worker process per core
    (threads would share one GIL); otherwise it uses `small_workers` threads.
    A remote volume wants bigger, more concurrent reads, as each costs a
    round trip."""
    files: int = 64
    blobs: int = 16
    workers: int = 2
    small_workers: int = 1
    local: bool = True


def is_volume(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "volume.json"))


class Volume:
    """An opened volume folder. `unlock()` gives access to contents; names, sizes
    and the catalog are readable without a key (the server's view)."""

    read_shape = ReadShape()

    def __init__(self, root: str, catalog_path: str | None = None):
        """`catalog_path`: keep the catalog elsewhere (a volume on read-only media);
        it is built from the log on first use and caught up after."""
        self.root = os.path.abspath(root)
        self._catalog_path = catalog_path or os.path.join(self.root, "catalog.db")
        path = os.path.join(self.root, "volume.json")
        try:
            with open(path, "rb") as f:
                self.config = json.load(f)
        except FileNotFoundError:
            raise MissingData(f"{self.root} is not a volume (no volume.json).",
                              "Check the path, or create the set first.") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise VolumeFormatError(f"{path} is not valid JSON: {exc}") from None
        if self.config.get("format") != FORMAT:
            raise VolumeFormatError(f"{self.root} has volume format {self.config.get('format')!r}; "
                                    f"this program reads format {FORMAT}.", "Upgrade Ironcore.")
        self.id = bytes.fromhex(self.config["id"])
        self.max_blob = int(self.config.get("max_blob", MAX_BLOB))
        self.pack_target = int(self.config.get("pack_target", PACK_TARGET))
        self.key: crypto.MasterKey | None = None
        self.sealer: crypto.BlobSealer | None = None
        self._local = threading.local()
        self._fds: OrderedDict[tuple, int] = OrderedDict()  # (pack name, direct) -> fd, least recently used first
        self._fd_readers: dict[int, int] = {}                # fd -> reads in progress
        self._fds_retired: set[int] = set()                  # out of _fds, closed by their last reader
        self._fd_lock = threading.Lock()
        self._direct_ok = True
        self._span_buffers: list = []   # free aligned buffers for direct reads of spans
        self._blobs_checked = False     # see _mend_pack_blobs

    # --- creation and keys -------------------------------------------------------
    @classmethod
    def create(cls, root: str, slots: dict[str, bytes], kdf_params: dict | None = None,
               pack_target: int = PACK_TARGET) -> "Volume":
        """Make a new volume whose master key is wrapped once per (slot name -> secret)."""
        if not slots:
            raise ValueError("a volume needs at least one key slot")
        root = os.path.abspath(root)
        if os.path.exists(os.path.join(root, "volume.json")):
            raise VolumeFormatError(f"{root} already holds a volume.")
        os.makedirs(os.path.join(root, "log"), exist_ok=True)
        os.makedirs(os.path.join(root, "packs"), exist_ok=True)
        volume_id = uuid.uuid4().bytes
        master = crypto.MasterKey.generate()
        config = {
            "format": FORMAT,
            "id": volume_id.hex(),
            "created_ns": time.time_ns(),
            "cipher": "aes-256-gcm",
            "compression": "zstd",
            "blob_id": "blake3-128-keyed",
            "content_id": "blake3-256-keyed",
            "max_blob": MAX_BLOB,
            "pack_target": pack_target,
            "slots": [crypto.make_slot(name, secret, master.raw, volume_id, kdf_params)
                      for name, secret in slots.items()],
        }
        write_atomic(os.path.join(root, "volume.json"), json.dumps(config, indent=1).encode())
        fsync_dir(os.path.dirname(root))
        vol = cls(root)
        vol.use_key(master)
        return vol

    def use_key(self, master: crypto.MasterKey) -> None:
        """Read and write with a master key obtained elsewhere (kept on this machine)."""
        self.key = master
        self.sealer = crypto.BlobSealer(master)

    def unlock(self, secret: bytes) -> str:
        """Open the master key with a secret; returns the name of the slot it opened."""
        master, slot = crypto.open_slots(self.config["slots"], secret, self.id)
        self.use_key(crypto.MasterKey(master))
        return slot

    def require_key(self) -> crypto.MasterKey:
        if self.key is None:
            raise WrongSecret("This volume is locked.", "Give the set's password or key to read file contents.")
        return self.key

    # --- the catalog ------------------------------------------------------------
    @property
    def catalog_path(self) -> str:
        return self._catalog_path

    def catalog(self) -> Catalog:
        """This thread's catalog connection, brought up to date with the log."""
        cat = getattr(self._local, "catalog", None)
        if cat is None:
            cat = self._open_catalog()
            self._local.catalog = cat
            if not self._blobs_checked:
                self._blobs_checked = self._mend_pack_blobs(cat)
        return cat

    def _mend_pack_blobs(self, cat: Catalog) -> bool:
        """Check the catalog against the pack indexes at hand: a pack it lists with
        no blob row gets its blobs back from its index. (Client mirrors lost whole
        packs so when the catalog process met a pack before its upload had landed.)
        One indexed query when sound. False if the catalog was busy: try again later."""
        restored = 0
        busy_ms = cat.db.execute("PRAGMA busy_timeout").fetchone()[0]
        cat.db.execute("PRAGMA busy_timeout=2000")   # a backup's catalog process may hold the write lock
        try:
            for name in cat.packs_without_blobs():
                try:
                    restored += cat.restore_blobs(name, self.pack_index(name))
                except IroncoreError as exc:   # missing, damaged, or the server out of reach
                    logger.warning("pack %s is listed without its blobs and its index cannot be read: %s",
                                   name, exc.message)
        except sqlite3.OperationalError as exc:
            logger.warning("could not check the catalog of %s against its packs now: %s", self.root, exc)
            return False
        finally:
            cat.db.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        if restored:
            logger.warning("the catalog of %s lacked %d blobs of packs it lists; taken in from their indexes",
                           self.root, restored)
        return True

    def _open_catalog(self) -> Catalog:
        try:
            cat = Catalog(self.catalog_path)
            vid = cat.get_meta("volume")
            if vid is None:
                cat.db.execute("INSERT OR IGNORE INTO meta VALUES('volume', ?)", (self.id.hex(),))
            elif vid != self.id.hex():
                raise CorruptData("catalog belongs to another volume")
            self._catch_up(cat)
            return cat
        except (sqlite3.DatabaseError, CorruptData) as exc:
            if isinstance(exc, CorruptData) and not self._catalog_is_at_fault():
                raise
            logger.warning("catalog of %s is damaged (%s); rebuilding it from the log", self.root, exc)
            try:
                cat.close()
            except Exception:  # noqa: BLE001 - closing a broken handle may fail any way
                pass
            return self.rebuild_catalog()

    def _catalog_is_at_fault(self) -> bool:
        """True when the log itself reads clean, so a failure must come from the catalog."""
        try:
            for seq in self.seqs():
                for _ in commitlog.read_commit(self.commit_path(seq)):
                    pass
        except CorruptData:
            return False
        return True

    def rebuild_catalog(self) -> Catalog:
        """Replace the catalog with one rebuilt from the log and the pack indexes."""
        tmp = self.catalog_path + ".rebuild"
        remove_catalog_files(tmp)
        cat = Catalog(tmp)
        cat.db.execute("INSERT OR IGNORE INTO meta VALUES('volume', ?)", (self.id.hex(),))
        self._catch_up(cat)
        cat.close()
        remove_catalog_files(self.catalog_path)
        os.rename(tmp, self.catalog_path)
        remove_catalog_files(tmp)
        self._local.catalog = None
        return Catalog(self.catalog_path)

    def build_catalog_at(self, path: str) -> Catalog:
        """A fresh catalog replayed from the log into `path` (used by verify)."""
        remove_catalog_files(path)
        cat = Catalog(path)
        cat.db.execute("INSERT OR IGNORE INTO meta VALUES('volume', ?)", (self.id.hex(),))
        self._catch_up(cat)
        return cat

    def _catch_up(self, cat: Catalog) -> None:
        seqs = self.seqs()
        applied = cat.applied_seq
        if seqs and applied > seqs[-1]:
            raise CorruptData(f"catalog is at commit {applied} but the log ends at {seqs[-1]}")
        for seq in seqs:
            if seq > applied:
                cat.apply(seq, commitlog.read_commit(self.commit_path(seq)), self.pack_index)

    def refresh(self) -> Catalog:
        cat = self.catalog()
        self._catch_up(cat)
        return cat

    # --- log and packs -------------------------------------------------------------
    def seqs(self) -> list[int]:
        seqs = commitlog.list_seqs(os.path.join(self.root, "log"))
        for expect, seq in enumerate(seqs, start=1):
            if seq != expect:
                raise CorruptData(f"The commit log of {self.root} has a gap: commit {expect} is missing.")
        return seqs

    def check_log(self) -> None:
        """DamagedLog unless every commit is still as it was when first read whole: there,
        of the same size, with the same closing SHA-256. That costs a stat and a 32-byte
        read per commit; a commit not checked before is read whole once (and recorded in
        the catalog). Writers call this before adding a commit, so that none is ever added
        on top of a damaged log (a full read of every byte is `ironfs verify`'s work)."""
        try:
            seqs = self.seqs()
            cat = self.catalog()
        except CorruptData as exc:
            raise DamagedLog(exc.message) from None
        checked = {seq: (size, bytes(trailer)) for seq, size, trailer in
                   cat.db.execute("SELECT seq, size, trailer FROM checked_commits")}
        new = []
        for seq in seqs:
            path = self.commit_path(seq)
            name = commitlog.commit_name(seq)
            try:
                size, trailer = commitlog.read_trailer(path)
            except FileNotFoundError:
                raise DamagedLog(f"Commit {seq} ({name}) of {self.root} is missing.") from None
            if seq in checked:
                if size != checked[seq][0]:
                    raise DamagedLog(f"Commit {seq} ({name}) of {self.root} is damaged: it is {size} bytes long, "
                                     f"not the {checked[seq][0]} it had when it was checked.")
                if trailer != checked[seq][1]:
                    raise DamagedLog(f"Commit {seq} ({name}) of {self.root} is damaged: its closing SHA-256 "
                                     "changed since it was checked.")
                continue
            try:
                for _ in commitlog.read_commit(path):
                    pass
            except CorruptData as exc:
                raise DamagedLog(f"Commit {seq} of {self.root} is damaged: {exc.message}") from None
            new.append((seq, size, trailer))
        try:
            cat.db.executemany("INSERT OR REPLACE INTO checked_commits VALUES(?,?,?)", new)
            cat.db.execute("DELETE FROM checked_commits WHERE seq > ?", (len(seqs),))   # a log cut back by a repair
        except sqlite3.OperationalError as exc:   # a full disk: the record only saves the next check a read
            logger.warning("could not record the checked commits of %s: %s", self.root, exc)

    def commit_path(self, seq: int) -> str:
        return os.path.join(self.root, "log", commitlog.commit_name(seq))

    def pack_path(self, name: str) -> str:
        return os.path.join(self.root, packfmt.pack_relpath(name))

    def pack_index(self, name: str) -> list[packfmt.IndexEntry]:
        path = self.pack_path(name)
        if not os.path.exists(path):
            raise MissingData(f"Pack {name} named by the log is missing from {self.root}.")
        return packfmt.read_index(path)

    def all_pack_files(self) -> dict[str, str]:
        """name -> path of every published pack file on disk."""
        out = {}
        packs = os.path.join(self.root, "packs")
        for sub in os.listdir(packs):
            subdir = os.path.join(packs, sub)
            if len(sub) == 2 and os.path.isdir(subdir):
                for name in os.listdir(subdir):
                    if len(name) == 64 and not name.startswith(TMP_PREFIX):
                        out[name] = os.path.join(subdir, name)
        return out

    @contextlib.contextmanager
    def _pack_fd(self, name: str, direct: bool = False):
        """A pack's descriptor, held open while the caller reads: one that falls out
        of the PACK_FDS kept open is closed by its last reader, so a descriptor
        is never closed (and its number reused) under another thread's read."""
        key = (name, direct)
        with self._fd_lock:
            fd = self._fds.pop(key, None)
            if fd is None:
                try:
                    fd = os.open(self.pack_path(name), os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECT if direct else 0))
                except FileNotFoundError:
                    raise MissingData(f"Pack {name} is missing from {self.root}.") from None
                while len(self._fds) >= PACK_FDS:
                    old = self._fds.popitem(last=False)[1]
                    if self._fd_readers.get(old):
                        self._fds_retired.add(old)
                    else:
                        os.close(old)
            self._fds[key] = fd
            self._fd_readers[fd] = self._fd_readers.get(fd, 0) + 1
        try:
            yield fd
        finally:
            with self._fd_lock:
                left = self._fd_readers.pop(fd) - 1
                if left:
                    self._fd_readers[fd] = left
                elif fd in self._fds_retired:
                    self._fds_retired.discard(fd)
                    os.close(fd)

    def read_sealed(self, pack: str, offset: int, length: int) -> bytes:
        with self._pack_fd(pack) as fd:
            data = os.pread(fd, length, offset)
        if len(data) != length:
            raise CorruptData(f"Pack {pack} is shorter than its index says.")
        return data

    def read_blob(self, blob_id: bytes) -> bytes:
        """Plaintext of a blob; CorruptData/MissingData if it cannot be had whole."""
        self.require_key()
        loc = self.catalog().blob(blob_id)
        if loc is None:
            raise MissingData(f"Blob {blob_id.hex()} is not in any sound pack.")
        pack, offset, length, raw_length = loc
        try:
            return self.sealer.open(blob_id, self.read_sealed(pack, offset, length), raw_length)
        except CorruptData as exc:
            raise CorruptData(f"{exc.message} (pack {pack})") from None

    def read_blobs(self, blob_ids, sealer: crypto.BlobSealer | None = None) -> dict:
        """Plaintexts of several blobs: blob id -> bytes, or the IroncoreError that
        blob met (one bad blob fails only what uses it). Blobs that lie close
        together in a pack are read with one pread. `sealer`: another key's, for a
        keyless volume shared between sessions (WebDAV)."""
        if sealer is None:
            self.require_key()
            sealer = self.sealer
        wanted = set(blob_ids)
        locations = self.catalog().blob_locations(wanted)
        out = {b: MissingData(f"Blob {b.hex()} is not in any sound pack.") for b in wanted - locations.keys()}
        by_pack: dict[str, list] = {}
        for blob_id, (pack, offset, length, raw_length) in locations.items():
            by_pack.setdefault(pack, []).append((offset, length, raw_length, blob_id))
        for pack, items in by_pack.items():
            items.sort()
            span = []
            for item in items + [None]:
                if span and (item is None or item[0] - (span[-1][0] + span[-1][1]) > SPAN_GAP
                             or item[0] + item[1] - span[0][0] > SPAN_MAX):
                    self._open_span(pack, span, out, sealer)
                    span = []
                if item is not None:
                    span.append(item)
        return out

    def _read_span_direct(self, pack: str, start: int, length: int, buf) -> memoryview | None:
        """A span of a pack read past the page cache into `buf`, an aligned buffer of
        SPAN_BUFFER bytes; None if the file system refuses (plain reads from then on)."""
        first = start - start % directio.ALIGN
        want = directio.align_up(start + length) - first
        try:
            with self._pack_fd(pack, direct=True) as fd:
                got = directio.fill(fd, first, memoryview(buf)[:want], direct=True)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._direct_ok = False
            return None
        if got < start - first + length:
            raise CorruptData(f"Pack {pack} is shorter than its index says.")
        return memoryview(buf)[start - first:start - first + length]

    def _open_span(self, pack: str, span: list, out: dict, sealer: crypto.BlobSealer) -> None:
        start = span[0][0]
        length = span[-1][0] + span[-1][1] - start
        buf = None
        if (DIRECT_SPAN <= length <= SPAN_BUFFER - 2 * directio.ALIGN and self._direct_ok
                and self.read_shape.local):
            try:
                buf = self._span_buffers.pop()
            except IndexError:
                buf = directio.buffer(SPAN_BUFFER)
        try:
            try:
                data = self._read_span_direct(pack, start, length, buf) if buf is not None else None
                if data is None:
                    data = memoryview(self.read_sealed(pack, start, length))
            except IroncoreError as exc:
                for item in span:
                    out[item[3]] = exc
                return
            for offset, length, raw_length, blob_id in span:
                try:
                    out[blob_id] = sealer.open(blob_id, data[offset - start:offset - start + length], raw_length)
                except CorruptData as exc:
                    out[blob_id] = CorruptData(f"{exc.message} (pack {pack})")
        finally:
            if buf is not None and len(self._span_buffers) < SPAN_BUFFERS:   # a few are kept, however many threads read
                self._span_buffers.append(buf)

    def close(self) -> None:
        with self._fd_lock:
            for fd in self._fds.values():
                if self._fd_readers.get(fd):
                    self._fds_retired.add(fd)   # its last reader closes it
                else:
                    os.close(fd)
            self._fds.clear()
        cat = getattr(self._local, "catalog", None)
        if cat is not None:
            cat.close()
            self._local.catalog = None

    # --- writing -------------------------------------------------------------------
    def writer(self) -> "VolumeWriter":
        return VolumeWriter(self)


class VolumeWriter:
    """The one writer of a volume: holds the lock, appends blobs to packs and
    publishes a commit. Packs are published before the commit that names them, so
    a crash leaves only unreferenced packs, which the next writer adopts.

    Invariant: every blob this run may reuse without storing it is in the catalog,
    in `_run_blobs` (published or adopted packs of this run) or in `_pack_blobs`
    (the pack being written). `_run_blobs` is a private on-disk SQLite table, so
    a run over millions of new files keeps its memory bounded."""

    def __init__(self, volume: Volume):
        self.volume = volume
        self._lock_fd = os.open(os.path.join(volume.root, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(self._lock_fd)
            raise VolumeBusy(f"The volume is in use by {holder}.",
                             "Wait for that backup to finish; a crashed holder releases the lock at once.") from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        self.claim()
        self.packs: list[tuple[str, int]] = []
        self._pack_blobs: set[bytes] = set()
        self._run_blobs = sqlite3.connect("", isolation_level=None)   # "" = private temporary file
        self._run_blobs.execute("CREATE TABLE b(id BLOB PRIMARY KEY) WITHOUT ROWID")
        self._current: packfmt.PackWriter | None = None
        self._last_write = None   # the pack lane's latest write of blobs (see `written`)
        self._applier, self._applying = None, False   # see apply_live
        self._commit, self._named = None, 0   # the commit being written; how many of self.packs it names
        self._pack_lane = ThreadPoolExecutor(1, thread_name_prefix="pack-writer")
        # A full pack is finished (index, fsync, rename) on its own thread while the
        # next one fills; a subclass that needs each pack's name at once (uploads)
        # overrides flush_pack and gets it synchronously.
        self._publisher = (ThreadPoolExecutor(1, thread_name_prefix="pack-publisher")
                           if type(self).flush_pack is VolumeWriter.flush_pack else None)
        self._publishing: list = []
        self._packs_dir = os.path.join(volume.root, "packs")
        self._remove_tmp_files()
        self.catalog = volume.refresh()
        volume.check_log()
        self.seq = (volume.seqs() or [0])[-1] + 1
        known = self.catalog.db.execute("SELECT count(*) FROM blobs").fetchone()[0]
        self.filter = BlobFilter(known + (1 << 18))   # every blob known to the catalog or this run
        for (blob_id,) in self.catalog.db.execute("SELECT id FROM blobs WHERE damaged=0"):
            self.filter.add(blob_id)
        self.adopted: list[tuple[str, int]] = []
        self._adopt_orphans()

    def claim(self) -> None:
        """Claim the volume where it lives beyond this machine's lock (none for a local folder)."""

    def _remove_tmp_files(self) -> None:
        for folder in (os.path.join(self.volume.root, "log"), self._packs_dir):
            for name in os.listdir(folder):
                if name.startswith(TMP_PREFIX):
                    os.unlink(os.path.join(folder, name))

    def _adopt_orphans(self) -> None:
        """Packs published by a run that died before its commit: keep the sound ones."""
        live = {name for (name,) in self.catalog.db.execute("SELECT name FROM packs")}
        for name, path in sorted(self.volume.all_pack_files().items()):
            if name in live:
                continue
            try:
                if packfmt.file_sha256(path) != name:
                    raise CorruptData("hash mismatch")
                entries = packfmt.read_index(path)
            except CorruptData as exc:
                logger.warning("removing damaged unreferenced pack %s: %s", name, exc)
                os.unlink(path)
                continue
            self.adopted.append((name, os.path.getsize(path)))
            self._run_blobs.executemany("INSERT OR IGNORE INTO b VALUES(?)", ((e.blob_id,) for e in entries))
            for e in entries:
                self.filter.add(e.blob_id)
            logger.info("adopting pack %s (%d blobs) left by an interrupted run", name, len(entries))

    def in_run(self, blob_id: bytes) -> bool:
        """Stored by this run (or adopted) though not yet in the catalog. Main thread only."""
        if blob_id not in self.filter:
            return False
        return blob_id in self._pack_blobs or self._run_blobs.execute(
            "SELECT 1 FROM b WHERE id=?", (blob_id,)).fetchone() is not None

    def add_blob(self, blob_id: bytes, blob_type: int, sealed, raw_length: int) -> bool:
        """Add a sealed blob unless this run already stored it; True if added. The
        blob may be a view of a caller's buffer, written later: see `written`."""
        if self.in_run(blob_id):
            return False
        if self._current is None:
            self._current = packfmt.PackWriter(self._packs_dir, self._pack_lane)
        self._current.add(blob_id, blob_type, sealed, raw_length)
        if armed("mid-pack"):
            self.settle_packs()   # crash tests count the packs published before this point
        crashpoint("mid-pack")
        self._pack_blobs.add(blob_id)
        self.filter.add(blob_id)
        if self._current.size >= self.volume.pack_target:
            self.flush_pack()
        return True

    def written(self):
        """A future done once every blob added so far is written, so that buffers
        lent to add_blob may be reused; None when they are written already."""
        if self._current is not None:
            self._last_write = self._current.send() or self._last_write
        last = self._last_write
        return last if last is not None and not last.done() else None

    def flush_pack(self) -> None:
        if self._current is not None and self._current.entries:
            writer, self._current = self._current, None
            self._last_write = writer.send() or self._last_write   # its blobs leave from this thread
            self._run_blobs.executemany("INSERT OR IGNORE INTO b VALUES(?)", ((b,) for b in self._pack_blobs))
            self._pack_blobs = set()
            if self._publisher is None:
                self._publish_pack(writer)
                self._name_packs()
                return
            self._publishing.append((self._publisher.submit(self._publish_pack, writer), writer))
            while len(self._publishing) > PUBLISH_AHEAD:
                self._publishing.pop(0)[0].result()
            self._name_packs()

    def _name_packs(self) -> None:
        """Name the packs published since the last call in the commit being
        written: as it goes, so that a live applier (apply_live) takes their
        blobs in during the run instead of all at its end."""
        while self._commit is not None and self._named < len(self.packs):
            name, size = self.packs[self._named]
            self._commit.add({"t": "pack", "name": name, "size": size})
            self._named += 1

    def _publish_pack(self, writer: packfmt.PackWriter) -> None:
        """Index, fsync and rename a full pack (the publisher thread, in pack order)."""
        self.packs.append(writer.finish())
        crashpoint("pack-published")

    def settle_packs(self) -> None:
        """Wait until every full pack is published; raise the first error met."""
        while self._publishing:
            self._publishing.pop(0)[0].result()

    def apply_live(self, applier) -> None:
        """Have `applier` apply the commits to the catalog while they are written
        (client.catalog_process): `begin(seq)`, `feed(packed records)`, then
        `finish()` once the commit is published (False: it did not, and the
        commit is applied from its file as usual) or `abort()`."""
        self._applier = applier

    def start_commit(self, kind: str, **header) -> commitlog.CommitWriter:
        header.setdefault("time_ns", time.time_ns())
        header.setdefault("host", socket.gethostname())
        on_batch = None
        if self._applier is not None:
            self._applier.begin(self.seq)
            self._applying, on_batch = True, self._applier.feed
        commit = commitlog.CommitWriter(os.path.join(self.volume.root, "log"), self.seq, dict(header, kind=kind),
                                        on_batch=on_batch)
        for name, size in self.adopted:
            commit.add({"t": "pack", "name": name, "size": size})
        self._commit, self._named = commit, 0
        self._name_packs()
        return commit

    def finish_commit(self, commit: commitlog.CommitWriter) -> int:
        """Publish the packs, then the commit naming them (the last ones now),
        then apply it to the catalog."""
        self.flush_pack()
        self.settle_packs()
        self._name_packs()
        self._commit = None
        crashpoint("mid-commit")
        self.publish_commit(commit)
        crashpoint("commit-published")
        applied, self._applying = self._applying and self._applier.finish(), False
        if not applied:
            self.catalog.apply(self.seq, commitlog.read_commit(self.volume.commit_path(self.seq)),
                               self.volume.pack_index)
        seq = self.seq
        self.seq += 1
        self.packs, self.adopted = [], []
        self._run_blobs.execute("DELETE FROM b")
        return seq

    def publish_commit(self, commit: commitlog.CommitWriter) -> None:
        """Make the commit durable where the volume lives (here: log/<seq>.commit)."""
        commit.finish()

    def discard(self, remove_packs: bool) -> None:
        """After a failed run: drop the unfinished pack; with remove_packs (disk full)
        also the packs this run published, so the space comes back at once."""
        self._commit = None
        if self._applying:
            self._applying = False
            self._applier.abort()
        if self._current is not None:
            self._current.abort()
            self._current = None
        for fut, writer in self._publishing:   # a pack being published ends (a failed one removes its file)
            if fut.cancel():
                writer.abort()
            else:
                fut.exception()
        self._publishing = []
        if remove_packs:
            for name, _ in self.packs:
                try:
                    os.unlink(self.volume.pack_path(name))
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        logger.warning("could not remove pack %s: %s", name, exc)
            self.packs = []

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.shutdown(wait=True)
        self._pack_lane.shutdown(wait=True)
        self._run_blobs.close()
        if self._lock_fd is not None:
            try:
                os.ftruncate(self._lock_fd, 0)
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard(remove_packs=issubclass(exc_type, DiskFull))
        self.close()
