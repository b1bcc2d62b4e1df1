"""Packs: immutable files of sealed blobs followed by a plain index trailer.

    pack    = header || blob* || index || footer
    header  = "IRONPACK" || version u8 (=1) || 7 zero bytes            (16 bytes)
    entry   = blob id (16) || type u8 || offset u64 LE || length u32 LE || raw length u32 LE   (33 bytes)
    footer  = entry count u32 LE || "IRONPIDX"                          (12 bytes)

The index is plain so that a server, a replica or gc can work without any key;
the pack's name is the SHA-256 of all its bytes, so a copy is checked by name."""
import hashlib
import os
import struct
from collections import deque
from dataclasses import dataclass

from ironfs.errors import CorruptData
from ironfs.format import directio
from ironfs.format.fsutil import discard, publish, raise_if_full, tmp_name

MAGIC = b"IRONPACK"
INDEX_MAGIC = b"IRONPIDX"
VERSION = 1
HEADER = MAGIC + bytes((VERSION,)) + bytes(7)
ENTRY = struct.Struct("<16sBQII")
FOOTER = struct.Struct("<I8s")

BLOB_DATA = 0
BLOB_SIGNATURE = 1


@dataclass(frozen=True)
class IndexEntry:
    blob_id: bytes
    type: int
    offset: int
    length: int
    raw_length: int


def pack_relpath(name: str) -> str:
    return os.path.join("packs", name[:2], name)


class PackWriter:
    """Appends sealed blobs to a temporary file; `finish` publishes it under its hash.

    With a `lane` (a one-thread executor) the writes and the SHA-256 run there, in
    order, beside the caller; at most LANE_DEPTH writes wait in it."""

    LANE_DEPTH = 8
    BATCH = 1 << 20   # bytes handed to the lane at once

    def __init__(self, packs_dir: str, lane=None):
        self.packs_dir = packs_dir
        self.path = tmp_name(packs_dir, "pack-")
        self.entries: list[IndexEntry] = []
        self._hash = hashlib.sha256()
        self._file = open(self.path, "wb")
        self._lane = lane
        # The lane writes past the page cache (ironfs.format.directio): on the
        # disks measured, buffered writes and their fsync ran at a third of the
        # disk's speed, which held a whole backup back.
        self._direct = (directio.Writer(self._file.fileno(), directio.DIRECT_MIN, digest=self._hash)
                        if lane is not None else None)
        self._written = 0
        self._queued = deque()
        self._batch: list[bytes] = []
        self._batched = 0
        self.size = 0
        self._write(HEADER)

    def _append(self, data) -> None:
        self._file.write(data)
        self._hash.update(data)

    def _append_many(self, pieces: list) -> None:
        """The lane's write of a batch (the direct writer hashes it)."""
        for piece in pieces:
            self._direct.write(self._written, piece)
            self._written += len(piece)

    def _write(self, data, flush: bool = False) -> None:
        self.size += len(data)
        try:
            if self._lane is None:
                self._append(data)
                return
            self._batch.append(data)
            self._batched += len(data)
            if self._batched >= self.BATCH or flush:
                self._send_batch()
        except OSError as exc:
            self.abort()
            raise_if_full(exc, "a pack")

    def _send_batch(self) -> None:
        batch, self._batch, self._batched = self._batch, [], 0
        self._queued.append(self._lane.submit(self._append_many, batch))
        while len(self._queued) > self.LANE_DEPTH:
            self._queued.popleft().result()

    def send(self):
        """Hand every blob added so far to the lane now. Returns the future of the
        lane's last write, done once they are all written (so buffers lent to
        `add` may be reused), or None when none waits."""
        if self._lane is None:
            return None
        if self._batch:
            try:
                self._send_batch()
            except OSError as exc:
                self.abort()
                raise_if_full(exc, "a pack")
        return self._queued[-1] if self._queued else None

    def _drain(self) -> None:
        try:
            while self._queued:
                self._queued.popleft().result()
        except OSError as exc:
            self.abort()
            raise_if_full(exc, "a pack")

    def add(self, blob_id: bytes, blob_type: int, sealed, raw_length: int) -> None:
        """Append a sealed blob (any buffer). With a lane it is written later:
        the buffer must stay as it is until the future `send` returns is done."""
        self.entries.append(IndexEntry(blob_id, blob_type, self.size, len(sealed), raw_length))
        self._write(sealed)

    def finish(self) -> tuple[str, int]:
        """Write the index, publish the pack; return (name, size)."""
        index = b"".join(ENTRY.pack(e.blob_id, e.type, e.offset, e.length, e.raw_length) for e in self.entries)
        self._write(index)
        self._write(FOOTER.pack(len(self.entries), INDEX_MAGIC), flush=True)
        self._drain()
        try:
            self._close_direct()
            self._file.close()
            name = self._hash.hexdigest()
            final_dir = os.path.join(self.packs_dir, name[:2])
            os.makedirs(final_dir, exist_ok=True)
            publish(self.path, os.path.join(final_dir, name))
        except OSError as exc:
            self.abort()
            raise_if_full(exc, "a pack")
        return name, self.size

    def abort(self) -> None:
        for fut in self._queued:
            fut.cancel()
        for fut in self._queued:
            if not fut.cancelled():
                fut.exception()   # wait: the file must not be written after it is removed
        self._queued.clear()
        try:
            self._close_direct()
        except OSError:
            pass   # the file goes anyway
        discard(self._file, self.path)

    def _close_direct(self) -> None:
        """Write out what the direct writer holds and stop its thread."""
        if self._direct is not None:
            direct, self._direct = self._direct, None
            direct.close()


def parse_index(tail: bytes, pack_size: int, name: str = "?") -> list[IndexEntry]:
    """Parse the index from the last bytes of a pack (which must include the whole index)."""
    if len(tail) < FOOTER.size:
        raise CorruptData(f"Pack {name} is too short to hold an index.")
    count, magic = FOOTER.unpack(tail[-FOOTER.size:])
    if magic != INDEX_MAGIC:
        raise CorruptData(f"Pack {name} has no index trailer.")
    index_len = count * ENTRY.size
    index_start = pack_size - FOOTER.size - index_len
    if index_start < len(HEADER) or len(tail) < FOOTER.size + index_len:
        raise CorruptData(f"Pack {name} has an index that does not fit the pack.")
    raw = tail[len(tail) - FOOTER.size - index_len: len(tail) - FOOTER.size]
    entries = []
    for fields in ENTRY.iter_unpack(raw):
        entry = IndexEntry(*fields)
        if entry.offset < len(HEADER) or entry.offset + entry.length > index_start:
            raise CorruptData(f"Pack {name} has an index entry outside its blob area.")
        entries.append(entry)
    return entries


def read_index(path: str) -> list[IndexEntry]:
    name = os.path.basename(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < len(HEADER) + FOOTER.size:
            raise CorruptData(f"Pack {name} is too short.")
        f.seek(size - FOOTER.size)
        count, magic = FOOTER.unpack(f.read(FOOTER.size))
        if magic != INDEX_MAGIC:
            raise CorruptData(f"Pack {name} has no index trailer.")
        want = FOOTER.size + count * ENTRY.size
        if want > size - len(HEADER):
            raise CorruptData(f"Pack {name} has an index that does not fit the pack.")
        f.seek(size - want)
        tail = f.read(want)
        f.seek(0)
        if f.read(len(HEADER)) != HEADER:
            raise CorruptData(f"Pack {name} has a bad header.")
    return parse_index(tail, size, name)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
