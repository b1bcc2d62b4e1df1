"""Restore a snapshot (or a path in it) into a folder.

Every entry is created relative to its parent folder's file descriptor with
O_NOFOLLOW, and names are checked on the way out of the catalog, so nothing is
ever written outside the target, even through a symlink restored earlier in the
same run. A file whose data cannot be had whole is removed and reported; the
rest of the restore goes on and the run ends non-zero."""
import errno
import logging
import os
import stat
from collections import OrderedDict, deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from ironfs.format import directio
from client.fsmeta import apply_metadata
from ironfs.errors import CorruptData, IroncoreError, NotFound
from ironfs.format.catalog import ROOT, split_path
from ironfs.format.content import ContentHasher

logger = logging.getLogger(__name__)

GROUPS_AHEAD = 3
SMALL_FILE = 4 << 20    # files up to this size are restored whole by a worker thread
JOBS_IN_FLIGHT = 12     # file jobs queued at once (a small-file job holds up to SMALL_FILE of data)
OPEN_DIRS = 256         # folders kept open for their files' jobs


class BlobCache:
    """A small LRU of decrypted blobs: delta extents often revisit one blob."""

    def __init__(self, limit_bytes: int = 64 << 20):
        self.limit = limit_bytes
        self.size = 0
        self.items: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, blob_id: bytes):
        data = self.items.get(blob_id)
        if data is not None:
            self.items.move_to_end(blob_id)
        return data

    def put(self, blob_id: bytes, data: bytes) -> None:
        if blob_id in self.items:
            return
        self.items[blob_id] = data
        self.size += len(data)
        while self.size > self.limit and self.items:
            _, old = self.items.popitem(last=False)
            self.size -= len(old)


