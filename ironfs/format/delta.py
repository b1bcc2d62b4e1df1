"""Delta encoder: block signatures of an old file and the rolling search of
new data against them (rsync's algorithm, done without delta chains).

Implementations
---------------
The hot loops are C (``native/``, built by cffi as ``ironfs._native``); the
calls release the GIL, so `encode_file` and `signature_file` scan their
segments in parallel threads.  ``ironfs.format._delta_py`` is the pure-Python
reference with identical results.  At import this module takes the C kernel
if it is built, unless ``IRONFS_PURE=1``; ``IRONFS_REQUIRE_NATIVE=1`` turns a
missing C kernel into an ImportError (for CI).  `IMPLEMENTATION` says which
one is in use; `implementation(name)` returns either API explicitly.

Checksums
---------
weak: a 32-bit polynomial rolling hash over a window of n bytes,
``sum((x[i] + 1) * M**(n-1-i)) mod 2**32`` with ``M = 0x9E3779B1``; sliding
by one byte is ``h * M - (x_out + 1) * M**n + (x_in + 1)``.  Every byte
reaches all 32 bits, so windows that differ in a single byte never collide.
strong: BLAKE2b, 16-byte digest, unkeyed (RFC 7693).

Signature layout (`Signature.to_bytes`, little-endian)::

    magic "ICDS" (4) || version u16 = 1 || reserved u16 = 0
      || block_size u32 || file_size u64
      || block_count records of: weak u32 || strong (16)

``block_count = ceil(file_size / block_size)``; the last block may be short.
Readers check the magic, the version, the reserved field and that the length
is exactly ``20 + 20 * block_count``.

Matching rule, at each window start p of the new data
------------------------------------------------------
1. If a match has been made, the old full block at the same alignment as the
   last match (old offset ``p + last_old - last_new``, when that is a block
   boundary) is tried first, by strong hash: right after a match this is the
   next old block, so an unchanged run stays one copy.
2. Otherwise the full blocks whose weak sum equals the window's are tried in
   ascending index order, confirmed by strong hash; the first wins.
3. No match: byte p is literal, the window slides one byte.
When the new data ends (not at a segment limit), the old file's short final
block, if any, is tried against the last bytes.  It cannot match elsewhere.

Ops: ``(COPY, old_offset, length)`` or ``(LITERAL, data)``; contiguous copies
merge, a literal run is cut into pieces of at most 1 MiB (all full but the
last).  Their bytes concatenated are exactly the new data.

`encode_file` cuts the file into `threads` segments; segment k may match past
its end (up to block_size - 1 bytes), and segment k+1's ops are trimmed to
start where segment k's end, so op lists can differ from `encode` near
segment boundaries while still rebuilding the same data.  Files are read in
bounded chunks, never mapped: a file truncated under us gives a short read
(`FileChangedError` when the ops could not be joined up), not a SIGBUS.
"""

from __future__ import annotations

import os
import types

from . import _delta_py as _py
from ._delta_py import (  # noqa: F401  (re-exported: shared by both implementations)
    BLOCK_MAX,
    CHUNK_SIZE,
    COPY,
    LITERAL,
    LITERAL_MAX,
    FileChangedError,
    Signature,
    apply,
    block_size_for,
)

__all__ = [
    "IMPLEMENTATION",
    "COPY",
    "LITERAL",
    "block_size_for",
    "Signature",
    "SignatureBuilder",
    "signature",
    "Encoder",
    "encode",
    "encode_file",
    "signature_file",
    "apply",
    "FileChangedError",
    "implementation",
]

_API_NAMES = (
    "SignatureBuilder",
    "Encoder",
    "signature",
    "encode",
    "encode_file",
    "signature_file",
)

_NO_LIMIT = (1 << 64) - 1


class _NativeScanner:
    """The C scan (native/delta.c) behind the interface of _delta_py._PyScanner."""

    _CAP = 1024  # ops per C call; the scan resumes when the array is full

    def __init__(self, kernel, sig, start, limit):
        ffi, lib = kernel.ffi, kernel.lib
        self._ffi = ffi
        self._lib = lib
        self._prepared = kernel.prepare(sig)  # keeps the index and records alive
        enc = lib.ic_encoder_new(self._prepared[0], start, _NO_LIMIT if limit is None else limit)
        if enc == ffi.NULL:
            raise MemoryError("cannot allocate a delta encoder")
        self._enc = ffi.gc(enc, lib.ic_encoder_free)
        self._ops = ffi.new("ic_op[]", self._CAP)
        self._nops = ffi.new("size_t *")

    @property
    def keep_from(self) -> int:
        return self._lib.ic_encoder_keep_from(self._enc)

    def scan(self, buf, length: int, base: int, final: bool) -> list:
        lib, ops, nops = self._lib, self._ops, self._nops
        raw = []
        with self._ffi.from_buffer("uint8_t[]", buf) as data:
            while True:
                rc = lib.ic_encoder_scan(self._enc, data, length, base, final, ops, self._CAP, nops)
                if rc < 0:
                    raise ValueError("delta scan: buffer does not cover the pending data")
                for i in range(nops[0]):
                    op = ops[i]
                    raw.append((op.kind, op.a, op.b))
                if rc == 0:
                    return raw


