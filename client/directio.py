"""Large files are read (backup) and written (restore) past the page cache.

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
                got = _fill(self.direct, offset, view[:align_up(length)], direct=True)
                return min(got, length)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._give_up_direct()
        return _fill(self.fd, offset, view[:length], direct=False)

    def _give_up_direct(self) -> None:
        os.close(self.direct)
        self.direct = None

    def close(self) -> None:
        if self.direct is not None:
            self._give_up_direct()


def _fill(fd: int, offset: int, view: memoryview, direct: bool) -> int:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0 or (direct and n % ALIGN):   # a direct read comes back short only at the end
            return got + n
        got += n
    return got


class Writer:
    """Writes one file front to back, holes skipped. If it is large, data is
    gathered in an aligned buffer and written past the page cache in whole
    blocks; what is left over (a file's last partial block, or everything on a
    file system without direct I/O) goes through the page cache."""

    STAGE = 4 << 20

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.direct = reopen_direct(fd) if size >= DIRECT_MIN else None
        self.stage = buffer(self.STAGE) if self.direct is not None else None
        self.start = 0     # file offset of stage[0]
        self.staged = 0

    def write(self, pos: int, piece) -> None:
        if self.stage is None:
            _pwrite_all(self.fd, memoryview(piece), pos)
            return
        if pos != self.start + self.staged:   # after a hole
            self._flush(final=True)
            self.start = pos
        view = memoryview(piece)
        while view:
            take = min(len(view), self.STAGE - self.staged)
            self.stage[self.staged:self.staged + take] = view[:take]
            self.staged += take
            view = view[take:]
            if self.staged == self.STAGE:
                self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Write the staged bytes: whole blocks directly, the rest (with `final`, or
        when direct I/O cannot take it) through the page cache; any bytes left
        unwritten move to the front of the stage."""
        n = self.staged
        whole = n - n % ALIGN if self.start % ALIGN == 0 else 0
        written = 0
        if whole and self.direct is not None:
            try:
                _pwrite_all(self.direct, memoryview(self.stage)[:whole], self.start)
                written = whole
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                os.close(self.direct)
                self.direct = None
        if final or written == 0:
            _pwrite_all(self.fd, memoryview(self.stage)[written:n], self.start + written)
            written = n
        self.stage[:n - written] = self.stage[written:n]
        self.start += written
        self.staged = n - written

    def close(self) -> None:
        """Write what is staged; the caller closes its own fd."""
        try:
            if self.stage is not None:
                self._flush(final=True)
        finally:
            if self.direct is not None:
                os.close(self.direct)
                self.direct = None
            if self.stage is not None:
                self.stage.close()
                self.stage = None


def _pwrite_all(fd: int, view: memoryview, pos: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], pos + done)
