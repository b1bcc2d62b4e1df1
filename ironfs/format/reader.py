"""Random access to one stored file version, for WebDAV and FUSE.

A content's extent map says which blob bytes make up which file bytes, so any
range is read without replaying deltas. Sequential readers get read-ahead (the
next blobs are fetched with the one asked for, in one coalesced read) and a
small cache of decrypted blobs, so memory stays bounded whatever the file's size.
Every blob is checked against its id as it is decrypted."""
import bisect
import io
import itertools
import threading
from collections import OrderedDict

from ironfs.errors import CorruptData

READ_AHEAD = 8      # blobs fetched together when a read needs a new one
CACHED_BLOBS = 16   # decrypted blobs kept per reader (at most 2 MiB)


class ContentReader(io.RawIOBase):
    def __init__(self, volume, content: dict):
        self.volume = volume
        self.extents = content["ext"]
        self.size = content["size"]
        self.starts = list(itertools.accumulate((e[2] for e in self.extents), initial=0))
        self.pos = 0
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._cache_lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer) -> int:
        data = self.read_at(self.pos, len(buffer))
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def read_at(self, offset: int, size: int) -> bytes:
        """`size` bytes from `offset`, fewer only where the file ends: the one place a
        byte range is mapped onto the extent map. A FUSE read that came back short
        would make the kernel believe the file ends there. It keeps no position, so
        concurrent reads of one open file (kernel read-ahead) cannot disturb each other."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        if end > self.starts[-1]:
            raise CorruptData(f"The extents of this file cover {self.starts[-1]} of its {self.size} bytes.")
        out = bytearray(end - offset)
        i = bisect.bisect_right(self.starts, offset) - 1
        pos = offset
        while pos < end:
            blob, blob_offset, length = self.extents[i]
            within = pos - self.starts[i]
            n = min(end - pos, length - within)
            if blob is not None:
                piece = self._blob(i)[blob_offset + within:blob_offset + within + n]
                if len(piece) != n:
                    raise CorruptData(f"Blob {blob.hex()} is shorter than its extent.")
                out[pos - offset:pos - offset + n] = piece
            pos += n
            i += 1
        return bytes(out)

    def _blob(self, index: int) -> bytes:
        blob = self.extents[index][0]
        with self._cache_lock:
            data = self._cache.get(blob)
            if data is not None:
                self._cache.move_to_end(blob)
                return data
            wanted = [blob]
            for b, _, _ in self.extents[index + 1:index + 1 + READ_AHEAD * 4]:
                if len(wanted) > READ_AHEAD:
                    break
                if b is not None and b not in self._cache and b not in wanted:
                    wanted.append(b)
        got = self.volume.read_blobs(wanted)
        if isinstance(got[blob], Exception):
            raise got[blob]
        with self._cache_lock:
            for b in wanted:
                if not isinstance(got[b], Exception):
                    self._cache[b] = got[b]
            while len(self._cache) > CACHED_BLOBS:
                self._cache.popitem(last=False)
        return got[blob]
