"""Pure-Python reference of the delta encoder, and the framework both
implementations share.

`ironfs.format.delta` is the module to import: it picks the C kernel
(``ironfs._native``) or this one.  This module is complete on its own
(``IMPLEMENTATION = "python"``) and is what the tests compare the C kernel
against: for the same inputs both give byte-identical signatures and
identical op lists.

Everything except the two kernels is shared: `SignatureBuilder`, `Encoder`,
the file readers and the stitching of parallel segments take a *kernel*
(``_PyKernel`` here, ``_NativeKernel`` in delta.py) that provides
``sig_records(data, block_size)`` and ``scanner(sig, start, limit)``.
See `ironfs.format.delta` for the formats and the matching rule.
"""

from __future__ import annotations

import hashlib
import os
import struct
from concurrent.futures import ThreadPoolExecutor

IMPLEMENTATION = "python"

COPY = 0
LITERAL = 1

#: Longest literal op.  Also bounds what a scan must keep buffered.
LITERAL_MAX = 1 << 20
#: Largest block size accepted (the "Auto" table tops out at 64 KiB).
BLOCK_MAX = 1 << 20
#: Default read size of encode_file / signature_file per thread.
CHUNK_SIZE = 4 << 20

WEAK_MULT = 0x9E3779B1
_MASK32 = 0xFFFFFFFF

SIG_MAGIC = b"ICDS"
SIG_VERSION = 1
_SIG_HEADER = struct.Struct("<4sHHIQ")  # magic, version, reserved (0), block_size, file_size
SIG_HEADER_SIZE = _SIG_HEADER.size  # 20
SIG_RECORD_SIZE = 20  # weak u32 LE || strong 16 bytes
_RECORD = struct.Struct("<I16s")

_MiB = 1 << 20
_GiB = 1 << 30
# The product FAQ's "Auto" table: (files smaller than this, block size).
_AUTO_TABLE = ((500 * _MiB, 4096), (2 * _GiB, 8192), (8 * _GiB, 16384), (15 * _GiB, 32768))


class FileChangedError(OSError):
    """The file shrank or was replaced while it was being read."""


def block_size_for(file_size: int) -> int:
    """Block size for a file of this many bytes (the FAQ's "Auto" table)."""
    if file_size < 0:
        raise ValueError(f"file size must not be negative, got {file_size}")
    for bound, bs in _AUTO_TABLE:
        if file_size < bound:
            return bs
    return 65536


def _check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block size must be an int, got {type(block_size).__name__}")
    if not 1 <= block_size <= BLOCK_MAX:
        raise ValueError(f"block size must be between 1 and {BLOCK_MAX}, got {block_size}")
    return block_size


def _as_bytes_view(buf) -> memoryview:
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def weak_sum(data) -> int:
    """The weak checksum of a whole buffer (see the delta module docstring)."""
    h = 0
    for x in _as_bytes_view(data):
        h = (h * WEAK_MULT + x + 1) & _MASK32
    return h


def strong_hash(data) -> bytes:
    """BLAKE2b with a 16-byte digest, unkeyed."""
    return hashlib.blake2b(data, digest_size=16).digest()


