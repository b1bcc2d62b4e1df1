"""cffi build script for the optional extension ``ironfs._native``.

Out-of-line API mode: setuptools runs this through ``cffi_modules`` in
setup.py; ``optional=True`` lets an install without a C compiler go on, and
``ironfs.format.delta`` then falls back to its pure-Python reference (which
``IRONFS_REQUIRE_NATIVE=1`` turns into an import error).

Build in place: ``pip install -e .`` (setuptools' editable mode puts
``ironfs/_native.abi3.so`` next to the sources), or without pip
``python setup.py build_ext --inplace``.  The generated C goes under build/.
"""

import os

from cffi import FFI

SOURCES = ["delta.c", "blake2b.c", "rollsum_simd.c"]
HEADERS = ["delta.h", "blake2b.h", "blake2b_x4.h", "rollsum.h"]

CDEF = """
#define IC_SIG_RECORD 20
#define IC_LITERAL_MAX 1048576
#define IC_BLOCK_MAX 1048576
#define IC_OP_MARGIN 8
#define IC_COPY 0
#define IC_LITERAL 1

typedef struct {
    uint64_t a;
    uint64_t b;
    int32_t kind;
} ic_op;

uint32_t ic_weak(const uint8_t *data, size_t len);
void ic_sig_blocks(const uint8_t *data, size_t len, uint32_t bs, uint8_t *records);

typedef struct ic_index ic_index;
ic_index *ic_index_new(const uint8_t *records, uint64_t nblocks, uint32_t bs, uint64_t file_size);
void ic_index_free(ic_index *ix);

typedef struct ic_encoder ic_encoder;
ic_encoder *ic_encoder_new(const ic_index *ix, uint64_t start, uint64_t limit);
void ic_encoder_free(ic_encoder *e);
int ic_encoder_scan(ic_encoder *e, const uint8_t *buf, size_t len, uint64_t base, int final,
                    ic_op *ops, size_t cap, size_t *nops);
uint64_t ic_encoder_keep_from(const ic_encoder *e);

void ic_blake2b_128(const uint8_t *in, size_t inlen, uint8_t out[16]);
void ic_blake2b_128_x4(const uint8_t *const in[4], size_t inlen, uint8_t *const out[4]);
int ic_blake2b_x4_simd(void);
int ic_blake2b_x4_selftest(void);
int ic_selftest(void);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "ironfs._native",
    '#include "delta.h"\n#include "blake2b.h"\n',
    # Paths relative to the project root, where setup.py runs the build.
    sources=[os.path.join("native", s) for s in SOURCES],
    include_dirs=["native"],
    depends=[os.path.join("native", h) for h in HEADERS],
    # -O3 only: no -march, the wheel must run on any x86_64 / aarch64 (the
    # AVX2 / AVX-512 BLAKE2b lanes are picked at run time, see blake2b.c).
    extra_compile_args=["-O3", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    optional=True,
)
