/*
 * The weak checksum of rollsum.h in SIMD lanes, picked at run time (the
 * build has no -march).  Over 64-byte steps,
 *
 *     weak(x[0..64k-1]) = sum over steps s of step(s) * M^(64 (k-1-s)),
 *     step(s) = sum over i < 64 of (x[64s+i] + 1) * M^(63-i),
 *
 * so eight lanes each keep a share of the sum, multiply it by M^64 per step
 * and add their eight bytes' products; the lanes are added up at the end.
 * All arithmetic is mod 2^32, so the result equals the scalar one exactly.
 */
#include "rollsum.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

__attribute__((target("avx2")))
static uint32_t weak_wide_avx2(const ic_weak_tables *wt, const uint8_t *p, size_t n)
{
    __m256i w[8];
    for (int c = 0; c < 8; c++)
        w[c] = _mm256_loadu_si256((const __m256i *)(wt->w64 + 8 * c));
    const __m256i m64 = _mm256_set1_epi32((int)wt->m64);
    const __m256i one = _mm256_set1_epi32(1);
    __m256i acc = _mm256_setzero_si256();
    for (size_t i = 0; i < n; i += 64) {
        __m256i step = _mm256_setzero_si256();
        for (int c = 0; c < 8; c++) {
            __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + i + 8 * c)));
            step = _mm256_add_epi32(step, _mm256_mullo_epi32(_mm256_add_epi32(x, one), w[c]));
        }
        acc = _mm256_add_epi32(_mm256_mullo_epi32(acc, m64), step);
    }
    uint32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, acc);
    uint32_t h = 0;
    for (int j = 0; j < 8; j++)
        h += lanes[j];
    return h;
}

ic_weak_wide_fn ic_weak_pick_wide(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? weak_wide_avx2 : NULL;
}
#else
ic_weak_wide_fn ic_weak_pick_wide(void)
{
    return NULL;
}
#endif
