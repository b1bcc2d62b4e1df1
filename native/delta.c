/*
 * Ironcore delta encoder kernel (see delta.h for the matching rule).
 */
#include "delta.h"

#include <stdlib.h>
#include <string.h>

#include "blake2b.h"
#include "rollsum.h"

static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

uint32_t ic_weak(const uint8_t *data, size_t len)
{
    ic_weak_tables wt;
    ic_weak_tables_init(&wt);
    return ic_weak_sum(&wt, data, len);
}

void ic_sig_blocks(const uint8_t *data, size_t len, uint32_t bs, uint8_t *records)
{
    ic_weak_tables wt;
    ic_weak_tables_init(&wt);
    /* Four full blocks at a time where the CPU hashes them in SIMD lanes. */
    if (ic_blake2b_x4_simd()) {
        while (len >= 4 * (size_t)bs) {
            const uint8_t *in[4] = {data, data + bs, data + 2 * (size_t)bs, data + 3 * (size_t)bs};
            uint8_t *out[4];
            for (int j = 0; j < 4; j++) {
                put_le32(records + j * IC_SIG_RECORD, ic_weak_sum(&wt, in[j], bs));
                out[j] = records + j * IC_SIG_RECORD + 4;
            }
            ic_blake2b_128_x4(in, bs, out);
            records += 4 * IC_SIG_RECORD;
            data += 4 * (size_t)bs;
            len -= 4 * (size_t)bs;
        }
    }
    while (len > 0) {
        size_t n = len < bs ? len : bs;
        put_le32(records, ic_weak_sum(&wt, data, n));
        ic_blake2b_128(data, n, records + 4);
        records += IC_SIG_RECORD;
        data += n;
        len -= n;
    }
}

/* ---- index ------------------------------------------------------------ */

typedef struct {
    uint32_t weak;
    uint32_t idx;
} ic_entry;

struct ic_index {
    uint32_t bs;
    uint64_t nfull;          /* full blocks, the only ones in the table */
    uint32_t short_len;      /* length of the short final block, 0 if none */
    uint32_t short_weak;
    const uint8_t *records;
    unsigned tbits, fbits;   /* log2 of bucket count and of filter bit count */
    uint64_t *filter;        /* one bit per filter slot: "some block may have this weak" */
    uint32_t *bstart;        /* bucket b holds entries[bstart[b] .. bstart[b+1]) */
    ic_entry *entries;       /* by bucket, then ascending block index */
    uint32_t outtab[256];    /* (x + 1) * M^bs, for rolling */
    ic_weak_tables wt;
};

/* Spreads the weak sum before its top bits pick a bucket: the weak sum's own
 * low bits are weak (bit 0 is the parity of the byte sum). */
static inline uint32_t mix(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x7FEB352Du;
    h ^= h >> 15;
    h *= 0x846CA68Bu;
    h ^= h >> 16;
    return h;
}

static inline int filter_hit(const ic_index *ix, uint32_t h)
{
    uint32_t bit = mix(h) >> (32 - ix->fbits);
    return (int)((ix->filter[bit >> 6] >> (bit & 63)) & 1u);
}

