/*
 * The delta encoder's weak rolling checksum.  Plain C99, no Python.
 *
 * A 32-bit polynomial (Rabin-Karp style) hash over a window of n bytes:
 *
 *     weak(x[0..n-1]) = sum over i of (x[i] + 1) * M^(n-1-i)   mod 2^32
 *
 * with M = IC_WEAK_MULT.  Sliding the window one byte (drop x_out, take x_in):
 *
 *     weak' = weak * M - (x_out + 1) * M^n + (x_in + 1)        mod 2^32
 *
 * Why this one: it rolls with one multiply, and unlike the rsync/Adler-style
 * pair of 16-bit sums it spreads every byte over all 32 bits, so windows that
 * differ in one byte never collide (M is odd, so (d * M^k) mod 2^32 != 0 for
 * any byte difference d) and far fewer random windows reach the strong hash.
 * The "+ 1" makes runs of zero bytes of different lengths hash differently.
 * It is a filter, not a proof: every match is confirmed with BLAKE2b.
 */
#ifndef IRONCORE_ROLLSUM_H
#define IRONCORE_ROLLSUM_H

#include <stddef.h>
#include <stdint.h>

/* Odd (so multiplying by it is a bijection mod 2^32); 2^32 / golden ratio, so
 * its bits are irregular and the high bits of a product depend on all bits. */
#define IC_WEAK_MULT 0x9E3779B1u

typedef struct ic_weak_tables ic_weak_tables;

/* weak() of n bytes, n a multiple of 64, in SIMD lanes (rollsum_simd.c). */
typedef uint32_t (*ic_weak_wide_fn)(const ic_weak_tables *wt, const uint8_t *p, size_t n);

/* The SIMD variant this CPU supports, or NULL (then only the tables are used). */
ic_weak_wide_fn ic_weak_pick_wide(void);

/* Per-position byte tables for computing a whole window eight bytes at a time:
 * t[k][x] = (x + 1) * M^k, and m8 = M^8.  8 KiB; built by ic_weak_tables_init.
 * For the SIMD variant: w64[i] = M^(63 - i) and m64 = M^64. */
struct ic_weak_tables {
    uint32_t t[8][256];
    uint32_t m8;
    uint32_t w64[64];
    uint32_t m64;
    ic_weak_wide_fn wide;
};

static inline uint32_t ic_weak_pow(uint32_t base, uint64_t e)
{
    uint32_t r = 1u;
    while (e) {
        if (e & 1u)
            r *= base;
        base *= base;
        e >>= 1;
    }
    return r;
}

static inline void ic_weak_tables_init(ic_weak_tables *wt)
{
    uint32_t mk = 1u;
    for (int k = 0; k < 8; k++) {
        for (uint32_t x = 0; x < 256; x++)
            wt->t[k][x] = (x + 1u) * mk;
        mk *= IC_WEAK_MULT;
    }
    wt->m8 = mk;
    mk = 1u;
    for (int i = 63; i >= 0; i--) {
        wt->w64[i] = mk;
        mk *= IC_WEAK_MULT;
    }
    wt->m64 = mk;
    wt->wide = ic_weak_pick_wide();
}

/* weak() of n bytes.  Horner's rule eight bytes per step; the eight products
 * within a step are independent table loads, so the dependency chain is one
 * multiply-add per eight bytes instead of one per byte.  Where the CPU has
 * SIMD lanes, whole 64-byte steps go through them first (22.6 GB/s against
 * 4.1 GB/s here: a signature's weak sums had been half its time). */
static inline uint32_t ic_weak_sum(const ic_weak_tables *wt, const uint8_t *p, size_t n)
{
    uint32_t h = 0;
    size_t i = 0;
    if (wt->wide != NULL && n >= 64) {
        i = n & ~(size_t)63;
        h = wt->wide(wt, p, i);
    }
    for (; i + 8 <= n; i += 8) {
        h = h * wt->m8 + (wt->t[7][p[i]] + wt->t[6][p[i + 1]] + wt->t[5][p[i + 2]] +
                          wt->t[4][p[i + 3]] + wt->t[3][p[i + 4]] + wt->t[2][p[i + 5]] +
                          wt->t[1][p[i + 6]] + wt->t[0][p[i + 7]]);
    }
    for (; i < n; i++)
        h = h * IC_WEAK_MULT + (uint32_t)p[i] + 1u;
    return h;
}

/* Slide one byte; outtab[x] = (x + 1) * M^n for the window length n. */
static inline uint32_t ic_weak_roll(uint32_t h, uint8_t x_out, uint8_t x_in, const uint32_t outtab[256])
{
    return h * IC_WEAK_MULT + (uint32_t)x_in + 1u - outtab[x_out];
}

static inline void ic_weak_outtab_init(uint32_t outtab[256], uint64_t n)
{
    uint32_t mn = ic_weak_pow(IC_WEAK_MULT, n);
    for (uint32_t x = 0; x < 256; x++)
        outtab[x] = (x + 1u) * mn;
}

#endif
