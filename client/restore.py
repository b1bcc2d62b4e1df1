"""Restore a snapshot (or a path in it) into a folder.

Every entry is created relative to its parent folder's file descriptor with
O_NOFOLLOW, and names are checked on the way out of the catalog, so nothing is
ever written outside the target, even through a symlink restored earlier in the
same run. A file whose data cannot be had whole is removed and reported; the
rest of the restore goes on and the run ends non-zero."""
import errno
import functools
import logging
import os
import stat
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from client.fsmeta import apply_metadata
from client.worker_process import Workers
from ironfs.errors import CorruptData, IroncoreError, NotFound
from ironfs.format import directio
from ironfs.format.catalog import ROOT, split_path
from ironfs.format.content import ContentHasher, content_digest
from ironfs.format.crypto import MasterKey
from ironfs.format.volume import Volume

logger = logging.getLogger(__name__)

GROUPS_AHEAD = 3
SMALL_FILE = 4 << 20    # files up to this size are restored whole, in batches; larger ones in parts
SEGMENT = 64 << 20      # bytes of a large file written by one job (a multiple of the grid)
PARTS_AHEAD = 16 << 30  # bytes of large files the walk may leave waiting for a worker
JOBS_IN_FLIGHT = 12     # small-file jobs queued at once (each holds up to SMALL_FILE of data)
OPEN_DIRS = 256         # folders kept open for their files' jobs


class BlobCache:
    """A small LRU of decrypted blobs, one per part of a large file being
    written: delta extents often revisit one blob."""

    def __init__(self, limit_bytes: int = 32 << 20):
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


class FileWriter:
    """Writes files into folders under the target: the jobs of a restore. A
    folder is named by its path below the target and opened one name at a time
    with O_NOFOLLOW, so a symlink restored in its place is never followed. For a
    local volume the jobs run in worker processes, each with its own interpreter
    (threads would share one GIL, and a file's many small steps hold it); for a
    remote one, in threads of the restoring process."""

    def __init__(self, volume, target: str, threads: int | None = None):
        self.volume = volume
        self.top = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        self.is_root = os.geteuid() == 0
        self.pool = ThreadPoolExecutor(threads or max(os.cpu_count() or 2, volume.read_shape.workers),
                                       thread_name_prefix="restore-read")   # blobs of a large file, read ahead

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        os.close(self.top)

    def small_files(self, prefix: bytes, files: list, fresh: bool) -> list:
        """A batch of small files of one folder, their blobs read together;
        reports (rel, error, bytes, warnings) per file."""
        try:
            dir_fd = open_folder(self.top, prefix)
        except OSError as exc:
            return [(rel, exc.strerror or str(exc), 0, []) for _, rel in files]
        try:
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
        finally:
            os.close(dir_fd)

    def segment(self, prefix: bytes, name: bytes, rel: bytes, start: int, extents: list, size: int) -> list:
        """Write one part of a large file that the walk has made (its extents, from
        file offset `start`, a grid boundary), its blobs read ahead by the read
        pool; reports (rel, error, bytes, chunk ids of the part)."""
        try:
            dir_fd = open_folder(self.top, prefix)
            try:
                fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            return [(rel, exc.strerror or str(exc), 0, [])]
        try:
            ids, end = write_extents(fd, self.volume.key, extents, self._prefetched(extents), start, size)
        except IroncoreError as exc:
            return [(rel, f"not restored: {exc.message}", 0, [])]
        except OSError as exc:
            return [(rel, exc.strerror or str(exc), 0, [])]
        finally:
            os.close(fd)
        return [(rel, None, end - start, ids)]

    def _file_job(self, dir_fd: int, entry, rel: bytes, fresh: bool, fetch_all, content):
        try:
            error = self._restore_file(dir_fd, entry, fetch_all, fresh, content)
            if error:
                return rel, error, 0, []
            return rel, None, entry.size, apply_metadata(dir_fd, entry.name, entry, self.is_root)
        except OSError as exc:
            return rel, exc.strerror or str(exc), 0, []

    def _restore_file(self, parent_fd: int, entry, fetch_all, fresh: bool, content=None) -> str | None:
        """Write one small file; on failure remove it and return why (never leave it short)."""
        if not fresh:
            remove_existing(parent_fd, entry.name)
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
        """Blob data for each extent in order. The pool reads the blobs ahead in
        groups, in the order the file first uses them."""
        order, seen = [], set()
        for blob, _, _ in extents:
            if blob is not None and blob not in seen:
                seen.add(blob)
                order.append(blob)
        step = self.volume.read_shape.blobs
        groups = deque(order[i:i + step] for i in range(0, len(order), step))
        futures = deque()
        failed = {}
        cache = BlobCache()

        def fill():
            while groups and len(futures) < GROUPS_AHEAD:
                futures.append(self.pool.submit(self.volume.read_blobs, groups.popleft()))

        fill()
        for blob, _, _ in extents:
            if blob is None:
                yield None
                continue
            while (data := cache.get(blob)) is None and blob not in failed:
                got = futures.popleft().result() if futures else self.volume.read_blobs([blob])
                for blob_id, value in got.items():
                    if isinstance(value, Exception):
                        failed[blob_id] = value
                    else:
                        cache.put(blob_id, value)
                fill()
            if blob in failed:
                raise failed[blob]
            yield data


