/*
 * BLAKE2b (RFC 7693), written from the RFC text.  Plain C99, no Python.
 *
 * Ironcore uses the unkeyed 16-byte digest as the strong block hash of the
 * delta encoder; the incremental interface (with optional key) exists for the
 * self-test and for callers that hash data arriving in pieces.
 */
#ifndef IRONCORE_BLAKE2B_H
#define IRONCORE_BLAKE2B_H

#include <stddef.h>
#include <stdint.h>

#define IC_BLAKE2B_BLOCKBYTES 128
#define IC_BLAKE2B_OUTBYTES 64
#define IC_BLAKE2B_KEYBYTES 64

typedef struct {
    uint64_t h[8];                         /* chained state */
    uint64_t t[2];                         /* total bytes compressed, 128-bit */
    uint8_t buf[IC_BLAKE2B_BLOCKBYTES];    /* pending input, never compressed eagerly */
    size_t buflen;
    size_t outlen;
} ic_blake2b_state;

/* outlen in 1..64, keylen in 0..64 (key may be NULL when keylen is 0).
 * Returns 0, or -1 on a bad length. */
int ic_blake2b_init(ic_blake2b_state *s, size_t outlen, const void *key, size_t keylen);
void ic_blake2b_update(ic_blake2b_state *s, const void *in, size_t inlen);
/* Writes s->outlen bytes to out. */
void ic_blake2b_final(ic_blake2b_state *s, void *out);

/* One-shot unkeyed BLAKE2b with a 16-byte digest: the delta encoder's strong hash. */
void ic_blake2b_128(const uint8_t *in, size_t inlen, uint8_t out[16]);

/* Four messages of the same length at once: out[j] = ic_blake2b_128(in[j]).
 * Vectorised where the CPU allows (see ic_blake2b_x4_simd), else four calls. */
void ic_blake2b_128_x4(const uint8_t *const in[4], size_t inlen, uint8_t *const out[4]);

/* 1 if ic_blake2b_128_x4 runs the four messages in SIMD lanes on this CPU
 * (then it costs about as much as one or two scalar calls), else 0. */
int ic_blake2b_x4_simd(void);

/* Every SIMD variant this CPU supports against the scalar code: 0 if all
 * agree, else 1 (AVX2) or 2 (AVX-512VL). */
int ic_blake2b_x4_selftest(void);

#endif
