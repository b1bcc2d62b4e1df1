"""One backup run: walk the sources, store what changed, publish one snapshot commit.

The main thread walks the tree and runs the delta search; workers
(client.sealers: processes, or threads) read files and name, sign, compress and
encrypt their blobs; a hash lane keeps a delta-encoded file's content id and
next signature in file order; the volume writer's own thread writes packs.
Results come back in submission order (`_pending`), so the commit's records
follow the walk and memory stays bounded by the pipeline depth, not by the
tree."""
import bisect
import errno
import fnmatch
import functools
import logging
import os
import secrets
import stat
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from client import sealers
from client.cache import FileCache, entry_digest, version_digest
from client.catalog_process import CatalogProcess
from client.fsmeta import kind_of, version_record
from client.sealers import SealWorkers, open_for_reading
from client.worker_process import safe_to_fork
from ironfs.errors import IroncoreError
from ironfs.format import delta, directio
from ironfs.format.blobfilter import BlobFilter
from ironfs.format.content import ContentHasher
from ironfs.format.pack import BLOB_DATA, BLOB_SIGNATURE, PackWriter

logger = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
DELTA_MIN_SIZE = 256 * 1024      # below this a changed file is simply stored again
MAX_INFLIGHT = 16                # jobs queued at once (each up to READ_CHUNK: 8 blobs or 16 small files)
SMALL_BATCH = 16                 # small files per worker job: fewer messages to the workers
SPOOL_IN_MEMORY = 32 << 20       # literal data of a delta kept in memory before spilling to a temp file
LANE_DEPTH = 8                   # file chunks queued for the hash lane (x 1 MiB of memory)
LARGE_WAITING = 2                # large files whose runs wait to be interleaved with small files
SWITCH_INTERVAL = 0.0005         # seconds a thread waits for the GIL before asking for it (default 0.005)


class SourceGone(IroncoreError):
    """A source root is missing, or empty where the last snapshot had files: an
    unmounted disk or a renamed share, not files the user removed."""


class Fallback(Exception):
    """The delta is not worth it (too much new data or too fragmented)."""


def merge_extent(extents: list, blob, offset: int, length: int) -> None:
    if extents:
        last = extents[-1]
        if last[0] == blob and (blob is None or last[1] + last[2] == offset):
            last[2] += length
            return
    extents.append([blob, offset, length])


class ExtentSlicer:
    """Maps byte ranges of an old content onto its extents."""

    def __init__(self, extents: list):
        self.extents = extents
        self.starts = []
        pos = 0
        for e in extents:
            self.starts.append(pos)
            pos += e[2]
        self.size = pos

    def copy(self, out: list, offset: int, length: int) -> None:
        i = bisect.bisect_right(self.starts, offset) - 1
        while length > 0:
            blob, boff, blen = self.extents[i]
            skip = offset - self.starts[i]
            take = min(blen - skip, length)
            merge_extent(out, blob, boff + skip if blob is not None else 0, take)
            offset += take
            length -= take
            i += 1


def data_regions(fd: int, st: os.stat_result):
    """(start, end) of the data regions of a file; holes in between (sparse files)."""
    size = st.st_size
    if st.st_blocks * 512 >= size:
        yield 0, size
        return
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