class Restore:
    """The walk runs on the calling thread and only makes folders, links and
    special files itself. Files are written by jobs: small ones in batches by a
    pool, large ones one at a time by a lane whose blobs a second pool reads
    ahead. A folder stays open, its own metadata waiting, until the jobs of its
    files are done, so the walk goes on past a large file instead of waiting for
    it, and large and small files are written at the same time."""

    def __init__(self, volume, snapshot: int, target: str, progress=None, threads: int | None = None):
        self.volume = volume
        volume.require_key()
        self.snapshot = snapshot
        self.target = os.path.abspath(target)
        self.progress = progress
        self.cache = BlobCache()   # used by the large-file lane only
        shape = volume.read_shape
        self.pool = ThreadPoolExecutor(threads or max(os.cpu_count() or 2, shape.workers),
                                       thread_name_prefix="restore-read")     # blobs of large files
        self.file_pool = ThreadPoolExecutor(threads or shape.small_workers,
                                            thread_name_prefix="restore-small")  # small files in batches
        self.large_lane = ThreadPoolExecutor(1, thread_name_prefix="restore-large")  # large files, in order
        self.is_root = os.geteuid() == 0
        self.report = {"files": 0, "dirs": 0, "other": 0, "bytes": 0, "errors": [], "warnings": []}
        self._running: set = set()         # jobs submitted and not yet seen done (the bound on work in flight)
        self._open_dirs: deque = deque()   # (jobs, folder) in the order the walk left each folder

    def run(self, path: str | None = None) -> dict:
        catalog = self.volume.refresh()
        catalog.prefetch()
        os.makedirs(self.target, exist_ok=True)
        top = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY)
        opened = []
        try:
            if path:
                rel = os.fsencode(path).strip(b"/")
                entry = catalog.lookup(rel, self.snapshot)
                if entry is None:
                    raise NotFound(f"{path} is not in snapshot {self.snapshot}.")
                names = split_path(rel)
                parent_fd = top
                for name in names[:-1]:
                    parent_fd, _ = self._open_dir(parent_fd, name)
                    opened.append(parent_fd)
                jobs = []
                self._restore_entry(parent_fd, entry, rel, False, jobs)
                self._defer(jobs, None)
            else:
                self._defer(self._restore_children(top, ROOT, b"", fresh=False), None)
            while self._open_dirs:
                self._finish_oldest()
        finally:
            for pool in (self.large_lane, self.file_pool, self.pool):
                pool.shutdown(wait=True)
            for _, folder in self._open_dirs:   # only after an unexpected error: let go of the folders
                if folder is not None:
                    os.close(folder[1])
            for fd in opened:
                os.close(fd)
            os.close(top)
        return self.report

    def _fail(self, rel: bytes, message: str) -> None:
        shown = os.fsdecode(rel)
        logger.error("%s: %s", shown, message)
        self.report["errors"].append({"path": shown, "error": message})

    def _open_dir(self, parent_fd: int, name: bytes) -> tuple[int, bool]:
        """Open (making it if need be) a folder without following a symlink; returns
        (fd, fresh), fresh meaning we made it, so nothing in it needs replacing."""
        fresh = True
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            fresh = False
        try:
            return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd), fresh
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):   # a symlink or file stands there: replace it
                os.unlink(name, dir_fd=parent_fd)
                os.mkdir(name, 0o700, dir_fd=parent_fd)
                return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd), True
            raise

    # --- jobs and the folders waiting for them ----------------------------------------
    def _submit(self, jobs: list, pool: ThreadPoolExecutor, fn, *args) -> None:
        """Start a job for the folder whose `jobs` it joins; first wait, if too much
        is in flight, for any one job to end (not the oldest: that may be a large
        file the walk should go on past)."""
        while len(self._running) >= JOBS_IN_FLIGHT:
            _, self._running = wait(self._running, return_when=FIRST_COMPLETED)
        fut = pool.submit(fn, *args)
        if self.progress:   # counted as each job ends, not when its folder is finished
            fut.add_done_callback(self._show_progress)
        self._running.add(fut)
        jobs.append(fut)

    def _show_progress(self, fut) -> None:
        """A job's written bytes to the progress display (on the thread that ended it)."""
        if not fut.cancelled() and fut.exception() is None:
            self.progress.bytes(sum(nbytes for _, error, nbytes, _ in fut.result() if not error))

    def _defer(self, jobs: list, folder: tuple | None) -> None:
        """A folder the walk has left, as (parent_fd, fd, entry, rel): it is closed and
        its metadata set once its jobs are done, after every folder left before it.
        That order is the walk's post-order, so a folder's parent is still open."""
        self._open_dirs.append((jobs, folder))
        while len(self._open_dirs) > OPEN_DIRS:
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        jobs, folder = self._open_dirs.popleft()
        try:
            for fut in jobs:
                self._running.discard(fut)
                self._collect(fut)
        finally:
            if folder is not None:
                self._finish_dir(*folder)

    def _finish_dir(self, parent_fd: int, fd: int, entry, rel: bytes) -> None:
        os.close(fd)
        self.report["dirs"] += 1
        try:
            for w in apply_metadata(parent_fd, entry.name, entry, self.is_root):
                self.report["warnings"].append({"path": os.fsdecode(rel), "warning": w})
        except OSError as exc:
            self._fail(rel, exc.strerror or str(exc))

    def _restore_children(self, dir_fd: int, parent_id: int, prefix: bytes, fresh: bool) -> list:
        """Restore a folder's entries; returns the jobs writing its files, which must
        be done before dir_fd is closed and the folder's own metadata set."""
        catalog = self.volume.catalog()
        jobs = []
        batch, batch_bytes = [], 0
        for entry in catalog.iter_dir(parent_id, self.snapshot):
            rel = prefix + b"/" + entry.name if prefix else entry.name
            if entry.kind == "f" and entry.size <= SMALL_FILE and safe_name(entry.name):
                batch.append((entry, rel))
                batch_bytes += entry.size
                if len(batch) >= self.volume.read_shape.files or batch_bytes >= SMALL_FILE:
                    self._submit(jobs, self.file_pool, self._small_files_job, dir_fd, batch, fresh)
                    batch, batch_bytes = [], 0
            else:
                self._restore_entry(dir_fd, entry, rel, fresh, jobs)
        if batch:
            self._submit(jobs, self.file_pool, self._small_files_job, dir_fd, batch, fresh)
        return jobs

    def _small_files_job(self, dir_fd: int, files: list, fresh: bool) -> list:
        """Worker thread: a batch of small files of one folder, their blobs read
        together; reports by return value."""
        catalog = self.volume.catalog()
        contents = catalog.contents({e.content for e, _ in files if e.content})
        blobs = self.volume.read_blobs({b for c in contents.values() if c for b, _, _ in c["ext"] if b})

        def fetch_all(extents):
            for blob, _, _ in extents:
                data = None if blob is None else blobs[blob]
                if isinstance(data, Exception):
                    raise data
                yield data
        return [self._file_job(dir_fd, e, r, fresh, fetch_all, contents.get(e.content)) for e, r in files]

    def _large_file_job(self, dir_fd: int, entry, rel: bytes, fresh: bool) -> list:
        """The large-file lane: one file, its blobs read ahead by the read pool."""
        return [self._file_job(dir_fd, entry, rel, fresh, self._prefetched, None)]

    def _file_job(self, dir_fd: int, entry, rel: bytes, fresh: bool, fetch_all, content):
        try:
            error = self._restore_file(dir_fd, entry, fetch_all, fresh, content)
            if error:
                return rel, error, 0, []
            return rel, None, entry.size, apply_metadata(dir_fd, entry.name, entry, self.is_root)
        except OSError as exc:
            return rel, exc.strerror or str(exc), 0, []

    def _collect(self, fut) -> None:
        for rel, error, nbytes, warnings in fut.result():
            if error:
                self._fail(rel, error)
                continue
            self.report["files"] += 1
            self.report["bytes"] += nbytes
            for w in warnings:
                self.report["warnings"].append({"path": os.fsdecode(rel), "warning": w})

    def _restore_entry(self, parent_fd: int, entry, rel: bytes, fresh: bool, jobs: list) -> None:
        """Restore one entry of the folder open as parent_fd; a file's job joins `jobs`."""
        name = entry.name
        if not safe_name(name):
            self._fail(rel, "unsafe name in the catalog; refused")
            return
        if entry.kind == "f":
            self._submit(jobs, self.large_lane, self._large_file_job, parent_fd, entry, rel, fresh)
            return
        try:
            if entry.kind == "d":
                fd, made = self._open_dir(parent_fd, name)
                try:
                    children = self._restore_children(fd, entry.path_id, rel, made)
                except BaseException:
                    os.close(fd)
                    raise
                self._defer(children, (parent_fd, fd, entry, rel))
                return
            if not fresh:
                self._remove_existing(parent_fd, name)
            if entry.kind == "l":
                os.symlink(entry.target, name, dir_fd=parent_fd)
            elif entry.kind == "p":
                os.mkfifo(name, 0o600, dir_fd=parent_fd)
            elif entry.kind in ("c", "b"):
                mode = stat.S_IFCHR if entry.kind == "c" else stat.S_IFBLK
                os.mknod(name, mode | 0o600, entry.rdev or 0, dir_fd=parent_fd)
            self.report["other"] += 1
            for w in apply_metadata(parent_fd, name, entry, self.is_root):
                self.report["warnings"].append({"path": os.fsdecode(rel), "warning": w})
        except OSError as exc:
            self._fail(rel, exc.strerror or str(exc))

    def _remove_existing(self, parent_fd: int, name: bytes) -> None:
        try:
            os.unlink(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise OSError(errno.EISDIR, "a folder is in the way") from None

    def _restore_file(self, parent_fd: int, entry, fetch_all, fresh: bool, content=None) -> str | None:
        """Write one file; on failure remove it and return why (never leave it short)."""
        if not fresh:
            self._remove_existing(parent_fd, entry.name)
        if content is None and entry.content:
            content = self.volume.catalog().content(entry.content)
        if entry.content and content is None:
            return "its content is missing from the catalog"
        fd = os.open(entry.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=parent_fd)
        ok = False
        try:
            if content is not None:
                write_content(fd, content, self.volume.key, fetch_all(content["ext"]))
            ok = True
        except IroncoreError as exc:
            return f"not restored: {exc.message}"
        finally:
            os.close(fd)
            if not ok:
                os.unlink(entry.name, dir_fd=parent_fd)
        return None

    def _prefetched(self, extents):
        """Blob data for each extent in order (main thread). The pool reads the
        blobs ahead in groups, in the order the file first uses them."""
        order, seen = [], set()
        for blob, _, _ in extents:
            if blob is not None and blob not in seen:
                seen.add(blob)
                order.append(blob)
        step = self.volume.read_shape.blobs
        groups = deque(order[i:i + step] for i in range(0, len(order), step))
        futures = deque()
        failed = {}

        def fill():
            while groups and len(futures) < GROUPS_AHEAD:
                futures.append(self.pool.submit(self.volume.read_blobs, groups.popleft()))

        fill()
        for blob, _, _ in extents:
            if blob is None:
                yield None
                continue
            while (data := self.cache.get(blob)) is None and blob not in failed:
                got = futures.popleft().result() if futures else self.volume.read_blobs([blob])
                for blob_id, value in got.items():
                    if isinstance(value, Exception):
                        failed[blob_id] = value
                    else:
                        self.cache.put(blob_id, value)
                fill()
            if blob in failed:
                raise failed[blob]
            yield data


def safe_name(name: bytes) -> bool:
    return name not in (b"", b".", b"..") and b"/" not in name and b"\x00" not in name


def write_content(fd: int, content: dict, key, blobs) -> None:
    """Write a content's extents (`blobs` yields each extent's blob data, or
    None for holes) and check the result against the content id. A large file
    goes past the page cache (ironfs.format.directio)."""
    hasher = ContentHasher(key)
    out = directio.Writer(fd, content["size"])
    pos = 0
    try:
        for (blob, off, length), data in zip(content["ext"], blobs):
            if blob is None:
                hasher.add_zeros(length)
                pos += length
                continue
            piece = memoryview(data)[off:off + length]
            if len(piece) != length:
                raise CorruptData(f"blob {blob.hex()} is shorter than its extent")
            hasher.add_extent(blob, off, piece, len(data), content["size"])
            out.write(pos, piece)
            pos += length
    finally:
        out.close()
    if content["ext"] and content["ext"][-1][0] is None:
        os.ftruncate(fd, pos)   # a trailing hole
    if pos != content["size"] or hasher.digest() != content["id"]:
        raise CorruptData("its data does not match the stored hash")