ic_index *ic_index_new(const uint8_t *records, uint64_t nblocks, uint32_t bs, uint64_t file_size)
{
    if (bs == 0 || bs > IC_BLOCK_MAX)
        return NULL;
    uint64_t nfull = file_size / bs;
    uint32_t short_len = (uint32_t)(file_size % bs);
    if (nblocks != nfull + (short_len ? 1 : 0) || nfull >= UINT32_MAX)
        return NULL;

    ic_index *ix = calloc(1, sizeof *ix);
    if (!ix)
        return NULL;
    ix->bs = bs;
    ix->nfull = nfull;
    ix->short_len = short_len;
    ix->records = records;
    if (short_len)
        ix->short_weak = get_le32(records + nfull * IC_SIG_RECORD);

    /* About two buckets per block, and eight filter bits per bucket so the
     * rolling loop reaches the bucket array for roughly one byte in sixteen
     * (the filter stays small enough for the fast caches). */
    unsigned tbits = 4;
    while (tbits < 26 && ((uint64_t)1 << tbits) < 2 * nfull)
        tbits++;
    ix->tbits = tbits;
    ix->fbits = tbits + 3;
    uint64_t nbuckets = (uint64_t)1 << tbits;
    uint64_t fwords = ((uint64_t)1 << ix->fbits) / 64;

    ix->filter = calloc(fwords, sizeof(uint64_t));
    ix->bstart = calloc(nbuckets + 1, sizeof(uint32_t));
    ix->entries = malloc((nfull ? nfull : 1) * sizeof(ic_entry));
    if (!ix->filter || !ix->bstart || !ix->entries) {
        ic_index_free(ix);
        return NULL;
    }
    /* Counting sort by bucket; filling in block order keeps each bucket's
     * entries in ascending index order, which the matching rule relies on. */
    for (uint64_t i = 0; i < nfull; i++) {
        uint32_t w = get_le32(records + i * IC_SIG_RECORD);
        uint32_t m = mix(w);
        ix->bstart[(m >> (32 - tbits)) + 1]++;
        uint32_t bit = m >> (32 - ix->fbits);
        ix->filter[bit >> 6] |= (uint64_t)1 << (bit & 63);
    }
    for (uint64_t b = 0; b < nbuckets; b++)
        ix->bstart[b + 1] += ix->bstart[b];
    uint32_t *fill = malloc(nbuckets * sizeof(uint32_t));
    if (!fill) {
        ic_index_free(ix);
        return NULL;
    }
    memcpy(fill, ix->bstart, nbuckets * sizeof(uint32_t));
    for (uint64_t i = 0; i < nfull; i++) {
        uint32_t w = get_le32(records + i * IC_SIG_RECORD);
        uint32_t b = mix(w) >> (32 - tbits);
        ix->entries[fill[b]].weak = w;
        ix->entries[fill[b]].idx = (uint32_t)i;
        fill[b]++;
    }
    free(fill);
    ic_weak_outtab_init(ix->outtab, bs);
    ic_weak_tables_init(&ix->wt);
    return ix;
}

void ic_index_free(ic_index *ix)
{
    if (!ix)
        return;
    free(ix->filter);
    free(ix->bstart);
    free(ix->entries);
    free(ix);
}

/* ---- encoder ---------------------------------------------------------- */

struct ic_encoder {
    const ic_index *ix;
    uint64_t pos;          /* start of the current window */
    uint64_t lit_start;    /* start of the pending literal; lit_start <= pos */
    uint64_t limit;
    uint64_t copy_off;     /* pending copy, held back so a contiguous successor merges */
    uint64_t copy_len;     /* 0: none */
    int64_t delta;         /* old offset minus new offset of the last match */
    int have_delta;
    uint32_t h;            /* weak sum of the window at pos, when h_valid */
    int h_valid;
    int finished;
    uint64_t seen_end;     /* furthest end of data fed so far */
    /* Strong hashes computed ahead for the windows at spec_pos + k * bs,
     * k < spec_n (rule 1 expects the copy to go on; see strong_at). */
    int simd;
    uint64_t spec_pos;
    unsigned spec_n;
    uint8_t spec[4][16];
};

ic_encoder *ic_encoder_new(const ic_index *ix, uint64_t start, uint64_t limit)
{
    if (!ix)
        return NULL;
    ic_encoder *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->ix = ix;
    e->pos = e->lit_start = e->seen_end = start;
    e->limit = limit;
    e->simd = ic_blake2b_x4_simd();
    return e;
}

void ic_encoder_free(ic_encoder *e)
{
    free(e);
}

uint64_t ic_encoder_keep_from(const ic_encoder *e)
{
    return e->lit_start;
}

typedef struct {
    ic_op *ops;
    size_t n;
} op_out;

static inline void put_op(op_out *o, int32_t kind, uint64_t a, uint64_t b)
{
    o->ops[o->n].kind = kind;
    o->ops[o->n].a = a;
    o->ops[o->n].b = b;
    o->n++;
}

