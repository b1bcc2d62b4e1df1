"""The commit log: log/<seq>.commit, one file per atomic change of a volume.

    commit  = "IRONCMIT" || version u8 (=1) || 7 zero bytes || body || SHA-256(everything before)
    body    = one zstd frame holding a stream of msgpack maps (records)

The first record is the header ({"t": "commit", ...}), the last is
{"t": "end", "n": <records before it>}. Records stream in both directions, so a
snapshot of a million files is written and applied in bounded memory."""
import hashlib
import io
import os
import re

import msgpack
import zstandard

from ironfs.errors import CorruptData, VolumeFormatError
from ironfs.format.catalog import check_link_group, split_path
from ironfs.format.fsutil import discard, publish, raise_if_full, tmp_name

MAGIC = b"IRONCMIT"
VERSION = 1
HEADER = MAGIC + bytes((VERSION,)) + bytes(7)
TRAILER_LEN = 32
BATCH = 256 * 1024   # bytes of packed records handed to zstd at once
SEQ_DIGITS = 10
COMMIT_RE = re.compile(r"^(\d{%d})\.commit$" % SEQ_DIGITS)


def commit_name(seq: int) -> str:
    return f"{seq:0{SEQ_DIGITS}d}.commit"


def list_seqs(log_dir: str) -> list[int]:
    seqs = []
    for name in os.listdir(log_dir):
        m = COMMIT_RE.fullmatch(name)
        if m:
            seqs.append(int(m.group(1)))
    return sorted(seqs)


class _HashingWriter(io.RawIOBase):
    def __init__(self, f, h):
        self.f, self.h = f, h

    def writable(self):
        return True

    def write(self, b):
        self.h.update(b)
        return self.f.write(b)


class CommitWriter:
    """Streams records into a temporary file; `finish` publishes it as log/<seq>.commit.
    `on_batch`, if given, is handed each batch of packed records as it is
    written, the end record in the last (to apply the commit while it is written)."""

    def __init__(self, log_dir: str, seq: int, header: dict, on_batch=None):
        self.log_dir, self.seq = log_dir, seq
        self._on_batch = on_batch
        self.path = tmp_name(log_dir, f"commit-{seq}-")
        self._hash = hashlib.sha256()
        self._file = open(self.path, "wb")
        self._count = 0
        self._packer = msgpack.Packer(use_bin_type=True)
        self._pending = bytearray()
        try:
            self._raw = _HashingWriter(self._file, self._hash)
            self._raw.write(HEADER)
            self._zstd = zstandard.ZstdCompressor(level=3).stream_writer(self._raw, closefd=False)
        except OSError as exc:
            self.abort()
            raise_if_full(exc, "a commit")
        self.add(dict(header, t="commit", format=1, seq=seq))

    def add(self, record: dict) -> None:
        """Append a record; a path that could escape a folder, or a link group that is
        not a file's number, is refused before it is written."""
        if "p" in record:
            split_path(record["p"])
        if "h" in record:
            check_link_group(record)
        self._pending += self._packer.pack(record)
        self._count += 1
        if len(self._pending) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        """Records reach the compressor in batches: one call per record costs more than packing it."""
        try:
            self._zstd.write(self._pending)
        except OSError as exc:
            self.abort()
            raise_if_full(exc, "a commit")
        if self._on_batch is not None:
            self._on_batch(bytes(self._pending))
        self._pending = bytearray()

    def finish(self) -> str:
        final = os.path.join(self.log_dir, commit_name(self.seq))
        self._pending += self._packer.pack({"t": "end", "n": self._count})
        self._flush()
        try:
            self._zstd.close()
            self._file.write(self._hash.digest())
            self._file.close()
            if os.path.exists(final):
                raise VolumeFormatError(f"Commit {self.seq} already exists; another writer got there first.")
            publish(self.path, final)
        except OSError as exc:
            self.abort()
            raise_if_full(exc, "a commit")
        except BaseException:
            self.abort()
            raise
        return final

    def abort(self) -> None:
        discard(self._file, self.path)


class _LimitedHashingReader(io.RawIOBase):
    def __init__(self, f, limit, h):
        self.f, self.left, self.h = f, limit, h

    def readable(self):
        return True

    def readinto(self, b):
        if self.left <= 0:
            return 0
        n = self.f.readinto(memoryview(b)[: min(len(b), self.left)])
        self.h.update(memoryview(b)[:n])
        self.left -= n
        return n


def read_commit(path: str, label: str | None = None):
    """Yield the records of a commit. Raises CorruptData (possibly after some records)
    if the file is truncated, altered or malformed: apply inside a transaction.
    Messages name the file, or `label` (a commit held under a temporary name)."""
    name = label or os.path.basename(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < len(HEADER) + TRAILER_LEN:
            raise CorruptData(f"Commit {name} is truncated.")
        # Check the trailer before yielding any record: altered bytes often still decode,
        # and callers must never act on (or crash over) records of a damaged commit.
        h = hashlib.sha256()
        left = size - TRAILER_LEN
        while left > 0 and (chunk := f.read(min(left, 1 << 20))):
            h.update(chunk)
            left -= len(chunk)
        if left or f.read(TRAILER_LEN) != h.digest():
            raise CorruptData(f"Commit {name} fails its SHA-256 check.")
        f.seek(0)
        h = hashlib.sha256()
        body = _LimitedHashingReader(f, size - TRAILER_LEN, h)
        head = body.read(len(HEADER))
        if head[:8] != MAGIC:
            raise CorruptData(f"Commit {name} does not start with the commit magic.")
        if head[8] != VERSION:
            raise VolumeFormatError(f"Commit {name} has format version {head[8]}; this program reads version {VERSION}.")
        stream = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=False)
        unpacker = msgpack.Unpacker(stream, raw=False, max_buffer_size=64 << 20)
        count = 0
        ended = False
        try:
            for record in unpacker:
                if not isinstance(record, dict) or "t" not in record:
                    raise CorruptData(f"Commit {name} holds a malformed record.")
                if record["t"] == "end":
                    if record.get("n") != count:
                        raise CorruptData(f"Commit {name} is missing records.")
                    ended = True
                    break
                if count == 0 and record["t"] != "commit":
                    raise CorruptData(f"Commit {name} does not start with a header record.")
                count += 1
                yield record
        except (zstandard.ZstdError, msgpack.UnpackException, ValueError) as exc:
            raise CorruptData(f"Commit {name} cannot be decoded: {exc}") from None
        if not ended:
            raise CorruptData(f"Commit {name} ends before its end record.")
        while body.read(1 << 16):
            pass
        if f.read(TRAILER_LEN) != h.digest():
            raise CorruptData(f"Commit {name} fails its SHA-256 check.")


def read_trailer(path: str) -> tuple[int, bytes]:
    """(size, closing SHA-256) of a commit file, unchecked: what `Volume.check_log` compares."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return size, os.pread(f.fileno(), TRAILER_LEN, max(size - TRAILER_LEN, 0))


def read_header(path: str) -> dict:
    """The header record alone (no hash check)."""
    for record in read_commit(path):
        return record
    raise CorruptData(f"Commit {os.path.basename(path)} is empty.")