class Backup:
    """A backup of one set into an open, unlocked volume."""

    def __init__(self, volume, bset, cache_dir: str, progress=None, threads: int | None = None):
        self.volume = volume
        self.key = volume.require_key()
        self.bset = bset
        self.cache = FileCache(cache_dir, volume.id)
        self.progress = progress
        self.max_blob = volume.max_blob
        # both fork now, before the caller starts a thread (client.worker_process)
        self.catalog_process = CatalogProcess(volume) if safe_to_fork() else None
        self.sealers = SealWorkers(volume.sealer, self.max_blob, max(READ_CHUNK, SMALL_BATCH * self.max_blob),
                                   MAX_INFLIGHT + PackWriter.LANE_DEPTH + 2, threads)
        self.report = {"files_new": 0, "files_changed": 0, "files_unchanged": 0, "dirs": 0, "other": 0,
                       "deleted": 0, "bytes_read": 0, "bytes_stored": 0, "blobs_stored": 0, "signature_bytes_stored": 0,
                       "errors": []}
        self._pending: deque = deque()
        self._small: list = []
        self._large: deque = deque()   # (runs to submit, what to do after them) per large file: _store_whole
        self._buffers: list = []   # read buffers of a delta-encoded file, free for reuse
        self._link_groups: dict[tuple, int] = {}   # (st_dev, st_ino) -> hard-link group, files with links only
        self._groups_taken: set[int] = set()       # the values of _link_groups
        self._link_content: dict[int, tuple] = {}  # group -> (content id, size, mtime_ns) once recorded
        self.volume_root = os.fsencode(volume.root)

    # --- pipeline ------------------------------------------------------------------
    def _submit(self, job, args: tuple, done):
        """Start a worker's job, first waiting for a free slot. `done(slot, result)`
        runs in submission order (the queue); the slot is free again once the
        pack writer has taken the blobs done added. Returns the job's future."""
        while not self.sealers.has_free(wait_for_one=not self._pending):
            self._pop()
        fut, slot = self.sealers.submit(job, *args)

        def finish(result):
            try:
                done(slot, result)
            finally:   # the pack writer writes from the slot: reused once that is done
                self.sealers.release(slot, self.writer.written())
        self._push(fut, finish)
        return fut

    def _from_slot(self, slot: int, sealed: tuple) -> list:
        """A worker's sealed data blob, a view of its slot, as _blob_done takes it."""
        blob_id, at, n, raw_len, records = sealed
        return [blob_id, self.sealers.sealed(slot, at, n), raw_len, BLOB_DATA, records]

    def _store_blob(self, data):
        """Queue a data blob; returns its future (resolved, in order, by the queue)."""
        return self._submit(sealers.seal_data, (bytes(data),),
                            lambda slot, result: self._blob_done(self._from_slot(slot, result)))

    def _store_now(self, data, blob_type) -> bytes:
        """Seal and add a blob on this thread; returns its id."""
        blob_id = self.key.blob_id(data)
        self._blob_done([blob_id, self.volume.sealer.seal(blob_id, data), len(data), blob_type, None])
        return blob_id

    def _blob_done(self, result):
        """Main thread, in submission order: add the sealed blob to the pack unless
        the volume has it (the workers seal without asking), then drop it from the
        result, which the file's extent list still holds."""
        blob_id, sealed, raw_len, blob_type, _ = result
        result[1] = None
        if blob_id in self.writer.filter and self.volume.catalog().has_blob(blob_id):
            return
        if self.writer.add_blob(blob_id, blob_type, sealed, raw_len):
            self.report["bytes_stored"] += len(sealed)
            self.report["blobs_stored"] += 1
            if blob_type == BLOB_SIGNATURE:
                self.report["signature_bytes_stored"] += len(sealed)

    def _push(self, fut, fn):
        self._pending.append((fut, fn))
        while self._pending and (self._pending[0][0] is None or self._pending[0][0].done()
                                 or len(self._pending) > MAX_INFLIGHT):
            self._pop()

    def _pop(self):
        fut, fn = self._pending.popleft()
        fn(fut.result() if fut is not None else None)

    def _drain(self):
        while self._pending:
            self._pop()

    def _emit(self, fn):
        """Run fn (which writes records) after every blob queued before it."""
        self._push(None, lambda _: fn())

    # --- run -------------------------------------------------------------------------
    def run(self) -> dict:
        # The walk gives the GIL up for every stat and xattr call, and waited up to
        # the default 5 ms for it each time while the pack writer's and the worker
        # pool's threads ran Python: a shorter switch interval bounds that wait.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            with self.sealers:
                return self._run()
        finally:
            sys.setswitchinterval(interval)
            if self.catalog_process is not None:
                self.catalog_process.close()

    def _run(self) -> dict:
        started = time.time()
        catalog = self.volume.refresh()
        snaps = catalog.snapshots(include_forgotten=True)
        latest = snaps[-1]["seq"] if snaps else 0
        if self.cache.seq != latest:
            logger.info("file cache is at snapshot %s, volume at %s: rebuilding the cache", self.cache.seq, latest)
            self.cache.reset_from_catalog(catalog, latest, entry_digest)
        self.unsound = catalog.contents_using(catalog.damaged_blobs())
        self.cache_had_entries = self.cache.db.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is not None
        if not self.bset.allow_empty_source:
            self._check_roots()
        count = catalog.db.execute("SELECT count(*) FROM contents").fetchone()[0]
        self.contents = BlobFilter(count + (1 << 18))   # "not in the catalog" without a query
        for (cid,) in catalog.db.execute("SELECT id FROM contents"):
            self.contents.add(cid)
        with self.volume.writer() as self.writer, ThreadPoolExecutor(1) as self.hash_lane:
            if self.catalog_process is not None:
                self.writer.apply_live(self.catalog_process)
            self.run_id = self.cache.begin()
            self.commit = self.writer.start_commit("snapshot", sources=list(self.bset.sources), set=self.bset.name)
            try:
                for source in self._roots():
                    self._walk_root(source)
                self._flush_small()
                while self._large:
                    self._advance_large()
                self._drain()
                for path in self.cache.unseen(self.run_id):
                    self.commit.add({"t": "del", "p": path})
                    self.report["deleted"] += 1
                self.cache.drop_unseen(self.run_id)
                self.report["duration_s"] = round(time.time() - started, 3)
                self.commit.add({"t": "stats", **{k: v for k, v in self.report.items() if k != "errors"},
                                 "errors": len(self.report["errors"])})
                seq = self.writer.finish_commit(self.commit)
            except BaseException:
                self.commit.abort()
                self.cache.rollback()
                for fut, _ in self._pending:
                    if fut is not None:
                        fut.cancel()
                raise
            self.cache.commit(seq)
        self.cache.close()
        self.report["snapshot"] = seq
        return self.report

    def _roots(self) -> list[bytes]:
        roots = sorted({os.fsencode(os.path.abspath(s)).rstrip(b"/") or b"/" for s in self.bset.sources})
        kept = []
        for r in roots:
            if not any(r == k or r.startswith(k.rstrip(b"/") + b"/") for k in kept):
                kept.append(r)
        return kept

    def _check_roots(self) -> None:
        """Refuse the run, before anything is written, if a source root is gone or
        empty while the last snapshot held files below it: committing that would
        record everything as removed."""
        for root in self._roots():
            shown = os.fsdecode(root)
            try:
                if stat.S_ISDIR(os.lstat(root).st_mode):
                    with os.scandir(root) as it:
                        empty = next(it, None) is None
                else:
                    empty = False
            except FileNotFoundError:
                raise SourceGone(f"The source {shown} does not exist (an unmounted disk, a renamed or "
                                 "disconnected share?); nothing was backed up, the last snapshot stays the latest.",
                                 self._source_hint()) from None
            except OSError:
                continue   # unreadable: reported by the walk, its last version kept
            if empty and self.cache.has_below(root.lstrip(b"/")):
                raise SourceGone(f"The source {shown} is empty, but the last snapshot has files in it (an unmounted "
                                 "disk?); nothing was backed up, the last snapshot stays the latest.",
                                 self._source_hint())

    def _source_hint(self) -> str:
        name = self.bset.name
        return (f"Mount or reconnect it, or change the sources with 'ironcore set edit {name} --source ...'. "
                f"If it is meant to be empty or gone, allow that with 'ironcore set edit {name} --allow-empty-source'.")

    def _excluded(self, path: bytes, name: bytes) -> bool:
        if path == self.volume_root:
            return True   # never back a volume up into itself
        for pattern in self.bset.excludes:
            p = os.fsencode(pattern)
            if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(path, p):
                return True
        return False

    def _error(self, path: bytes, message: str) -> None:
        shown = os.fsdecode(path)
        logger.warning("%s: %s", shown, message)
        self.report["errors"].append({"path": shown, "error": message})

    # --- walking ----------------------------------------------------------------
    def _walk_root(self, root: bytes) -> None:
        parts = [p for p in root.split(b"/") if p]
        for i in range(1, len(parts)):   # the folders above the source, with their own metadata
            self._entry(b"/" + b"/".join(parts[:i]), recurse=False)
        if not parts:
            self._walk_dir(b"/")
        else:
            self._entry(root, recurse=True)

    def _entry(self, abspath: bytes, recurse: bool, st: os.stat_result | None = None) -> None:
        rel = abspath.lstrip(b"/")
        try:
            st = st or os.lstat(abspath)
            kind = kind_of(st)
            if kind is None:
                return  # sockets and the like are not backed up
            rec = version_record(abspath, rel, st, kind)
        except OSError as exc:
            self._unreadable(abspath, exc)
            return
        if kind == "f":
            self._file(abspath, rel, st, rec)
        else:
            self._record(rel, st, rec, None)
            if kind == "d":
                self.report["dirs"] += 1
                if recurse:
                    self._walk_dir(abspath)
            else:
                self.report["other"] += 1
        if self.progress:
            self.progress.entry()

    def _unreadable(self, abspath: bytes, exc: OSError) -> None:
        """A path that vanished is reported and left out; one that cannot be read is
        reported and keeps its previous version (and subtree) in the snapshot."""
        if isinstance(exc, FileNotFoundError):
            self._error(abspath, "has been removed already")
            return
        self._error(abspath, f"cannot be read: {exc.strerror or exc}")
        self.cache.keep(abspath.lstrip(b"/"), self.run_id)

    def _walk_dir(self, abspath: bytes) -> None:
        try:
            with os.scandir(abspath) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self._unreadable(abspath, exc)
            return
        for e in entries:
            path = e.path
            if self._excluded(path, e.name):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                self._error(path, "has been removed already")
                continue
            except OSError:
                st = None
            self._entry(path, recurse=True, st=st)

    def _record(self, rel: bytes, st, rec: dict, content, old=False) -> None:
        """Write the version record if it differs from the cached one (`old`: the
        cache row when the caller has it, None when there is none)."""
        if content is not None:
            rec["c"] = content
        digest = version_digest(rec)
        if old is False:
            old = self.cache.get(rel)
        if old is None or old[6] != digest:
            self.commit.add(rec)
        self.cache.put(rel, self.run_id, rec["k"], st, digest, content, rec.get("h"))
        if "h" in rec:
            self._link_content[rec["h"]] = (content, st.st_size, st.st_mtime_ns)

    # --- files ------------------------------------------------------------------------
    def _link_group(self, st, old) -> int:
        """The hard-link group of a file with other links (`old`: its cache row). The
        group its inode had in the last snapshot (through this path, else another)
        is kept unless a group of this run took it first, so that an unchanged
        file's version stays as it was; else a new random number. Only the same
        inode keeps a group: a path kept from before (unreadable) may still hold it."""
        key = (st.st_dev, st.st_ino)
        group = self._link_groups.get(key)
        if group is not None:
            return group
        group = old[8] if old is not None and (old[4], old[5]) == (st.st_ino, st.st_dev) else None
        if (group is None or group in self._groups_taken) and self.cache_had_entries:
            row = self.cache.by_inode(st.st_dev, st.st_ino)
            group = row[4] if row is not None else None
        while group is None or group in self._groups_taken:
            group = secrets.randbits(63) or None
        self._link_groups[key] = group
        self._groups_taken.add(group)
        return group

    def _file(self, abspath: bytes, rel: bytes, st, rec: dict) -> None:
        old = self.cache.get(rel)
        if st.st_nlink > 1:
            rec["h"] = self._link_group(st, old)
            known = self._link_content.get(rec["h"])
            if known is not None and known[0] is not None and known[1:] == (st.st_size, st.st_mtime_ns):
                self.report["files_new" if old is None else "files_unchanged" if old[7] == known[0]
                            else "files_changed"] += 1
                self._record(rel, st, rec, known[0], old)   # another link of a file read in this run
                return
        if old is not None and old[0] == "f" and old[7] is not None and old[7] not in self.unsound \
                and (old[1], old[2], old[3], old[4], old[5]) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                                                 st.st_ino, st.st_dev):
            self.report["files_unchanged"] += 1
            self._record(rel, st, rec, old[7], old)
            return
        moved = self.cache.by_inode(st.st_dev, st.st_ino) if self.cache_had_entries else None
        if moved is not None and moved[0] != rel and (moved[1], moved[2]) == (st.st_size, st.st_mtime_ns) \
                and moved[3] is not None and moved[3] not in self.unsound and old is None:
            self.report["files_new"] += 1
            self._record(rel, st, rec, moved[3], old)   # a rename: same inode, same data
            return
        basis = None
        if old is not None and old[0] == "f" and old[7] not in self.unsound:
            basis = old[7]
        elif moved is not None and moved[3] not in self.unsound:
            basis = moved[3]
        self.report["files_changed" if old is not None else "files_new"] += 1
        if st.st_size <= self.max_blob:
            self._small.append((abspath, rel, st, rec, old))
            if len(self._small) >= SMALL_BATCH:
                self._flush_small()
            return
        try:
            fd = open_for_reading(abspath)
        except OSError as exc:
            self._unreadable(abspath, exc)
            return
        runs = None
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            stored = None
            if basis is not None and st.st_size >= DELTA_MIN_SIZE and st.st_blocks * 512 >= st.st_size:
                try:
                    stored = self._store_delta(fd, st, basis)
                except Fallback:
                    pass
            if stored is None:
                runs, stored = self._store_whole(fd, abspath, st)
        except OSError as exc:
            self._unreadable(abspath, exc)
            return
        finally:
            os.close(fd)

        def finish():
            try:
                content = stored()
            except OSError as exc:   # a worker could not read a chunk
                self._unreadable(abspath, exc)
                return
            self._add_content(content, rel, st, rec, old)
        if runs is None:
            self._emit(finish)
            return
        self._large.append((runs, finish))
        while len(self._large) > LARGE_WAITING:
            self._advance_large()

    def _add_content(self, content: dict, rel: bytes, st, rec: dict, old) -> None:
        rec["size"] = content["size"]
        cid = content["id"]
        if cid in self.unsound or cid not in self.contents or not self.volume.catalog().has_content(cid):
            self.commit.add(content)
            self.contents.add(cid)
        self._record(rel, st, rec, cid, old)

    def _flush_small(self) -> None:
        """Hand the gathered small files to a worker as one job."""
        if not self._small:
            return
        batch, self._small = self._small, []

        def done(slot, results):
            for r, b in zip(results, batch):
                if isinstance(r, tuple) and r[1] is not None:
                    r = (r[0], self._from_slot(slot, r[1]))
                self._small_done(r, *b)
        self._submit(sealers.seal_files, ([(b[0], b[2].st_size) for b in batch],), done)
        if self._large:
            self._advance_large()

    def _advance_large(self) -> None:
        """Submit the next run of the oldest file waiting in _large; once a file's
        runs are all submitted, queue its record after them."""
        runs, finish = self._large[0]
        if next(runs, None) is None:
            self._large.popleft()
            self._emit(finish)

    def _small_done(self, result, abspath: bytes, rel: bytes, st, rec: dict, old) -> None:
        if isinstance(result, OSError):
            self._unreadable(abspath, result)
            return
        size, sealed = result
        self.report["bytes_read"] += size
        if self.progress:
            self.progress.bytes(size)
        extents = []
        if sealed is not None:
            self._blob_done(sealed)
            extents.append([sealed[0], 0, size])
        hasher = ContentHasher(self.key, self.max_blob)
        if sealed is not None:
            hasher.add_chunk(sealed[0], size)
        self._add_content({"t": "content", "id": hasher.digest(), "size": size, "ext": extents, "sig": [],
                           "bs": None}, rel, st, rec, old)

    def _read_chunk(self, reader: directio.Reader, offset: int, length: int):
        """Up to `length` bytes of a large file from `offset`, read into a buffer of
        the free list (a fresh 1 MiB per read would be mapped, faulted in and
        unmapped each time): returns (buffer, bytes read). The caller puts the
        buffer back once nothing uses its bytes any more."""
        buf = self._buffers.pop() if self._buffers else directio.buffer(READ_CHUNK + self.max_blob)
        got = reader.read_into(offset, buf, length)
        self.report["bytes_read"] += got
        if self.progress:
            self.progress.bytes(got)
        return buf, got

    def _store_whole(self, fd: int, abspath: bytes, st):
        """Store a file as grid-aligned blobs; chunks wholly in a hole are not read.
        The workers read runs of chunks (each its own, in parallel) and name, sign
        and seal their blobs. Returns (runs, resolver of the content): `runs`
        submits the jobs one run per step, so that the walk can interleave them
        with batches of small files. A large file's reads and writes keep the disk
        busy while small files keep the cores busy; one after the other, the
        cores idled through the first and the disk through the second."""
        size = st.st_size
        block_size = delta.block_size_for(size) if size >= DELTA_MIN_SIZE else None
        holes = HoleMap(fd, st)
        pieces = []   # per run of grid chunks: (job, length asked for), or (None, length) for a hole

        def runs():
            pos = 0
            while pos < size:
                length = min(self.max_blob, size - pos)
                if holes.covers(pos, length):
                    pieces.append((None, length))
                    pos += length
                    continue
                run = length   # several grid chunks at once when no hole interrupts them
                while run < READ_CHUNK and pos + run < size and \
                        not holes.covers(pos + run, min(self.max_blob, size - pos - run)):
                    run += min(self.max_blob, size - pos - run)
                fut = self._submit(sealers.seal_chunks, (abspath, st.st_dev, st.st_ino, pos, run, block_size),
                                   self._chunks_done)
                pieces.append((fut, run))
                pos += run
                yield run

        def resolve() -> dict:
            hasher = ContentHasher(self.key, self.max_blob)
            extents, records = [], []
            for job, length in pieces:
                if job is None:
                    hasher.add_zeros(length)
                    merge_extent(extents, None, 0, length)
                    if block_size:
                        records.append(zero_records(block_size, length))
                    continue
                got, sealed, error = job.result()
                if error is not None:
                    raise error
                for blob_id, _, _, raw_len, recs in sealed:
                    hasher.add_chunk(blob_id, raw_len)
                    extents.append([blob_id, 0, raw_len])
                    if block_size:
                        records.append(recs)
                if got < length:
                    break   # the file shrank while it was read: it is stored as far as it was read
            sig = delta.Signature(block_size, hasher.size, b"".join(records)).to_bytes() if block_size else None
            return {"t": "content", "id": hasher.digest(), "size": hasher.size, "ext": extents,
                    "sig": self._store_signature(sig, None), "bs": block_size}
        return runs(), resolve

    def _chunks_done(self, slot: int, result) -> None:
        """Main thread, in order: a run of chunks read and sealed by a worker."""
        got, sealed, _ = result
        self.report["bytes_read"] += got
        if self.progress:
            self.progress.bytes(got)
        for blob in sealed:
            self._blob_done(self._from_slot(slot, blob))

    def _store_signature(self, sig: bytes | None, old: tuple | None) -> list:
        """Extents of the new signature's bytes. Against the old signature (bytes,
        extents) only the changed groups of records are stored: a rewrite of 1% of a
        file's blocks stores about 1% of its signature."""
        if not sig:
            return []
        literal = []           # (new offset, length) of changed groups
        if old is not None and len(old[0]) != len(sig):
            old = None         # a different block count shifts every record: store it whole
        if old is not None:
            old_bytes, old_ext = old
            for off in range(0, len(sig), SIG_GROUP):
                if sig[off:off + SIG_GROUP] != old_bytes[off:off + SIG_GROUP]:
                    if literal and literal[-1][0] + literal[-1][1] == off:
                        literal[-1][1] += len(sig[off:off + SIG_GROUP])
                    else:
                        literal.append([off, len(sig[off:off + SIG_GROUP])])
            if sum(n for _, n in literal) > len(sig) // 2:
                old = None
        if old is None:
            literal = [[0, len(sig)]]
        data = b"".join(sig[a:a + n] for a, n in literal)
        blobs = [self._store_now(data[i:i + self.max_blob], BLOB_SIGNATURE) for i in range(0, len(data), self.max_blob)]
        extents, pos, at = [], 0, 0
        slicer = ExtentSlicer(old[1]) if old is not None else None
        for a, n in literal + [[len(sig), 0]]:
            if a > pos:
                slicer.copy(extents, pos, a - pos)
            while n:
                blob, off = divmod(at, self.max_blob)
                take = min(n, self.max_blob - off)
                merge_extent(extents, blobs[blob], off, take)
                at += take
                n -= take
                a += take
            pos = a
        return extents

    def _load_signature(self, basis: dict) -> bytes:
        return b"".join(self.volume.read_blob(b)[off:off + n] for b, off, n in basis["sig"])

    def _lane_done(self, job, buf) -> None:
        job.result()
        self._buffers.append(buf)

    def _store_delta(self, fd: int, st, basis_id: bytes):
        """Store a changed file as copies of its basis plus literal blobs; raise
        Fallback when that is not worth it. Returns the resolver."""
        basis = self.volume.catalog().content(basis_id)
        if basis is None or not basis["sig"]:
            raise Fallback()
        try:
            old_sig_bytes = self._load_signature(basis)
            sig = delta.Signature.from_bytes(old_sig_bytes)
        except (IroncoreError, ValueError) as exc:
            logger.info("no usable signature for a delta basis (%s); storing the file whole", exc)
            raise Fallback() from None
        slicer = ExtentSlicer(basis["ext"])
        size = st.st_size
        block_size = delta.block_size_for(size)
        hasher = ContentHasher(self.key, self.max_blob)
        builder = delta.SignatureBuilder(block_size)
        encoder = delta.Encoder(sig)
        ops = []          # [("c", old_offset, length) | ("l", spool_offset, length)]
        literal = 0
        max_ops = max(256, size // 16384)
        lane = deque()   # (hash lane job, the buffer it reads)
        reader = directio.Reader(fd, size)

        def update(chunk):
            hasher.update(chunk)
            builder.update(chunk)

        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            def take(new_ops):
                nonlocal literal
                for op in new_ops:
                    if op[0] == delta.COPY:
                        if ops and ops[-1][0] == "c" and ops[-1][1] + ops[-1][2] == op[1]:
                            ops[-1][2] += op[2]
                        else:
                            ops.append(["c", op[1], op[2]])
                    else:
                        data = op[1]
                        if ops and ops[-1][0] == "l":
                            ops[-1][2] += len(data)
                        else:
                            ops.append(["l", spool.tell(), len(data)])
                        spool.write(data)
                        literal += len(data)
                if literal > size // 2 or len(ops) > max_ops:
                    raise Fallback()

            try:
                pos = 0
                while pos < size:
                    buf, got = self._read_chunk(reader, pos, min(READ_CHUNK, size - pos))
                    if not got:
                        self._buffers.append(buf)
                        break
                    data = memoryview(buf)[:got]
                    lane.append((self.hash_lane.submit(update, data), buf))
                    while len(lane) > LANE_DEPTH:
                        self._lane_done(*lane.popleft())
                    take(encoder.feed(data))   # the encoder keeps copies of what it needs
                    pos += got
                take(encoder.finish())
            finally:
                reader.close()
                while lane:
                    self._lane_done(*lane.popleft())
            extents = []
            for kind, a, n in ops:
                if kind == "c":
                    slicer.copy(extents, a, n)
                    continue
                spool.seek(a)
                while n > 0:
                    data = spool.read(min(n, self.max_blob))
                    extents.append([self._store_blob(data), 0, len(data)])
                    n -= len(data)
        if len(extents) > max_ops * 2:
            raise Fallback()
        new_sig = builder.finish().to_bytes()
        sig_extents = self._store_signature(new_sig, (old_sig_bytes, basis["sig"]))
        content = {"t": "content", "id": hasher.digest(), "size": hasher.size, "ext": extents, "sig": sig_extents,
                   "bs": block_size}

        def resolve() -> dict:
            content["ext"] = [[e[0].result()[0] if hasattr(e[0], "result") else e[0], e[1], e[2]]
                              for e in content["ext"]]
            return content
        return resolve


SIG_GROUP = 16 * 20   # signature records compared and stored in groups of 16 blocks


@functools.lru_cache(maxsize=16)
def zero_records(block_size: int, length: int) -> bytes:
    return delta.signature(bytes(length), block_size).records


class HoleMap:
    """Which grid chunks of a sparse file lie wholly in a hole (never read)."""

    def __init__(self, fd: int, st):
        self.regions = list(data_regions(fd, st)) if st.st_blocks * 512 < st.st_size else None

    def covers(self, pos: int, length: int) -> bool:
        if self.regions is None:
            return False
        end = pos + length
        i = bisect.bisect_right(self.regions, (pos, float("inf"))) - 1
        for start, stop in self.regions[max(i, 0):]:
            if start >= end:
                break
            if stop > pos:
                return False
        return True
