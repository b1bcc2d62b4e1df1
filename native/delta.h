/*
 * Ironcore delta encoder kernel: block signatures and the rolling search of
 * new data against an old file's signature.  Plain C99, no Python; the Python
 * API and the reference implementation live in ironfs/format/delta.py and
 * ironfs/format/_delta_py.py, and both must produce identical results.
 *
 * Signature record (one per block of the old file, the last may be short):
 *     weak  u32 little-endian  (rollsum.h)
 *     strong 16 bytes          (BLAKE2b, 16-byte digest, unkeyed)
 *
 * Matching rule, applied at each window start p of the new data (window
 * [p, p+bs), bs the block size):
 *   1. Prediction: if an earlier match put old offset q at new offset p'
 *      and p + (q - p') is a multiple of bs naming a full old block, that
 *      block is tried first, by strong hash alone.  Right after a match this
 *      is the next old block, so a contiguous copy stays one op.
 *   2. Otherwise the full blocks whose weak sum equals the window's are tried
 *      in ascending index order, strong hash confirming; the first wins.
 *   3. No match: byte p becomes literal and the window slides one byte.
 *   At the very end of the new data (only without a scan limit) the old
 *   file's short final block, if any, is tried against the last bytes
 *   (weak then strong).
 * Ops: adjacent contiguous copies merge; a literal run is cut into pieces of
 * IC_LITERAL_MAX bytes (the last piece shorter).
 */
#ifndef IRONCORE_DELTA_H
#define IRONCORE_DELTA_H

#include <stddef.h>
#include <stdint.h>

#define IC_SIG_RECORD 20          /* bytes per signature record */
#define IC_LITERAL_MAX 1048576    /* longest literal op: bounds the buffer a caller must keep */
#define IC_BLOCK_MAX 1048576      /* largest block size accepted */
#define IC_OP_MARGIN 8            /* ops array room one scan step may need */

#define IC_COPY 0
#define IC_LITERAL 1

/* kind IC_COPY: a = old offset, b = length.
 * kind IC_LITERAL: a = absolute offset in the new data, b = length. */
typedef struct {
    uint64_t a;
    uint64_t b;
    int32_t kind;
} ic_op;

/* Weak sum of a whole buffer (rollsum.h). */
uint32_t ic_weak(const uint8_t *data, size_t len);

/* Signature records for consecutive blocks of data: writes ceil(len / bs)
 * records of IC_SIG_RECORD bytes, the last block possibly short. */
void ic_sig_blocks(const uint8_t *data, size_t len, uint32_t bs, uint8_t *records);

/* Lookup structure over a signature.  records is borrowed and must outlive
 * the index; nblocks must equal ceil(file_size / bs).  NULL on bad arguments
 * or lack of memory.  Read-only after creation: encoders on several threads
 * may share one. */
typedef struct ic_index ic_index;
ic_index *ic_index_new(const uint8_t *records, uint64_t nblocks, uint32_t bs, uint64_t file_size);
void ic_index_free(ic_index *ix);

#define IC_NO_LIMIT UINT64_MAX

/* One scan over new data starting at absolute offset start.  With a limit,
 * windows start only below it (data past it is look-ahead) and the ops stop
 * at max(limit, end of the last copy); the short final block is not tried. */
typedef struct ic_encoder ic_encoder;
ic_encoder *ic_encoder_new(const ic_index *ix, uint64_t start, uint64_t limit);
void ic_encoder_free(ic_encoder *e);

/* Feed a buffer holding new data [base, base + len).  It must start at or
 * before ic_encoder_keep_from() and reach at least as far as the previous
 * buffer did.  Writes at most cap ops (cap >= IC_OP_MARGIN) and sets *nops.
 * Returns 0 when everything decidable was decided (with final set, the scan
 * is then complete), 1 when the ops array filled up (call again with the
 * same buffer), -1 on a buffer that breaks the rules above. */
int ic_encoder_scan(ic_encoder *e, const uint8_t *buf, size_t len, uint64_t base, int final,
                    ic_op *ops, size_t cap, size_t *nops);

/* First absolute offset the next buffer must hold (the pending literal's
 * start); after the final scan, the offset where this scan's ops end. */
uint64_t ic_encoder_keep_from(const ic_encoder *e);

/* Known-answer and consistency checks of BLAKE2b and the weak sum; 0 if all
 * pass, else the number of the first failing check. */
int ic_selftest(void);

#endif
