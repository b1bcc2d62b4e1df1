"""Content ids: the identity of a file's bytes, computed over the 128 KiB grid.

    content id = BLAKE3-256(size u64 LE || id(chunk 0) || id(chunk 1) || ...,
                            key = content_key)
    chunk i    = bytes [i*G, min((i+1)*G, size)),  G = 131072
    id(chunk)  = the blob id of those bytes

Defined this way, a file stored whole in grid-aligned blobs gets its content id
from blob ids that were computed anyway, and a restore checks such a file from
ids that decryption already verified: the whole file is never hashed twice."""
import functools
import struct

from blake3 import blake3

GRID = 128 * 1024


class ContentHasher:
    """Feed a file's bytes in order, as raw data, known chunk ids or zeros."""

    def __init__(self, key, grid: int = GRID, start: int = 0):
        """`start`: the file offset of the first byte fed, a grid boundary (a part
        of a file checked on its own; see chunk_ids)."""
        self.key = key
        self.grid = grid
        self.ids: list[bytes] = []
        self._buf = bytearray()
        self.size = start

    @property
    def at_boundary(self) -> bool:
        return not self._buf

    def update(self, data) -> None:
        view = memoryview(data)
        self.size += len(view)
        if self._buf:
            take = min(self.grid - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self.grid:
                self.ids.append(self.key.blob_id(self._buf))
                self._buf = bytearray()
        while len(view) >= self.grid:
            self.ids.append(self.key.blob_id(view[:self.grid]))
            view = view[self.grid:]
        if len(view):
            self._buf += view

    def add_chunk(self, chunk_id: bytes, length: int) -> None:
        """A whole grid chunk (or the short last one) whose id is known."""
        if self._buf:
            raise ValueError("add_chunk between grid boundaries")
        self.ids.append(chunk_id)
        self.size += length

    def add_extent(self, blob_id: bytes | None, offset: int, piece, blob_length: int, file_size: int) -> None:
        """One extent's bytes (`piece`) of the content being checked. A whole blob that
        fills a grid chunk counts by its id, which decryption already verified."""
        if blob_id is None:
            self.add_zeros(len(piece))
        elif (self.size % self.grid == 0 and offset == 0 and len(piece) == blob_length
              and (blob_length == self.grid or self.size + blob_length == file_size)):
            self.add_chunk(blob_id, blob_length)
        else:
            self.update(piece)

    def add_zeros(self, length: int) -> None:
        while length:
            if not self._buf and length >= self.grid:
                self.ids.append(self._zero_id(self.grid))
                self.size += self.grid
                length -= self.grid
            else:
                n = min(length, self.grid - len(self._buf))
                self.update(bytes(n))
                length -= n

    def _zero_id(self, n: int) -> bytes:
        return _zero_chunk_id(self.key, n)

    def chunk_ids(self) -> list[bytes]:
        """The ids of the chunks fed so far, the last one short if it ends the file."""
        return self.ids + ([self.key.blob_id(self._buf)] if self._buf else [])

    def digest(self) -> bytes:
        return content_digest(self.key, self.size, self.chunk_ids())


def content_digest(key, size: int, ids: list[bytes]) -> bytes:
    """The content id of a file of `size` bytes from the ids of its grid chunks."""
    return blake3(struct.pack("<Q", size) + b"".join(ids), key=key.content_key).digest(32)


@functools.lru_cache(maxsize=8)
def _zero_chunk_id(key, n: int) -> bytes:
    return key.blob_id(bytes(n))


def content_id(key, data) -> bytes:
    h = ContentHasher(key)
    h.update(data)
    return h.digest()