static inline void flush_copy(ic_encoder *e, op_out *o)
{
    if (e->copy_len) {
        put_op(o, IC_COPY, e->copy_off, e->copy_len);
        e->copy_len = 0;
    }
}

/* Emit the pending literal up to upto, in pieces of at most IC_LITERAL_MAX. */
static void flush_literal(ic_encoder *e, op_out *o, uint64_t upto)
{
    if (upto <= e->lit_start)
        return;
    flush_copy(e, o);
    while (e->lit_start < upto) {
        uint64_t n = upto - e->lit_start;
        if (n > IC_LITERAL_MAX)
            n = IC_LITERAL_MAX;
        put_op(o, IC_LITERAL, e->lit_start, n);
        e->lit_start += n;
    }
}

static void take_match(ic_encoder *e, op_out *o, uint64_t p, uint64_t blk, uint64_t len)
{
    uint64_t off = blk * e->ix->bs;
    flush_literal(e, o, p);
    if (e->copy_len && e->copy_off + e->copy_len == off) {
        e->copy_len += len;
    } else {
        flush_copy(e, o);
        e->copy_off = off;
        e->copy_len = len;
    }
    e->pos = e->lit_start = p + len;
    e->delta = (int64_t)off - (int64_t)p;
    e->have_delta = 1;
    e->h_valid = 0;
}

static inline int strong_eq(const ic_index *ix, uint64_t blk, const uint8_t strong[16])
{
    return memcmp(ix->records + blk * IC_SIG_RECORD + 4, strong, 16) == 0;
}

/* The strong hash of the window at p, from the hashes computed ahead if it
 * is among them.  With pred_blk >= 0 (rule 1 applies at p) and SIMD lanes to
 * spare, also hashes the windows one, two and three blocks on, which rule 1
 * will want next if the copy continues: four hashes for the price of about
 * one.  A window's hash depends only on its bytes, so this changes no result. */
static void strong_at(ic_encoder *e, const uint8_t *buf, uint64_t base, uint64_t end, uint64_t p,
                      int64_t pred_blk, uint8_t strong[16])
{
    const ic_index *ix = e->ix;
    const uint64_t bs = ix->bs;
    if (e->spec_n && p >= e->spec_pos && (p - e->spec_pos) % bs == 0 && (p - e->spec_pos) / bs < e->spec_n) {
        memcpy(strong, e->spec[(p - e->spec_pos) / bs], 16);
        return;
    }
    const uint8_t *w = buf + (p - base);
    unsigned n = 1;
    if (pred_blk >= 0 && e->simd) {
        while (n < 4 && end - p >= (n + 1) * bs && (uint64_t)pred_blk + n < ix->nfull && p + n * bs < e->limit)
            n++;
    }
    if (n == 1) {
        ic_blake2b_128(w, bs, strong);
        return;
    }
    const uint8_t *in[4];
    uint8_t *out[4];
    for (unsigned j = 0; j < 4; j++) {
        unsigned k = j < n ? j : 0; /* spare lanes repeat the first window */
        in[j] = w + k * bs;
        out[j] = e->spec[j];
    }
    ic_blake2b_128_x4(in, bs, out);
    e->spec_pos = p;
    e->spec_n = n;
    memcpy(strong, e->spec[0], 16);
}

/* Rule 2: full blocks with this weak sum, ascending, confirmed by strong hash. */
static int64_t lookup(ic_encoder *e, const uint8_t *buf, uint64_t base, uint64_t end, uint64_t p,
                      uint8_t strong[16], int *have_strong)
{
    const ic_index *ix = e->ix;
    uint32_t h = e->h;
    if (!filter_hit(ix, h))
        return -1;
    uint32_t b = mix(h) >> (32 - ix->tbits);
    for (uint32_t i = ix->bstart[b]; i < ix->bstart[b + 1]; i++) {
        if (ix->entries[i].weak != h)
            continue;
        if (!*have_strong) {
            strong_at(e, buf, base, end, p, -1, strong);
            *have_strong = 1;
        }
        if (strong_eq(ix, ix->entries[i].idx, strong))
            return (int64_t)ix->entries[i].idx;
    }
    return -1;
}

