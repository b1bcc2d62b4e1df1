"""Large files are read (backup) and written (restore) past the page cache, and
so are packs: written by a backup (ironfs.format.pack), read in long spans by
a restore (ironfs.format.volume).

Through the page cache every page of a large file is allocated, copied and
later evicted again, pushing the user's working set out of memory; with
O_DIRECT the data moves between the disk and a few reused, page-aligned
buffers. A file system that refuses direct I/O (tmpfs before Linux 6.6, some
FUSE and network file systems) gets plain reads and writes instead; the
kernel keeps both views of a file coherent, so the two may be mixed."""
import errno
import fcntl
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

ALIGN = 4096        # offsets and lengths of direct I/O: a multiple of every logical block size in use
DIRECT_MIN = 4 << 20   # smaller files go through the page cache: too little to matter


def align_up(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def buffer(size: int) -> mmap.mmap:
    """Page-aligned memory for direct I/O, at least `size` bytes rounded up to ALIGN."""
    return mmap.mmap(-1, align_up(size))


def reopen_direct(fd: int) -> int | None:
    """The file open as `fd` opened again (same flags) with O_DIRECT, or None
    where that is not to be had."""
    if not hasattr(os, "O_DIRECT"):
        return None
    flags = fcntl.fcntl(fd, fcntl.F_GETFL) & (os.O_ACCMODE | getattr(os, "O_NOATIME", 0))
    try:
        return os.open(f"/proc/self/fd/{fd}", flags | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None


class Reader:
    """Reads one file into aligned buffers: directly while the file system
    allows it, through the page cache otherwise."""

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.direct = reopen_direct(fd) if size >= DIRECT_MIN else None

    def read_into(self, offset: int, buf, length: int) -> int:
        """Fill buf[:length] from `offset` (fewer at the end of the file); buf is
        from buffer() and holds align_up(length) bytes. Returns the bytes read."""
        view = memoryview(buf)
        if self.direct is not None and offset % ALIGN == 0:
            try:
                got = fill(self.direct, offset, view[:align_up(length)], direct=True)
                return min(got, length)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._give_up_direct()
        return fill(self.fd, offset, view[:length], direct=False)

    def _give_up_direct(self) -> None:
        os.close(self.direct)
        self.direct = None

    def close(self) -> None:
        if self.direct is not None:
            self._give_up_direct()


def fill(fd: int, offset: int, view: memoryview, direct: bool) -> int:
    """Read into all of `view` from `offset`; returns the bytes read (fewer at the end of the file)."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0 or (direct and n % ALIGN):   # a direct read comes back short only at the end
            return got + n
        got += n
    return got


class Writer:
    """Writes one file front to back, holes skipped. If it is large, data is
    gathered in an aligned stage and each full stage is written past the page
    cache by a writer thread while the next one fills (so the disk's time
    overlaps the reading and decryption of what comes next); what is left over
    at the end (a file's last partial block, or everything on a file system
    without direct I/O) goes through the page cache."""

    STAGE = 4 << 20

    def __init__(self, fd: int, size: int, digest=None):
        """`digest` (a hashlib object), if given, is updated with every byte as it
        is written, in order, by the writer thread: a file without holes (a pack)
        is hashed a stage at a time, beside the caller."""
        self.fd = fd
        self.digest = digest
        self.direct = reopen_direct(fd) if size >= DIRECT_MIN else None
        self.stage = self.spare = self.lane = None
        if self.direct is not None:
            self.stage, self.spare = _take_stage(), _take_stage()
            self.lane = ThreadPoolExecutor(1, thread_name_prefix="direct-write")
        self.inflight = None   # the writer thread's job: one stage at a time
        self.start = 0         # file offset of stage[0]
        self.staged = 0

    def write(self, pos: int, piece) -> None:
        if self.stage is None:
            if self.digest is not None:
                self.digest.update(piece)
            _pwrite_all(self.fd, memoryview(piece), pos)
            return
        if pos != self.start + self.staged:   # after a hole
            self._flush()
            self.start = pos
        view = memoryview(piece)
        while view:
            take = min(len(view), self.STAGE - self.staged)
            self.stage[self.staged:self.staged + take] = view[:take]
            self.staged += take
            view = view[take:]
            if self.staged == self.STAGE:
                self._send()

    def _send(self) -> None:
        """Hand the full stage to the writer thread and fill the other one."""
        self._settle()
        self.inflight = self.lane.submit(self._write_out, self.stage, self.STAGE, self.start)
        self.stage, self.spare = self.spare, self.stage
        self.start += self.STAGE
        self.staged = 0

    def _settle(self) -> None:
        if self.inflight is not None:
            job, self.inflight = self.inflight, None
            job.result()

    def _write_out(self, buf, n: int, pos: int) -> None:
        """buf[:n] to the file at pos: whole blocks directly where the file system
        and the alignment allow, the rest through the page cache."""
        if self.digest is not None:
            self.digest.update(memoryview(buf)[:n])
        whole = n - n % ALIGN if pos % ALIGN == 0 and self.direct is not None else 0
        if whole:
            try:
                _pwrite_all(self.direct, memoryview(buf)[:whole], pos)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                os.close(self.direct)   # only this thread writes with it
                self.direct = None
                whole = 0
        if whole < n:
            _pwrite_all(self.fd, memoryview(buf)[whole:n], pos + whole)

    def _flush(self) -> None:
        self._settle()
        if self.staged:
            self._write_out(self.stage, self.staged, self.start)
            self.start += self.staged
            self.staged = 0

    def close(self) -> None:
        """Write what is staged; the caller closes its own fd."""
        if self.lane is None:
            return
        try:
            self._flush()
        finally:
            self._settle_quietly()
            self.lane.shutdown(wait=True)
            if self.direct is not None:
                os.close(self.direct)
                self.direct = None
            _give_stage(self.stage)
            _give_stage(self.spare)
            self.stage = self.spare = self.lane = None

    def _settle_quietly(self) -> None:
        """After a failure: the write in flight ends before its buffer goes."""
        if self.inflight is not None:
            wait([self.inflight])
            self.inflight = None


_spare_stages: list = []   # stages of closed writers, for the next (one per pack of a backup)
_spare_lock = threading.Lock()
SPARE_STAGES = 4


def _take_stage() -> mmap.mmap:
    """A stage, reused where one is spare: every page of a fresh one costs a page
    fault on first touch, which for a backup's packs cost as much as the page
    cache they bypass."""
    with _spare_lock:
        while _spare_stages:
            stage = _spare_stages.pop()
            if len(stage) == Writer.STAGE:   # (a test may change the size)
                return stage
    return buffer(Writer.STAGE)


def _give_stage(stage) -> None:
    with _spare_lock:
        if len(_spare_stages) < SPARE_STAGES and len(stage) == Writer.STAGE:
            _spare_stages.append(stage)


def _pwrite_all(fd: int, view: memoryview, pos: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], pos + done)
