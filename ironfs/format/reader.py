"""Random access to one stored file version, for WebDAV and FUSE.

A content's extent map says which blob bytes make up which file bytes, so any
range is read without replaying deltas. Sequential readers get read-ahead (the
next blobs are fetched with the one asked for, in one coalesced read) and a
small cache of decrypted blobs, so memory stays bounded whatever the file's size.
Every blob is checked against its id as it is decrypted."""
import bisect
import io
import itertools
from collections import OrderedDict

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
        if self.pos >= self.size or not len(buffer):
            return 0
        i = bisect.bisect_right(self.starts, self.pos) - 1
        blob, offset, length = self.extents[i]
        within = self.pos - self.starts[i]
        n = min(len(buffer), length - within)
        if blob is None:
            buffer[:n] = bytes(n)
        else:
            data = self._blob(i)
            piece = data[offset + within:offset + within + n]
            if len(piece) != n:
                raise OSError(f"blob {blob.hex()} is shorter than its extent")
            buffer[:n] = piece
        self.pos += n
        return n

    def _blob(self, index: int) -> bytes:
        blob = self.extents[index][0]
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
        for b in wanted:
            if not isinstance(got[b], Exception):
                self._cache[b] = got[b]
        while len(self._cache) > CACHED_BLOBS:
            self._cache.popitem(last=False)
        return got[blob]
