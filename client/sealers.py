"""A backup's blobs are read and sealed by workers: forked processes where that
is safe, threads otherwise.

Naming (BLAKE3), signing, compressing and encrypting a blob are quick library
calls, but a backup makes tens of thousands of them and in threads each one
hands one interpreter's GIL back and forth: the whole pipeline used 1.3 of 2
cores. Worker processes have an interpreter each. They read the files
themselves and seal blobs into slots of memory shared with the backup, so only
small messages cross the pipes, and the pack writer writes the sealed blobs
straight from the slots (a slot is free again once they are on disk).
Processes are forked only while the backup's process has no other thread
(client.worker_process); otherwise the same jobs run in threads."""
import errno
import mmap
from concurrent.futures import wait
import os
import threading
from collections import deque

from client.worker_process import Workers
from ironfs.format import delta, directio
from ironfs.format.crypto import SEAL_OVERHEAD


class Context:
    """What the jobs work with: the sealer, the slots, and each thread's read buffer."""

    def __init__(self, sealer, memory: mmap.mmap, max_blob: int, slot_size: int):
        self.sealer, self.key, self.memory = sealer, sealer.key, memory
        self.max_blob, self.slot_size = max_blob, slot_size
        self.local = threading.local()

    def seal(self, data, slot: int, at: int, block_size, frame=None) -> tuple:
        """Name, sign (if block_size) and seal one blob into the slot at `at`
        (`frame`: see BlobSealer.seal_into): (blob id, offset in the slot, sealed
        length, plaintext length, signature records)."""
        blob_id = self.key.blob_id(data)
        records = delta.signature(data, block_size).records if block_size else None
        base = slot * self.slot_size
        n = self.sealer.seal_into(blob_id, data, memoryview(self.memory)[base + at:base + self.slot_size], frame)
        return blob_id, at, n, len(data), records


def open_for_reading(path: bytes) -> int:
    """O_NOATIME where the file is ours (so backups leave atimes alone), plain otherwise."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)


def seal_files(ctx: Context, slot: int, files: list) -> list:
    """Read and seal small files of at most one blob each, given as (path, size
    seen by the walk). All are opened and announced to the kernel first, so
    their reads go to the disk together. Per file: (length, sealed blob or None
    when empty), or the OSError met."""
    opened = []
    for path, _ in files:
        try:
            fd = open_for_reading(path)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            opened.append(fd)
        except OSError as exc:
            opened.append(exc)
    results, at = [], 0
    for fd, (_, size) in zip(opened, files):
        if isinstance(fd, OSError):
            results.append(fd)
            continue
        try:
            # the size seen by the walk and one byte more (a buffer of max_blob
            # bytes per file would cost a fresh mapping of memory each)
            want = min(size, ctx.max_blob) + 1
            data = os.pread(fd, want, 0)
            if len(data) == want and want <= ctx.max_blob:   # it grew since: read on up to the limit
                data += os.pread(fd, ctx.max_blob + 1 - want, want)
        except OSError as exc:
            results.append(exc)
            continue
        finally:
            os.close(fd)
        if len(data) > ctx.max_blob:
            results.append(OSError(errno.EFBIG, "it grew while being read; its last version is kept"))
        elif not data:
            results.append((0, None))
        else:
            sealed = ctx.seal(data, slot, at, None)
            at += sealed[2]
            results.append((len(data), sealed))
    return results


def seal_chunks(ctx: Context, slot: int, path: bytes, dev: int, ino: int, pos: int, length: int, block_size) -> tuple:
    """Read a run of grid chunks of a large file (the file the walk saw: same
    device and inode) and seal its blobs. Returns (bytes read, sealed blobs,
    the OSError met or None)."""
    try:
        fd = open_for_reading(path)
    except OSError as exc:
        return 0, [], exc
    reader = None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (dev, ino):
            return 0, [], OSError(errno.ESTALE, "it was replaced while being read; its last version is kept")
        reader = directio.Reader(fd, st.st_size)
        # read one page in: the byte before each blob can frame it (BlobSealer.seal_into)
        buf = getattr(ctx.local, "buf", None)
        if buf is None or len(buf) < directio.ALIGN + directio.align_up(length):
            buf = ctx.local.buf = directio.buffer(directio.ALIGN + length)
        got = reader.read_into(pos, memoryview(buf)[directio.ALIGN:], length)
    except OSError as exc:
        return 0, [], exc
    finally:
        if reader is not None:
            reader.close()
        os.close(fd)
    view = memoryview(buf)
    sealed, at = [], 0
    for i in range(directio.ALIGN, directio.ALIGN + got, ctx.max_blob):
        end = min(i + ctx.max_blob, directio.ALIGN + got)
        sealed.append(ctx.seal(view[i:end], slot, at, block_size, frame=view[i - 1:end]))
        at += sealed[-1][2]
    return got, sealed, None


def seal_data(ctx: Context, slot: int, data: bytes) -> tuple:
    """Seal one blob handed over whole (a delta's literal data)."""
    return ctx.seal(data, slot, 0, None)


class SealWorkers:
    """The workers and their slots. A job is given a free slot and the worker
    writes its sealed blobs there; the caller takes views of them with `sealed`
    and gives the slot back with `release`, to be reused once the views' bytes
    are written."""

    def __init__(self, sealer, max_blob: int, job_bytes: int, slots: int, workers: int | None = None):
        self.slot_size = job_bytes + (job_bytes // max_blob + 1) * SEAL_OVERHEAD
        self.memory = mmap.mmap(-1, slots * self.slot_size)   # shared (MAP_SHARED) with forked workers
        self.view = memoryview(self.memory)
        self.free = deque(range(slots))
        self.held = deque()   # (future of the write of its blobs, slot)
        context = Context(sealer, self.memory, max_blob, self.slot_size)
        # two workers more than cores: while one waits for its read, another seals
        self.pool = Workers(workers or (os.cpu_count() or 2) + 2, lambda: context, name="seal")   # forked: inherit it

    def submit(self, job, *args):
        """(future, slot) of a job; the caller has made sure a slot is free."""
        slot = self.free.popleft()
        return self.pool.submit(job, slot, *args), slot

    def sealed(self, slot: int, at: int, n: int) -> memoryview:
        base = slot * self.slot_size + at
        return self.view[base:base + n]

    def release(self, slot: int, written=None) -> None:
        """Give a slot back, for reuse once the future `written` (if any) is done."""
        if written is None:
            self.free.append(slot)
        else:
            self.held.append((written, slot))

    def has_free(self, wait_for_one: bool) -> bool:
        """Whether a slot is free, after taking back those whose blobs are written;
        with wait_for_one, waits for the oldest held slot's write when none is."""
        while self.held and (self.held[0][0].done() or (wait_for_one and not self.free)):
            written, slot = self.held.popleft()
            wait([written])   # its errors reach the pack writer's caller, not here
            self.free.append(slot)
        return bool(self.free)

    def close(self) -> None:
        self.pool.shutdown()
        self.view.release()
        try:
            self.memory.close()
        except BufferError:
            pass   # a view is still held (by an exception's traceback): the mapping goes with it

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