static inline int64_t mod_bs(int64_t x, uint32_t bs)
{
    int64_t r = x % (int64_t)bs;
    return r < 0 ? r + bs : r;
}

int ic_encoder_scan(ic_encoder *e, const uint8_t *buf, size_t len, uint64_t base, int final,
                    ic_op *ops, size_t cap, size_t *nops)
{
    const ic_index *ix = e->ix;
    const uint64_t bs = ix->bs;
    const uint64_t end = base + len;
    op_out o = {ops, 0};

    *nops = 0;
    if (cap < IC_OP_MARGIN || base > e->lit_start || end < e->seen_end)
        return -1;
    if (e->finished)
        return 0;
    e->seen_end = end;

    for (;;) {
        if (o.n + IC_OP_MARGIN > cap) {
            *nops = o.n;
            return 1;
        }
        uint64_t p = e->pos;
        if (p >= e->limit || end - p < bs)
            break;
        const uint8_t *w = buf + (p - base);
        uint8_t strong[16];
        int have_strong = 0;
        int64_t blk = -1;

        /* Rule 1: the block that keeps the last match's alignment. */
        if (e->have_delta) {
            int64_t q = (int64_t)p + e->delta;
            if (q >= 0 && mod_bs(q, (uint32_t)bs) == 0 && (uint64_t)q / bs < ix->nfull) {
                strong_at(e, buf, base, end, p, q / (int64_t)bs, strong);
                have_strong = 1;
                if (strong_eq(ix, (uint64_t)q / bs, strong))
                    blk = q / (int64_t)bs;
            }
        }
        /* Rule 2. */
        if (blk < 0) {
            if (!e->h_valid) {
                e->h = ic_weak_sum(&ix->wt, w, bs);
                e->h_valid = 1;
            }
            blk = lookup(e, buf, base, end, p, strong, &have_strong);
        }
        if (blk >= 0) {
            take_match(e, &o, p, (uint64_t)blk, bs);
            continue;
        }

        /* Rule 3: byte p is literal.  Slide until a weak sum passes the
         * filter, the data runs out, the limit, the literal cap, or the next
         * position where rule 1 applies. */
        flush_copy(e, &o);
        if (end - p == bs)
            break; /* the next byte is not here yet */
        uint64_t stop = end - bs;
        if (stop > e->limit)
            stop = e->limit;
        if (stop > e->lit_start + IC_LITERAL_MAX)
            stop = e->lit_start + IC_LITERAL_MAX;
        if (e->have_delta) {
            uint64_t next = p + (bs - (uint64_t)mod_bs((int64_t)p + e->delta, (uint32_t)bs));
            if (stop > next)
                stop = next;
        }
        uint32_t h = e->h;
        const uint32_t *outtab = ix->outtab;
        do {
            h = ic_weak_roll(h, w[0], w[bs], outtab);
            w++;
            p++;
        } while (p < stop && !filter_hit(ix, h));
        e->h = h;
        e->pos = p;
        if (p - e->lit_start == IC_LITERAL_MAX)
            flush_literal(e, &o, p);
    }

    if (!final) {
        *nops = o.n;
        return 0;
    }

    /* Final: the short block at the very end, then flush everything. */
    if (e->limit == IC_NO_LIMIT) {
        uint32_t r = ix->short_len;
        if (r && end - e->pos >= r) {
            uint64_t s = end - r;
            const uint8_t *w = buf + (s - base);
            uint64_t blk = ix->nfull;
            if (ic_weak_sum(&ix->wt, w, r) == ix->short_weak) {
                uint8_t strong[16];
                ic_blake2b_128(w, r, strong);
                if (strong_eq(ix, blk, strong))
                    take_match(e, &o, s, blk, r);
            }
        }
        flush_literal(e, &o, end);
        e->pos = end;
    } else {
        uint64_t t = e->limit < end ? e->limit : end;
        if (t < e->pos)
            t = e->pos;
        flush_literal(e, &o, t);
        e->pos = t;
    }
    flush_copy(e, &o);
    e->finished = 1;
    *nops = o.n;
    return 0;
}

