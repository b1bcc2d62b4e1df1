/*
 * BLAKE2b per RFC 7693 (sections 2 and 3), written from the RFC text.
 *
 * The compression function is spelled out round by round so that every
 * message-word index is a compile-time constant: with -O3 the compiler keeps
 * the sixteen working words in registers, which is most of the speed of a
 * portable implementation.
 *
 * ic_blake2b_128_x4 hashes four equal-length messages at once.  On x86_64
 * with GCC or Clang it runs them in the four lanes of AVX2 (or AVX-512VL)
 * vectors, chosen at run time from CPUID, so the build itself needs no
 * -march flag and still runs on any x86_64; elsewhere it is four scalar calls.
 */
#include "blake2b.h"

#include <string.h>

/* RFC 7693 section 2.6: the SHA-512 initial values. */
static const uint64_t IV[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL,
    0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL,
    0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL,
};

static inline uint64_t rotr64(uint64_t x, unsigned n)
{
    return (x >> n) | (x << (64 - n));
}

static inline uint64_t load64(const uint8_t *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
#else
    return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) |
           ((uint64_t)p[3] << 24) | ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) |
           ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
#endif
}

static inline void store64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* RFC 7693 section 3.1, with the rotation constants R1..R4 = 32, 24, 16, 63. */
#define G(a, b, c, d, x, y)              \
    do {                                 \
        a = a + b + (x);                 \
        d = rotr64(d ^ a, 32);           \
        c = c + d;                       \
        b = rotr64(b ^ c, 24);           \
        a = a + b + (y);                 \
        d = rotr64(d ^ a, 16);           \
        c = c + d;                       \
        b = rotr64(b ^ c, 63);           \
    } while (0)

/* One round: four column steps then four diagonal steps, message words taken
 * in the order of one row of the SIGMA permutation table (section 2.7). */
#define ROUND(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15) \
    do {                                                                          \
        G(v0, v4, v8, v12, m[s0], m[s1]);                                         \
        G(v1, v5, v9, v13, m[s2], m[s3]);                                         \
        G(v2, v6, v10, v14, m[s4], m[s5]);                                        \
        G(v3, v7, v11, v15, m[s6], m[s7]);                                        \
        G(v0, v5, v10, v15, m[s8], m[s9]);                                        \
        G(v1, v6, v11, v12, m[s10], m[s11]);                                      \
        G(v2, v7, v8, v13, m[s12], m[s13]);                                       \
        G(v3, v4, v9, v14, m[s14], m[s15]);                                       \
    } while (0)

/* Section 3.2: compress one 128-byte block; t0/t1 is the byte counter after
 * this block, last is the final-block flag. */