def _open_writer(root: str, catalog_path: str, raw_key: bytes, target: str) -> FileWriter:
    """A worker process's FileWriter: the volume opened again, with catalog
    connections and pack descriptors of its own, and the key it inherited."""
    volume = Volume(root, catalog_path=catalog_path)
    volume.use_key(MasterKey(raw_key))
    return FileWriter(volume, target)


class Restore:
    """The walk runs on the calling thread and only makes folders, links,
    special files and large files (at full size, still empty) itself. File data
    is written by jobs (FileWriter): small files in batches, large ones in parts.
    A folder stays open, its own metadata waiting, until the jobs of its files
    are done, so the walk goes on past a large file instead of waiting for it,
    and large and small files are written at the same time."""

    def __init__(self, volume, snapshot: int, target: str, progress=None, threads: int | None = None):
        self.volume = volume
        volume.require_key()
        self.snapshot = snapshot
        self.target = os.path.abspath(target)
        self.progress = progress
        self.threads = threads
        self.is_root = os.geteuid() == 0
        self.report = {"files": 0, "dirs": 0, "other": 0, "bytes": 0, "errors": [], "warnings": []}
        self._running: set = set()         # small-file jobs not yet seen done (the bound on work in flight)
        self._open_dirs: deque = deque()   # (jobs, folder) in the order the walk left each folder
        self._parts: deque = deque()       # parts of large files not started yet: (LargeFile, job args)
        self._parts_running: set = set()
        self._parts_bytes = 0              # bytes of the parts not started yet
        self._walking = True
        self._link_firsts: dict[int, LinkFirst] = {}   # hard-link group -> its first file in this restore
        self._top = None                               # the target, open while the restore runs
        self._workers = self._start_workers()

    def _start_workers(self) -> Workers:
        """Worker processes for a local volume, threads otherwise (see FileWriter).
        The workers are forked here, before the caller starts a progress display,
        and after this process lets go of its catalog connection: no SQLite
        connection crosses a fork."""
        shape = self.volume.read_shape
        os.makedirs(self.target, exist_ok=True)
        if shape.local:
            self.volume.close()   # it reopens what it needs on first use
        # two workers more than cores: a worker writing a large file's part waits
        # on the disk about half the time (four against two: 3.5 s against 3.9 s)
        return Workers((os.cpu_count() or 2) + 2,
                       functools.partial(_open_writer, self.volume.root, self.volume.catalog_path,
                                         self.volume.key.raw, self.target),
                       thread_count=self.threads or shape.small_workers,
                       thread_state=lambda: FileWriter(self.volume, self.target, self.threads),
                       fork=shape.local, name="restore-files")

    def run(self, path: str | None = None) -> dict:
        catalog = self.volume.refresh()
        catalog.prefetch()
        top = self._top = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY)
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
            self._walking = False
            self._pump()
            while self._open_dirs:
                self._finish_oldest()
        finally:
            self._workers.shutdown()
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
    def _submit(self, jobs: list, job, *args) -> None:
        """Start a small-file job for the folder whose `jobs` it joins; first wait,
        if too much is in flight, for any one job to end (not the oldest: that
        may be a large file the walk should go on past)."""
        while len(self._running) >= JOBS_IN_FLIGHT:
            self._wait_any(self._running)
        fut = self._start(job, *args)
        self._running.add(fut)
        jobs.append(fut)

    def _start(self, job, *args):
        fut = self._workers.submit(job, *args)
        if self.progress:   # counted as each job ends, not when its folder is finished
            fut.add_done_callback(self._show_progress)
        return fut

    def _wait_any(self, futures) -> None:
        """Wait for one of `futures` or of the running parts to end; start more parts."""
        self._workers.wait_first(set(futures) | self._parts_running)
        self._running = {f for f in self._running if not f.done()}
        self._pump()

    def _pump(self) -> None:
        """Start parts of large files: one at a time while the walk goes on, so that
        the other workers write small files meanwhile (a large file waits mostly
        on the disk, small files on the CPU), as many as there are workers after."""
        self._parts_running = {f for f in self._parts_running if not f.done()}
        limit = 1 if self._walking else self._workers.count
        while self._parts and len(self._parts_running) < limit:
            large, args = self._parts.popleft()
            self._parts_bytes -= args[-1]
            fut = self._start(FileWriter.segment, *args[:-1])
            large.parts.append(fut)
            self._parts_running.add(fut)

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
                if isinstance(fut, LargeFile):
                    self._finish_large(fut)
                    continue
                if isinstance(fut, HardLink):
                    self._finish_link(fut)
                    continue
                while not fut.done():
                    self._wait_any([fut])
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
            if entry.kind == "f" and entry.link is not None and safe_name(entry.name):
                self._linked_file(dir_fd, prefix, entry, rel, fresh, jobs)
            elif entry.kind == "f" and entry.size <= SMALL_FILE and safe_name(entry.name):
                batch.append((entry, rel))
                batch_bytes += entry.size
                if len(batch) >= self.volume.read_shape.files or batch_bytes >= SMALL_FILE:
                    self._submit(jobs, FileWriter.small_files, prefix, batch, fresh)
                    batch, batch_bytes = [], 0
            else:
                self._restore_entry(dir_fd, entry, rel, fresh, jobs)
        if batch:
            self._submit(jobs, FileWriter.small_files, prefix, batch, fresh)
        return jobs

    def _linked_file(self, dir_fd: int, prefix: bytes, entry, rel: bytes, fresh: bool, jobs: list) -> None:
        """A file of a hard-link group. The first of its group that the restore meets
        is written, in a job of its own so that the job exists at once; the others
        become links to it once it is done (HardLink, in their folders' jobs)."""
        first = self._link_firsts.get(entry.link)
        if first is not None:
            jobs.append(HardLink(dir_fd, entry, rel, fresh, first))
            return
        before = len(jobs)
        if entry.size <= SMALL_FILE:
            self._submit(jobs, FileWriter.small_files, prefix, [(entry, rel)], fresh)
        else:
            self._large_file(dir_fd, entry, rel, fresh, jobs)
        self._link_firsts[entry.link] = LinkFirst(rel, jobs[-1] if len(jobs) > before else None)

    def _finish_link(self, link: "HardLink") -> None:
        """Link a later file of a group to the group's first file, both below the
        target (linkat follows no symlink); if the first could not be written,
        neither can this one."""
        first = link.first
        if not self._written(first):
            self._fail(link.rel, f"not restored: {os.fsdecode(first.rel)}, which it is a hard link of, "
                                 "could not be restored")
            return
        folder, _, name = first.rel.rpartition(b"/")
        try:
            src = open_folder(self._top, folder)
            try:
                if not link.fresh:
                    remove_existing(link.dir_fd, link.entry.name)
                os.link(name, link.entry.name, src_dir_fd=src, dst_dir_fd=link.dir_fd, follow_symlinks=False)
            finally:
                os.close(src)
        except OSError as exc:
            self._fail(link.rel, exc.strerror or str(exc))
            return
        self.report["files"] += 1

    def _written(self, first: "LinkFirst") -> bool:
        """Wait for the job writing a group's first file; True if it is whole."""
        job = first.job
        if job is None:
            return False
        if isinstance(job, LargeFile):
            self._finish_large(job)
            return job.whole
        while not job.done():
            self._wait_any([job])
        return any(rel == first.rel and error is None for rel, error, _, _ in job.result())

    def _large_file(self, parent_fd: int, entry, rel: bytes, fresh: bool, jobs: list) -> None:
        """Make a large file at its full size and write its parts (SEGMENT bytes
        each) in parallel jobs; it is checked and given its metadata once they
        are all done (_finish_large)."""
        content = self.volume.catalog().content(entry.content) if entry.content else None
        if entry.content and content is None:
            self._fail(rel, "its content is missing from the catalog")
            return
        try:
            if not fresh:
                remove_existing(parent_fd, entry.name)
            fd = os.open(entry.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=parent_fd)
            try:
                os.ftruncate(fd, content["size"] if content else 0)
            finally:
                os.close(fd)
        except OSError as exc:
            self._fail(rel, exc.strerror or str(exc))
            return
        large = LargeFile(parent_fd, entry, rel, content, [], 0)
        for start, extents in segments(content["ext"] if content else [], SEGMENT):
            while self._parts_bytes >= PARTS_AHEAD:
                self._wait_any(())
            length = sum(n for _, _, n in extents)
            self._parts.append((large, (rel.rpartition(b"/")[0], entry.name, rel, start, extents, content["size"],
                                        length)))
            self._parts_bytes += length
            large.count += 1
        jobs.append(large)
        self._pump()

    def _finish_large(self, large: "LargeFile") -> None:
        """Once every part is written: check the file against its content id and
        set its metadata, or remove it and say why (never leave it short). Called
        again (for a hard link to it), it does nothing."""
        if large.finished:
            return
        while len(large.parts) < large.count or not all(f.done() for f in large.parts):
            self._wait_any(large.parts)
        large.finished = True
        ids, error, written = [], None, 0
        for fut in large.parts:
            for _, part_error, nbytes, part_ids in fut.result():
                error = error or part_error
                ids += part_ids
                written += nbytes
        content = large.content
        if content and not error and (written != content["size"]
                                      or content_digest(self.volume.key, content["size"], ids) != content["id"]):
            error = "not restored: its data does not match the stored hash"
        try:
            if error:
                os.unlink(large.entry.name, dir_fd=large.parent_fd)
            else:
                warnings = apply_metadata(large.parent_fd, large.entry.name, large.entry, self.is_root)
        except OSError as exc:
            error = error or exc.strerror or str(exc)
        if error:
            self._fail(large.rel, error)
            return
        large.whole = True
        self.report["files"] += 1
        self.report["bytes"] += large.entry.size
        if self.progress:
            self.progress.entry()
        for w in warnings:
            self.report["warnings"].append({"path": os.fsdecode(large.rel), "warning": w})

    def _collect(self, fut) -> None:
        for rel, error, nbytes, warnings in fut.result():
            if error:
                self._fail(rel, error)
                continue
            self.report["files"] += 1
            self.report["bytes"] += nbytes
            if self.progress:
                self.progress.entry()
            for w in warnings:
                self.report["warnings"].append({"path": os.fsdecode(rel), "warning": w})

    def _restore_entry(self, parent_fd: int, entry, rel: bytes, fresh: bool, jobs: list) -> None:
        """Restore one entry of the folder open as parent_fd; a file's job joins `jobs`."""
        name = entry.name
        if not safe_name(name):
            self._fail(rel, "unsafe name in the catalog; refused")
            return
        if entry.kind == "f":
            self._large_file(parent_fd, entry, rel, fresh, jobs)
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
                remove_existing(parent_fd, name)
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