class _NativeKernel:
    name = "native"

    def __init__(self, module):
        self.ffi = module.ffi
        self.lib = module.lib
        self._alloc = self.ffi.new_allocator(should_clear_after_alloc=False)
        rc = self.lib.ic_selftest()
        if rc != 0:
            raise ImportError(f"ironfs._native failed its self-test (check {rc}); the build is broken")

    def weak(self, data) -> int:
        with self.ffi.from_buffer("uint8_t[]", data) as p:
            return self.lib.ic_weak(p, len(p))

    def strong(self, data) -> bytes:
        out = self.ffi.new("uint8_t[16]")
        with self.ffi.from_buffer("uint8_t[]", data) as p:
            self.lib.ic_blake2b_128(p, len(p), out)
        return bytes(out)

    def sig_records(self, data, block_size: int) -> bytes:
        with self.ffi.from_buffer("uint8_t[]", data) as p:
            n = len(p)
            count = -(-n // block_size)
            if count == 0:
                return b""
            out = self._alloc("uint8_t[]", count * _py.SIG_RECORD_SIZE)
            self.lib.ic_sig_blocks(p, n, block_size, out)
        return self.ffi.buffer(out)[:]

    def prepare(self, sig):
        prepared = sig._cache.get(self.name)
        if prepared is None:
            records = self.ffi.from_buffer("uint8_t[]", sig._records)
            ix = self.lib.ic_index_new(records, sig.block_count, sig.block_size, sig.file_size)
            if ix == self.ffi.NULL:
                raise MemoryError(
                    f"cannot index a signature of {sig.block_count} blocks (out of memory, or over 2**32 - 2 blocks)"
                )
            prepared = sig._cache[self.name] = (self.ffi.gc(ix, self.lib.ic_index_free), records)
        return prepared

    def scanner(self, sig, start, limit):
        return _NativeScanner(self, sig, start, limit)


def _native_api(module) -> types.SimpleNamespace:
    kernel = _NativeKernel(module)

    class SignatureBuilder(_py.SignatureBuilder):
        __doc__ = _py.SignatureBuilder.__doc__
        _kernel = kernel

    class Encoder(_py.Encoder):
        __doc__ = _py.Encoder.__doc__
        _kernel = kernel

    def signature(data, block_size: int) -> Signature:
        """Signature of a whole buffer."""
        return _py._signature(kernel, data, block_size)

    def encode(sig: Signature, data) -> list:
        """Ops that rebuild data from the old file that sig describes."""
        return _py._encode(kernel, sig, data)

    def encode_file(sig: Signature, path, threads: int = 2, *, chunk_size: int = CHUNK_SIZE) -> list:
        """Ops for a file, read in chunks, its segments scanned in threads."""
        return _py._encode_file(kernel, sig, path, threads, chunk_size)

    def signature_file(path, block_size: int, threads: int = 2, *, chunk_size: int = CHUNK_SIZE) -> Signature:
        """Signature of a file, read in chunks, block-aligned segments in threads."""
        return _py._signature_file(kernel, path, block_size, threads, chunk_size)

    for cls in (SignatureBuilder, Encoder):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return types.SimpleNamespace(
        IMPLEMENTATION="native",
        SignatureBuilder=SignatureBuilder,
        Encoder=Encoder,
        signature=signature,
        encode=encode,
        encode_file=encode_file,
        signature_file=signature_file,
        _kernel=kernel,
    )


_native_cache = []


def implementation(name: str):
    """The API bound to one implementation: "native" or "python".

    Returns an object with the attributes IMPLEMENTATION, SignatureBuilder,
    Encoder, signature, encode, encode_file and signature_file (the rest of the
    API is shared).  Raises ImportError for "native" when it is not built.
    """
    if name == "python":
        return _py
    if name != "native":
        raise ValueError(f"unknown delta implementation {name!r} (expected 'native' or 'python')")
    if not _native_cache:
        from ironfs import _native

        _native_cache.append(_native_api(_native))
    return _native_cache[0]


def _choose():
    # IRONFS_REQUIRE_NATIVE=1 insists that the C kernel is built even when
    # IRONFS_PURE=1 asks to run the reference: CI can set the first globally.
    pure = os.environ.get("IRONFS_PURE") == "1"
    try:
        native = implementation("native")
    except ImportError as exc:
        if os.environ.get("IRONFS_REQUIRE_NATIVE") == "1":
            raise ImportError(
                "IRONFS_REQUIRE_NATIVE=1 but the C delta kernel ironfs._native is not available "
                f"({exc}); build it with `pip install -e .` (needs a C compiler and cffi)"
            ) from exc
        return _py
    return _py if pure else native


_api = _choose()
IMPLEMENTATION: str = _api.IMPLEMENTATION
SignatureBuilder = _api.SignatureBuilder
Encoder = _api.Encoder
signature = _api.signature
encode = _api.encode
encode_file = _api.encode_file
signature_file = _api.signature_file