static void compress(uint64_t h[8], const uint8_t *block, uint64_t t0, uint64_t t1, int last)
{
    uint64_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = load64(block + 8 * i);

    uint64_t v0 = h[0], v1 = h[1], v2 = h[2], v3 = h[3];
    uint64_t v4 = h[4], v5 = h[5], v6 = h[6], v7 = h[7];
    uint64_t v8 = IV[0], v9 = IV[1], v10 = IV[2], v11 = IV[3];
    uint64_t v12 = IV[4] ^ t0, v13 = IV[5] ^ t1;
    uint64_t v14 = last ? ~IV[6] : IV[6], v15 = IV[7];

    /* Twelve rounds; rounds 10 and 11 reuse SIGMA rows 0 and 1. */
    ROUND(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    ROUND(14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3);
    ROUND(11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4);
    ROUND(7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8);
    ROUND(9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13);
    ROUND(2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9);
    ROUND(12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11);
    ROUND(13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10);
    ROUND(6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5);
    ROUND(10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0);
    ROUND(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    ROUND(14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3);

    h[0] ^= v0 ^ v8;
    h[1] ^= v1 ^ v9;
    h[2] ^= v2 ^ v10;
    h[3] ^= v3 ^ v11;
    h[4] ^= v4 ^ v12;
    h[5] ^= v5 ^ v13;
    h[6] ^= v6 ^ v14;
    h[7] ^= v7 ^ v15;
}

static void add_counter(ic_blake2b_state *s, uint64_t n)
{
    s->t[0] += n;
    if (s->t[0] < n)
        s->t[1]++;
}

int ic_blake2b_init(ic_blake2b_state *s, size_t outlen, const void *key, size_t keylen)
{
    if (outlen == 0 || outlen > IC_BLAKE2B_OUTBYTES || keylen > IC_BLAKE2B_KEYBYTES)
        return -1;
    for (int i = 0; i < 8; i++)
        s->h[i] = IV[i];
    /* Parameter block word 0: digest length, key length, fanout 1, depth 1. */
    s->h[0] ^= 0x01010000ULL ^ ((uint64_t)keylen << 8) ^ (uint64_t)outlen;
    s->t[0] = s->t[1] = 0;
    s->buflen = 0;
    s->outlen = outlen;
    memset(s->buf, 0, sizeof s->buf);
    if (keylen > 0) {
        /* The key, zero-padded to a full block, is the first message block. */
        memcpy(s->buf, key, keylen);
        s->buflen = IC_BLAKE2B_BLOCKBYTES;
    }
    return 0;
}

void ic_blake2b_update(ic_blake2b_state *s, const void *in, size_t inlen)
{
    const uint8_t *p = (const uint8_t *)in;
    while (inlen > 0) {
        /* The buffered block is compressed only once more input follows,
         * because the last block must carry the final flag. */
        if (s->buflen == IC_BLAKE2B_BLOCKBYTES) {
            add_counter(s, IC_BLAKE2B_BLOCKBYTES);
            compress(s->h, s->buf, s->t[0], s->t[1], 0);
            s->buflen = 0;
        }
        if (s->buflen == 0) {
            while (inlen > IC_BLAKE2B_BLOCKBYTES) {
                add_counter(s, IC_BLAKE2B_BLOCKBYTES);
                compress(s->h, p, s->t[0], s->t[1], 0);
                p += IC_BLAKE2B_BLOCKBYTES;
                inlen -= IC_BLAKE2B_BLOCKBYTES;
            }
        }
        size_t take = IC_BLAKE2B_BLOCKBYTES - s->buflen;
        if (take > inlen)
            take = inlen;
        memcpy(s->buf + s->buflen, p, take);
        s->buflen += take;
        p += take;
        inlen -= take;
    }
}

void ic_blake2b_final(ic_blake2b_state *s, void *out)
{
    uint8_t full[IC_BLAKE2B_OUTBYTES];
    add_counter(s, s->buflen);
    memset(s->buf + s->buflen, 0, IC_BLAKE2B_BLOCKBYTES - s->buflen);
    compress(s->h, s->buf, s->t[0], s->t[1], 1);
    for (int i = 0; i < 8; i++)
        store64(full + 8 * i, s->h[i]);
    memcpy(out, full, s->outlen);
}

void ic_blake2b_128(const uint8_t *in, size_t inlen, uint8_t out[16])
{
    uint64_t h[8];
    uint8_t last[IC_BLAKE2B_BLOCKBYTES];
    uint64_t t = 0;

    for (int i = 0; i < 8; i++)
        h[i] = IV[i];
    h[0] ^= 0x01010000ULL ^ 16u;
    /* Full blocks straight from the caller's buffer; the final block (which
     * may be full, or empty for empty input) is padded in a local copy. */
    while (inlen > IC_BLAKE2B_BLOCKBYTES) {
        t += IC_BLAKE2B_BLOCKBYTES;
        compress(h, in, t, 0, 0);
        in += IC_BLAKE2B_BLOCKBYTES;
        inlen -= IC_BLAKE2B_BLOCKBYTES;
    }
    memset(last, 0, sizeof last);
    if (inlen > 0)
        memcpy(last, in, inlen);
    t += inlen;
    compress(h, last, t, 0, 1);
    store64(out, h[0]);
    store64(out + 8, h[1]);
}

/* ---- four messages at once ------------------------------------------- */

typedef void (*compress4_fn)(uint64_t h[4][8], const uint8_t *const blk[4], uint64_t t0, int last);

#if defined(__x86_64__) && defined(__GNUC__)
#define IC_HAVE_X4 1
typedef uint64_t ic_v4 __attribute__((vector_size(32)));

#if !defined(__clang__)
/* Byte permutations that rotate each 64-bit lane right by 32, 24, 16 bits. */
typedef uint8_t ic_v32b __attribute__((vector_size(32)));
static const ic_v32b X4_ROT32 = {4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11,
                                 20, 21, 22, 23, 16, 17, 18, 19, 28, 29, 30, 31, 24, 25, 26, 27};
static const ic_v32b X4_ROT24 = {3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10,
                                 19, 20, 21, 22, 23, 16, 17, 18, 27, 28, 29, 30, 31, 24, 25, 26};
static const ic_v32b X4_ROT16 = {2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9,
                                 18, 19, 20, 21, 22, 23, 16, 17, 26, 27, 28, 29, 30, 31, 24, 25};
#define X4_SHUF
#endif
#define X4_NAME compress4_avx2
#define X4_ATTR __attribute__((target("avx2")))
#include "blake2b_x4.h"
#undef X4_NAME
#undef X4_ATTR
#undef X4_SHUF

#define X4_NAME compress4_avx512
#define X4_ATTR __attribute__((target("avx512f,avx512vl")))
#include "blake2b_x4.h"
#undef X4_NAME
#undef X4_ATTR

/* The best variant this CPU (and OS) supports, or NULL. */
static compress4_fn pick_compress4(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"))
        return compress4_avx512;
    if (__builtin_cpu_supports("avx2"))
        return compress4_avx2;
    return NULL;
}
#else
static compress4_fn pick_compress4(void)
{
    return NULL;
}
#endif

static void blake2b_128_x4_with(compress4_fn f, const uint8_t *const in[4], size_t inlen, uint8_t *const out[4])
{
    uint64_t h[4][8];
    const uint8_t *p[4];
    uint8_t last[4][IC_BLAKE2B_BLOCKBYTES];
    uint64_t t = 0;

    for (int j = 0; j < 4; j++) {
        for (int i = 0; i < 8; i++)
            h[j][i] = IV[i];
        h[j][0] ^= 0x01010000ULL ^ 16u;
        p[j] = in[j];
    }
    while (inlen > IC_BLAKE2B_BLOCKBYTES) {
        t += IC_BLAKE2B_BLOCKBYTES;
        f(h, p, t, 0);
        for (int j = 0; j < 4; j++)
            p[j] += IC_BLAKE2B_BLOCKBYTES;
        inlen -= IC_BLAKE2B_BLOCKBYTES;
    }
    memset(last, 0, sizeof last);
    for (int j = 0; j < 4; j++) {
        if (inlen > 0)
            memcpy(last[j], p[j], inlen);
        p[j] = last[j];
    }
    t += inlen;
    f(h, p, t, 1);
    for (int j = 0; j < 4; j++) {
        store64(out[j], h[j][0]);
        store64(out[j] + 8, h[j][1]);
    }
}

int ic_blake2b_x4_simd(void)
{
    return pick_compress4() != NULL;
}

void ic_blake2b_128_x4(const uint8_t *const in[4], size_t inlen, uint8_t *const out[4])
{
    compress4_fn f = pick_compress4();
    if (f) {
        blake2b_128_x4_with(f, in, inlen, out);
    } else {
        for (int j = 0; j < 4; j++)
            ic_blake2b_128(in[j], inlen, out[j]);
    }
}

int ic_blake2b_x4_selftest(void)
{
    uint8_t data[4 * 300];
    uint32_t x = 987654321u;
    for (size_t i = 0; i < sizeof data; i++) {
        x = x * 1103515245u + 12345u;
        data[i] = (uint8_t)(x >> 24);
    }
    compress4_fn variants[2] = {NULL, NULL};
#ifdef IC_HAVE_X4
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        variants[0] = compress4_avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"))
        variants[1] = compress4_avx512;
#endif
    static const size_t lens[] = {0, 1, 128, 129, 256, 300};
    for (int v = 0; v < 2; v++) {
        if (!variants[v])
            continue;
        for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
            const uint8_t *in[4] = {data, data + 300, data + 600, data + 900};
            uint8_t got[4][16], want[16];
            uint8_t *out[4] = {got[0], got[1], got[2], got[3]};
            blake2b_128_x4_with(variants[v], in, lens[k], out);
            for (int j = 0; j < 4; j++) {
                ic_blake2b_128(in[j], lens[k], want);
                if (memcmp(want, got[j], 16) != 0)
                    return 1 + v;
            }
        }
    }
    return 0;
}