@dataclass(eq=False)
class LargeFile:
    """A large file made by the walk and written by jobs, one per part."""
    parent_fd: int
    entry: object
    rel: bytes
    content: dict | None
    parts: list     # the jobs of the parts started so far, in file order
    count: int      # parts in all
    finished: bool = False   # checked and given its metadata, or removed
    whole: bool = False      # written, checked and kept


@dataclass(eq=False)
class LinkFirst:
    """The first file of a hard-link group met by a restore, which the others link to."""
    rel: bytes
    job: object     # the small-file job or LargeFile writing it; None if it could not be started


@dataclass(eq=False)
class HardLink:
    """A later file of a hard-link group, linked once its group's first file is done."""
    dir_fd: int     # its folder, open until the folder's jobs are done
    entry: object
    rel: bytes
    fresh: bool
    first: LinkFirst


def segments(extents: list, size: int):
    """(file offset, extents) of the parts of a content, cut every `size` bytes
    (a multiple of the grid), an extent that crosses a cut split in two."""
    part, start, pos = [], 0, 0
    for blob, off, length in extents:
        while pos + length > start + size:
            take = start + size - pos
            part.append([blob, off, take])
            yield start, part
            part, start = [], start + size
            pos += take
            length -= take
            off = 0 if blob is None else off + take
        if length:
            part.append([blob, off, length])
            pos += length
    if part:
        yield start, part