class Signature:
    """Weak and strong checksums of each block of an old file.

    ``block_count`` is ``ceil(file_size / block_size)``; the last block may be
    short.  Immutable; equal when block size, file size and records agree.
    """

    __slots__ = ("block_size", "file_size", "block_count", "_records", "_cache")

    def __init__(self, block_size: int, file_size: int, records: bytes):
        _check_block_size(block_size)
        if file_size < 0:
            raise ValueError(f"file size must not be negative, got {file_size}")
        count = -(-file_size // block_size)
        if len(records) != count * SIG_RECORD_SIZE:
            raise ValueError(
                f"signature records: {count} blocks need {count * SIG_RECORD_SIZE} bytes, got {len(records)}"
            )
        self.block_size = block_size
        self.file_size = file_size
        self.block_count = count
        self._records = bytes(records)
        self._cache = {}  # kernel name -> prepared lookup structure

    def to_bytes(self) -> bytes:
        header = _SIG_HEADER.pack(SIG_MAGIC, SIG_VERSION, 0, self.block_size, self.file_size)
        return header + self._records

    @classmethod
    def from_bytes(cls, b) -> "Signature":
        data = bytes(b)
        if len(data) < SIG_HEADER_SIZE:
            raise ValueError(
                f"delta signature truncated: the header needs {SIG_HEADER_SIZE} bytes, got {len(data)}"
            )
        magic, version, reserved, block_size, file_size = _SIG_HEADER.unpack_from(data)
        if magic != SIG_MAGIC:
            raise ValueError(f"not a delta signature: magic is {magic!r}, expected {SIG_MAGIC!r}")
        if version != SIG_VERSION:
            raise ValueError(f"delta signature version {version} is not supported (this reader knows {SIG_VERSION})")
        if reserved != 0:
            raise ValueError(f"delta signature header: reserved field must be 0, got {reserved}")
        if not 1 <= block_size <= BLOCK_MAX:
            raise ValueError(f"delta signature: block size {block_size} out of range 1..{BLOCK_MAX}")
        count = -(-file_size // block_size)
        want = SIG_HEADER_SIZE + count * SIG_RECORD_SIZE
        if len(data) < want:
            raise ValueError(
                f"delta signature truncated: {count} blocks need {want} bytes, got {len(data)}"
            )
        if len(data) > want:
            raise ValueError(
                f"delta signature has {len(data) - want} trailing bytes after its {count} blocks"
            )
        return cls(block_size, file_size, data[SIG_HEADER_SIZE:])

    @property
    def records(self) -> bytes:
        """The per-block records (weak u32 || strong 16) without the header; the
        records of block-aligned pieces of a file concatenate to the file's."""
        return self._records

    def blocks(self):
        """Yield (weak, strong) per block, in order."""
        return _RECORD.iter_unpack(self._records)

    def __eq__(self, other):
        if not isinstance(other, Signature):
            return NotImplemented
        return (self.block_size, self.file_size, self._records) == (
            other.block_size,
            other.file_size,
            other._records,
        )

    def __hash__(self):
        return hash((self.block_size, self.file_size, self._records))

    def __repr__(self):
        return f"Signature(block_size={self.block_size}, file_size={self.file_size}, block_count={self.block_count})"


# ---- the pure-Python kernel ---------------------------------------------


class _PyIndex:
    """Lookup structure over a signature: weak -> full block indexes, ascending."""

    def __init__(self, sig: Signature):
        bs = sig.block_size
        self.bs = bs
        self.nfull = sig.file_size // bs
        self.short_len = sig.file_size % bs
        weaks = []
        strongs = []
        for w, s in sig.blocks():
            weaks.append(w)
            strongs.append(s)
        self.strong = strongs
        table = {}
        for i in range(self.nfull):
            table.setdefault(weaks[i], []).append(i)
        self.table = {w: tuple(ix) for w, ix in table.items()}
        self.short_weak = weaks[self.nfull] if self.short_len else None
        mn = pow(WEAK_MULT, bs, 1 << 32)
        self.outtab = [((x + 1) * mn) & _MASK32 for x in range(256)]


class _PyScanner:
    """One scan of new data (the matching rule is in the delta module docstring).

    `scan` takes a buffer holding new data ``[base, base + length)`` and
    returns raw ops: ``(COPY, old_offset, length)`` or ``(LITERAL,
    new_offset, length)``; the caller slices literal bytes out of its buffer.
    """

    def __init__(self, ix: _PyIndex, start: int, limit: int | None):
        self._ix = ix
        self._pos = start
        self._lit_start = start
        self._limit = limit
        self._copy_off = 0
        self._copy_len = 0
        self._delta = None  # old offset - new offset of the last match
        self._h = None  # weak sum of the window at _pos, if known
        self._seen_end = start
        self._finished = False

    @property
    def keep_from(self) -> int:
        return self._lit_start

    def _flush_copy(self, ops):
        if self._copy_len:
            ops.append((COPY, self._copy_off, self._copy_len))
            self._copy_len = 0

    def _flush_literal(self, ops, upto):
        if upto <= self._lit_start:
            return
        self._flush_copy(ops)
        while self._lit_start < upto:
            n = min(upto - self._lit_start, LITERAL_MAX)
            ops.append((LITERAL, self._lit_start, n))
            self._lit_start += n

    def _take_match(self, ops, p, blk, length):
        off = blk * self._ix.bs
        self._flush_literal(ops, p)
        if self._copy_len and self._copy_off + self._copy_len == off:
            self._copy_len += length
        else:
            self._flush_copy(ops)
            self._copy_off = off
            self._copy_len = length
        self._pos = self._lit_start = p + length
        self._delta = off - p
        self._h = None

    def scan(self, buf, length: int, base: int, final: bool) -> list:
        end = base + length
        if base > self._lit_start or end < self._seen_end:
            raise ValueError("delta scan: buffer does not cover the pending data")
        ops = []
        if self._finished:
            return ops
        self._seen_end = end
        ix = self._ix
        bs = ix.bs
        nfull = ix.nfull
        table = ix.table
        strongs = ix.strong
        outtab = ix.outtab
        mv = _as_bytes_view(buf)
        limit = self._limit if self._limit is not None else end + 1
        blake2b = hashlib.blake2b
        mult = WEAK_MULT

        while True:
            p = self._pos
            if p >= limit or end - p < bs:
                break
            i = p - base
            window = mv[i : i + bs]
            strong = None
            blk = -1
            # Rule 1: the block that keeps the last match's alignment.
            if self._delta is not None:
                q = p + self._delta
                if q >= 0 and q % bs == 0 and q // bs < nfull:
                    strong = blake2b(window, digest_size=16).digest()
                    if strong == strongs[q // bs]:
                        blk = q // bs
            # Rule 2: full blocks with this weak sum, ascending.
            if blk < 0:
                if self._h is None:
                    self._h = weak_sum(window)
                cands = table.get(self._h)
                if cands:
                    if strong is None:
                        strong = blake2b(window, digest_size=16).digest()
                    for c in cands:
                        if strongs[c] == strong:
                            blk = c
                            break
            if blk >= 0:
                self._take_match(ops, p, blk, bs)
                continue
            # Rule 3: byte p is literal; slide.
            self._flush_copy(ops)
            if end - p == bs:
                break
            stop = min(end - bs, limit, self._lit_start + LITERAL_MAX)
            if self._delta is not None:
                stop = min(stop, p + (bs - (p + self._delta) % bs))
            h = self._h
            while True:
                h = (h * mult + mv[i + bs] + 1 - outtab[mv[i]]) & _MASK32
                i += 1
                p += 1
                if p >= stop or h in table:
                    break
            self._h = h
            self._pos = p
            if p - self._lit_start == LITERAL_MAX:
                self._flush_literal(ops, p)

        if not final:
            return ops
        if self._limit is None:
            r = ix.short_len
            if r and end - self._pos >= r:
                s = end - r
                tail = mv[s - base : length]
                if weak_sum(tail) == ix.short_weak and strong_hash(tail) == strongs[nfull]:
                    self._take_match(ops, s, nfull, r)
            self._flush_literal(ops, end)
            self._pos = end
        else:
            t = max(self._pos, min(self._limit, end))
            self._flush_literal(ops, t)
            self._pos = t
        self._flush_copy(ops)
        self._finished = True
        return ops


class _PyKernel:
    name = "python"

    def weak(self, data) -> int:
        return weak_sum(data)

    def strong(self, data) -> bytes:
        return strong_hash(data)

    def sig_records(self, data, block_size: int) -> bytes:
        view = _as_bytes_view(data)
        pack = _RECORD.pack
        out = []
        for off in range(0, len(view), block_size):
            block = view[off : off + block_size]
            out.append(pack(weak_sum(block), strong_hash(block)))
        return b"".join(out)

    def prepare(self, sig: Signature):
        ix = sig._cache.get(self.name)
        if ix is None:
            ix = sig._cache[self.name] = _PyIndex(sig)
        return ix

    def scanner(self, sig: Signature, start: int, limit: int | None) -> _PyScanner:
        return _PyScanner(self.prepare(sig), start, limit)


_PY_KERNEL = _PyKernel()
_kernel = _PY_KERNEL  # the same attribute as on delta.implementation("native")


# ---- shared framework ----------------------------------------------------


def _materialize(raw, view, base):
    """Turn raw ops into API ops, slicing literal bytes out of view."""
    out = []
    for kind, a, b in raw:
        if kind == COPY:
            out.append((COPY, a, b))
        else:
            out.append((LITERAL, bytes(view[a - base : a - base + b])))
    return out


class SignatureBuilder:
    """Streaming signature: feed the old file in chunks of any size."""

    _kernel = _PY_KERNEL

    def __init__(self, block_size: int):
        self._bs = _check_block_size(block_size)
        self._pending = bytearray()
        self._parts = []
        self._size = 0
        self._done = False

    def update(self, buf) -> None:
        if self._done:
            raise ValueError("SignatureBuilder.update() after finish()")
        view = _as_bytes_view(buf)
        bs = self._bs
        self._size += len(view)
        if self._pending:
            take = min(bs - len(self._pending), len(view))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) == bs:
                self._parts.append(self._kernel.sig_records(self._pending, bs))
                self._pending = bytearray()
        full = len(view) - len(view) % bs
        if full:
            self._parts.append(self._kernel.sig_records(view[:full], bs))
        self._pending += view[full:]

    def finish(self) -> Signature:
        if self._done:
            raise ValueError("SignatureBuilder.finish() called twice")
        self._done = True
        if self._pending:
            self._parts.append(self._kernel.sig_records(self._pending, self._bs))
            self._pending = bytearray()
        return Signature(self._bs, self._size, b"".join(self._parts))


class Encoder:
    """Streaming delta of new data against an old file's signature.

    ``feed`` returns the ops decided so far.  It holds back the window not yet
    decided (under one block), the literal run still growing (under
    LITERAL_MAX bytes) and the last copy (it may still be extended), so the
    concatenation of all returned lists does not depend on how the data was
    cut into chunks.
    """

    _kernel = _PY_KERNEL

    def __init__(self, sig: Signature):
        if not isinstance(sig, Signature):
            raise TypeError(f"Encoder needs a Signature, got {type(sig).__name__}")
        self._scanner = self._kernel.scanner(sig, 0, None)
        self._buf = bytearray()
        self._base = 0
        self._done = False

    def _run(self, final: bool) -> list:
        raw = self._scanner.scan(self._buf, len(self._buf), self._base, final)
        ops = _materialize(raw, self._buf, self._base)
        keep = self._scanner.keep_from
        del self._buf[: keep - self._base]
        self._base = keep
        return ops

    def feed(self, buf) -> list:
        if self._done:
            raise ValueError("Encoder.feed() after finish()")
        self._buf += _as_bytes_view(buf)
        return self._run(False)

    def finish(self) -> list:
        if self._done:
            raise ValueError("Encoder.finish() called twice")
        self._done = True
        ops = self._run(True)
        self._buf = bytearray()
        return ops


def _signature(kernel, data, block_size: int) -> Signature:
    _check_block_size(block_size)
    view = _as_bytes_view(data)
    return Signature(block_size, len(view), kernel.sig_records(view, block_size))


def _encode(kernel, sig: Signature, data) -> list:
    if not isinstance(sig, Signature):
        raise TypeError(f"encode needs a Signature, got {type(sig).__name__}")
    view = _as_bytes_view(data)
    scanner = kernel.scanner(sig, 0, None)
    return _materialize(scanner.scan(view, len(view), 0, True), view, 0)


def _read_into(f, view) -> int:
    """Fill view from f's current position; fewer bytes only at end of file."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _run_parallel(fn, count: int) -> list:
    if count == 1:
        return [fn(0)]
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="ironfs-delta") as pool:
        return list(pool.map(fn, range(count)))


def _signature_file(kernel, path, block_size: int, threads: int, chunk_size: int) -> Signature:
    bs = _check_block_size(block_size)
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
    nblocks = -(-size // bs)
    segments = max(1, min(threads, nblocks))
    bounds = [k * nblocks // segments for k in range(segments + 1)]
    chunk_blocks = max(1, chunk_size // bs)

    def work(k):
        first, stop = bounds[k], bounds[k + 1]
        parts = []
        buf = bytearray(min(chunk_blocks, max(1, stop - first)) * bs)
        view = memoryview(buf)
        with open(path, "rb", buffering=0) as f:
            blk = first
            f.seek(blk * bs)
            while blk < stop:
                n = min(chunk_blocks, stop - blk)
                want = min(n * bs, size - blk * bs)
                got = _read_into(f, view[:want])
                if got != want:
                    raise FileChangedError(f"{os.fspath(path)}: file shrank while its signature was taken")
                parts.append(kernel.sig_records(view[:want], bs))
                blk += n
        return b"".join(parts)

    return Signature(bs, size, b"".join(_run_parallel(work, segments)))


def _scan_range(kernel, sig, path, start, stop, limit, chunk_size):
    """Scan new data [start, stop) of a file; returns (ops, end of coverage)."""
    bs = sig.block_size
    scanner = kernel.scanner(sig, start, limit)
    # What a scan leaves to keep is under LITERAL_MAX + bs bytes.
    buf = bytearray(chunk_size + LITERAL_MAX + bs)
    view = memoryview(buf)
    ops = []
    base = start
    valid = 0
    pos = start
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while True:
            want = min(chunk_size, stop - pos)
            got = _read_into(f, view[valid : valid + want]) if want > 0 else 0
            pos += got
            valid += got
            final = pos >= stop or got < want
            raw = scanner.scan(buf, valid, base, final)
            ops.extend(_materialize(raw, view, base))
            if final:
                return ops, scanner.keep_from
            drop = scanner.keep_from - base
            view[: valid - drop] = view[drop:valid]
            valid -= drop
            base += drop


def _append_op(out: list, op) -> None:
    """Append op, merging contiguous copies and filling literal runs to LITERAL_MAX."""
    if out:
        last = out[-1]
        if op[0] == COPY and last[0] == COPY and last[1] + last[2] == op[1]:
            out[-1] = (COPY, last[1], last[2] + op[2])
            return
        if op[0] == LITERAL and last[0] == LITERAL and len(last[1]) < LITERAL_MAX:
            joined = last[1] + op[1]
            out[-1] = (LITERAL, joined[:LITERAL_MAX])
            if len(joined) > LITERAL_MAX:
                out.append((LITERAL, joined[LITERAL_MAX:]))
            return
    out.append(op)


def _op_len(op) -> int:
    return op[2] if op[0] == COPY else len(op[1])


def _stitch(path, starts, results) -> list:
    """Join segment op lists; segment k may cover past the start of k+1."""
    out = []
    covered = starts[0]
    for start, (ops, end) in zip(starts, results):
        if not ops:
            continue
        if start > covered:
            raise FileChangedError(f"{os.fspath(path)}: file shrank while it was being encoded")
        skip = covered - start
        for op in ops:
            n = _op_len(op)
            if skip >= n:
                skip -= n
                continue
            if skip:
                op = (COPY, op[1] + skip, op[2] - skip) if op[0] == COPY else (LITERAL, op[1][skip:])
                skip = 0
            _append_op(out, op)
        covered = max(covered, end)
    return out


def _encode_file(kernel, sig: Signature, path, threads: int, chunk_size: int) -> list:
    if not isinstance(sig, Signature):
        raise TypeError(f"encode_file needs a Signature, got {type(sig).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if chunk_size < 1:
        raise ValueError(f"chunk size must be positive, got {chunk_size}")
    bs = sig.block_size
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
    # Every segment at least one block long, so that segment k's look-ahead
    # (bs - 1 bytes past its limit) never runs past segment k + 1.
    segments = max(1, min(threads, size // bs))
    starts = [k * size // segments for k in range(segments)]
    kernel.prepare(sig)  # build the lookup structure once, before the threads

    def work(k):
        start = starts[k]
        if k + 1 < segments:
            limit = starts[k + 1]
            return _scan_range(kernel, sig, path, start, min(size, limit + bs - 1), limit, chunk_size)
        return _scan_range(kernel, sig, path, start, size, None, chunk_size)

    return _stitch(path, starts, _run_parallel(work, segments))


def apply(old, ops) -> bytes:
    """Rebuild the new data from the old data and an op list (reference patcher)."""
    old_view = _as_bytes_view(old)
    out = bytearray()
    for op in ops:
        if op[0] == COPY:
            _, off, n = op
            if off < 0 or n < 0 or off + n > len(old_view):
                raise ValueError(f"copy op ({off}, {n}) reaches past the old data ({len(old_view)} bytes)")
            out += old_view[off : off + n]
        elif op[0] == LITERAL:
            out += op[1]
        else:
            raise ValueError(f"unknown delta op kind {op[0]!r}")
    return bytes(out)


# ---- the public API bound to the pure kernel -----------------------------


def signature(data, block_size: int) -> Signature:
    """Signature of a whole buffer."""
    return _signature(_PY_KERNEL, data, block_size)


def encode(sig: Signature, data) -> list:
    """Ops that rebuild data from the old file that sig describes."""
    return _encode(_PY_KERNEL, sig, data)


def encode_file(sig: Signature, path, threads: int = 2, *, chunk_size: int = CHUNK_SIZE) -> list:
    """Ops for a file, read in chunks, its segments scanned in threads."""
    return _encode_file(_PY_KERNEL, sig, path, threads, chunk_size)


def signature_file(path, block_size: int, threads: int = 2, *, chunk_size: int = CHUNK_SIZE) -> Signature:
    """Signature of a file, read in chunks, block-aligned segments in threads."""
    return _signature_file(_PY_KERNEL, path, block_size, threads, chunk_size)