/* ---- self-test -------------------------------------------------------- */

int ic_selftest(void)
{
    /* RFC 7693 appendix A: BLAKE2b-512("abc"). */
    static const uint8_t abc512[64] = {
        0xBA, 0x80, 0xA5, 0x3F, 0x98, 0x1C, 0x4D, 0x0D, 0x6A, 0x27, 0x97, 0xB6, 0x9F, 0x12, 0xF6, 0xE9,
        0x4C, 0x21, 0x2F, 0x14, 0x68, 0x5A, 0xC4, 0xB7, 0x4B, 0x12, 0xBB, 0x6F, 0xDB, 0xFF, 0xA2, 0xD1,
        0x7D, 0x87, 0xC5, 0x39, 0x2A, 0xAB, 0x79, 0x2D, 0xC2, 0x52, 0xD5, 0xDE, 0x45, 0x33, 0xCC, 0x95,
        0x18, 0xD3, 0x8A, 0xA8, 0xDB, 0xF1, 0x92, 0x5A, 0xB9, 0x23, 0x86, 0xED, 0xD4, 0x00, 0x99, 0x23,
    };
    uint8_t out[64];
    ic_blake2b_state s;
    ic_blake2b_init(&s, 64, NULL, 0);
    ic_blake2b_update(&s, "abc", 3);
    ic_blake2b_final(&s, out);
    if (memcmp(out, abc512, 64) != 0)
        return 1;

    /* The one-shot 128-bit digest equals the incremental one, across the
     * block-boundary lengths, and fed in uneven pieces. */
    uint8_t data[1000];
    uint32_t x = 12345u;
    for (size_t i = 0; i < sizeof data; i++) {
        x = x * 1103515245u + 12345u;
        data[i] = (uint8_t)(x >> 24);
    }
    static const size_t lens[] = {0, 1, 127, 128, 129, 255, 256, 257, 1000};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        uint8_t a[16], b[16];
        ic_blake2b_128(data, lens[k], a);
        ic_blake2b_init(&s, 16, NULL, 0);
        size_t done = 0, step = 1;
        while (done < lens[k]) {
            size_t n = lens[k] - done < step ? lens[k] - done : step;
            ic_blake2b_update(&s, data + done, n);
            done += n;
            step = step * 3 + 1;
        }
        ic_blake2b_final(&s, b);
        if (memcmp(a, b, 16) != 0)
            return 2;
    }

    /* Rolling the weak sum gives the same value as computing it afresh. */
    ic_weak_tables wt;
    ic_weak_tables_init(&wt);
    uint32_t outtab[256];
    const size_t win = 77;
    ic_weak_outtab_init(outtab, win);
    uint32_t h = ic_weak_sum(&wt, data, win);
    for (size_t p = 0; p + win < sizeof data; p++) {
        h = ic_weak_roll(h, data[p], data[p + win], outtab);
        if (h != ic_weak_sum(&wt, data + p + 1, win))
            return 3;
    }
    /* Known answers: "" -> 0; "a" -> 'a' + 1; "ab" -> 98 * M + 99. */
    if (ic_weak(data, 0) != 0u || ic_weak((const uint8_t *)"a", 1) != 98u ||
        ic_weak((const uint8_t *)"ab", 2) != 98u * IC_WEAK_MULT + 99u)
        return 4;
    /* The SIMD BLAKE2b variants agree with the scalar one. */
    if (ic_blake2b_x4_selftest() != 0)
        return 5;
    /* The SIMD weak sum agrees with the tables, at every length and alignment. */
    ic_weak_tables scalar = wt;
    scalar.wide = NULL;
    for (size_t off = 0; off < 8; off++)
        for (size_t n = 0; off + n <= sizeof data && n <= 300; n++)
            if (ic_weak_sum(&wt, data + off, n) != ic_weak_sum(&scalar, data + off, n))
                return 6;
    return 0;
}