def open_folder(top: int, prefix: bytes) -> int:
    """A folder below the target (`top`), by its path, opened one name at a time
    without following a symlink."""
    fd = os.dup(top)
    try:
        for name in split_path(prefix) if prefix else ():
            if not safe_name(name):
                raise OSError(errno.EINVAL, "unsafe name in the catalog; refused")
            parent, fd = fd, os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_existing(parent_fd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise OSError(errno.EISDIR, "a folder is in the way") from None


def safe_name(name: bytes) -> bool:
    return name not in (b"", b".", b"..") and b"/" not in name and b"\x00" not in name


def write_extents(fd: int, key, extents: list, blobs, start: int, file_size: int) -> tuple[list, int]:
    """Write extents from file offset `start` (a grid boundary); `blobs` yields
    each extent's blob data, or None for holes, which are skipped. Returns the
    grid chunk ids of what was written and the offset where it ended. A large
    file goes past the page cache (ironfs.format.directio)."""
    hasher = ContentHasher(key, start=start)
    out = directio.Writer(fd, file_size)
    pos = start
    try:
        for (blob, off, length), data in zip(extents, blobs):
            if blob is None:
                hasher.add_zeros(length)
                pos += length
                continue
            piece = memoryview(data)[off:off + length]
            if len(piece) != length:
                raise CorruptData(f"blob {blob.hex()} is shorter than its extent")
            hasher.add_extent(blob, off, piece, len(data), file_size)
            out.write(pos, piece)
            pos += length
    finally:
        out.close()
    return hasher.chunk_ids(), pos


def write_content(fd: int, content: dict, key, blobs) -> None:
    """Write a whole content and check it against its id."""
    ids, pos = write_extents(fd, key, content["ext"], blobs, 0, content["size"])
    if content["ext"] and content["ext"][-1][0] is None:
        os.ftruncate(fd, pos)   # a trailing hole
    if pos != content["size"] or content_digest(key, pos, ids) != content["id"]:
        raise CorruptData("its data does not match the stored hash")
