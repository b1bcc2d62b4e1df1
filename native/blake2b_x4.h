/*
 * Template, included by blake2b.c only: the BLAKE2b compression function
 * (RFC 7693 section 3.2) run on four independent messages at once, one per
 * 64-bit lane of a 256-bit vector (GNU C vector extensions).  blake2b.c
 * includes it once per instruction set with these defined:
 *
 *   X4_NAME   name of the function to define
 *   X4_ATTR   its target attribute, e.g. __attribute__((target("avx2")))
 *   X4_SHUF   defined: rotate by 32/24/16 with byte shuffles (AVX2 has no
 *             64-bit rotate); undefined: with shifts (AVX-512VL turns those
 *             into its rotate instruction)
 *
 * All four messages are at the same byte count t0 and share the final flag.
 */

X4_ATTR static void X4_NAME(uint64_t h[4][8], const uint8_t *const blk[4], uint64_t t0, int last)
{
    ic_v4 m[16];
    ic_v4 v[16];

    for (int i = 0; i < 16; i++)
        m[i] = (ic_v4){load64(blk[0] + 8 * i), load64(blk[1] + 8 * i), load64(blk[2] + 8 * i),
                       load64(blk[3] + 8 * i)};
    for (int i = 0; i < 8; i++) {
        v[i] = (ic_v4){h[0][i], h[1][i], h[2][i], h[3][i]};
        v[i + 8] = (ic_v4){IV[i], IV[i], IV[i], IV[i]};
    }
    v[12] ^= t0;
    if (last)
        v[14] = ~v[14];

#ifdef X4_SHUF
#define X4_ROT(x, n) ((ic_v4)__builtin_shuffle((ic_v32b)(x), X4_ROT##n))
#define X4_ROT63(x) (((x) >> 63) | ((x) << 1))
#define X4_G(a, b, c, d, x, y)              \
    do {                                    \
        v[a] = v[a] + v[b] + (x);           \
        v[d] = X4_ROT(v[d] ^ v[a], 32);     \
        v[c] = v[c] + v[d];                 \
        v[b] = X4_ROT(v[b] ^ v[c], 24);     \
        v[a] = v[a] + v[b] + (y);           \
        v[d] = X4_ROT(v[d] ^ v[a], 16);     \
        v[c] = v[c] + v[d];                 \
        v[b] = X4_ROT63(v[b] ^ v[c]);       \
    } while (0)
#else
#define X4_ROTS(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#define X4_G(a, b, c, d, x, y)              \
    do {                                    \
        v[a] = v[a] + v[b] + (x);           \
        v[d] = X4_ROTS(v[d] ^ v[a], 32);    \
        v[c] = v[c] + v[d];                 \
        v[b] = X4_ROTS(v[b] ^ v[c], 24);    \
        v[a] = v[a] + v[b] + (y);           \
        v[d] = X4_ROTS(v[d] ^ v[a], 16);    \
        v[c] = v[c] + v[d];                 \
        v[b] = X4_ROTS(v[b] ^ v[c], 63);    \
    } while (0)
#endif
#define X4_ROUND(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15) \
    do {                                                                              \
        X4_G(0, 4, 8, 12, m[s0], m[s1]);                                              \
        X4_G(1, 5, 9, 13, m[s2], m[s3]);                                              \
        X4_G(2, 6, 10, 14, m[s4], m[s5]);                                             \
        X4_G(3, 7, 11, 15, m[s6], m[s7]);                                             \
        X4_G(0, 5, 10, 15, m[s8], m[s9]);                                             \
        X4_G(1, 6, 11, 12, m[s10], m[s11]);                                           \
        X4_G(2, 7, 8, 13, m[s12], m[s13]);                                            \
        X4_G(3, 4, 9, 14, m[s14], m[s15]);                                            \
    } while (0)

    /* The same SIGMA rows as the scalar compress in blake2b.c. */
    X4_ROUND(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    X4_ROUND(14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3);
    X4_ROUND(11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4);
    X4_ROUND(7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8);
    X4_ROUND(9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13);
    X4_ROUND(2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9);
    X4_ROUND(12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11);
    X4_ROUND(13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10);
    X4_ROUND(6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5);
    X4_ROUND(10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0);
    X4_ROUND(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    X4_ROUND(14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3);

#undef X4_ROUND
#undef X4_G
#undef X4_ROT
#undef X4_ROT63
#undef X4_ROTS

    for (int i = 0; i < 8; i++) {
        ic_v4 x = v[i] ^ v[i + 8];
        h[0][i] ^= x[0];
        h[1][i] ^= x[1];
        h[2][i] ^= x[2];
        h[3][i] ^= x[3];
    }
}
