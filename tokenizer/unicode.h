/*
 * What the tokenizer needs from Unicode: UTF-8 decoding, the character
 * classes of the Qwen2 pre-tokenizer regex (\p{L}, \p{N}, \s), and NFC. The tables
 * behind them are generated from one UCD release (unicode_tables.c, see README.md), so
 * the classes and the normalization always agree on which characters exist.
 * Internal to qpk_tokenizer (tests include it too).
 */
#ifndef QPK_TOKENIZER_UNICODE_H
#define QPK_TOKENIZER_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qpk_private.h" /* UTF-8 */

/* Property bits of a code point (qpk_uc_prop). */
#define QPK_UC_L 0x01        /* general category Lu Ll Lt Lm Lo: the regex's \p{L} */
#define QPK_UC_N 0x02        /* Nd Nl No: \p{N} */
#define QPK_UC_WS 0x04       /* White_Space (PropList.txt): Oniguruma's Unicode \s */
#define QPK_UC_QC_MAYBE 0x08 /* NFC_QC=Maybe: may compose with what precedes it */
#define QPK_UC_QC_NO 0x10    /* NFC_QC=No: never survives NFC */
#define QPK_UC_QC_MASK (QPK_UC_QC_MAYBE | QPK_UC_QC_NO)

#define QPK_UC_MAX_DECOMP 4 /* longest full canonical decomposition (checked by the generator) */

/* Generated tables (unicode_tables.c). */
extern const char qpk_uc_version[];
extern const uint32_t qpk_uc_prop_limit, qpk_uc_ccc_limit;
extern const uint16_t qpk_uc_prop_index[], qpk_uc_ccc_index[];
extern const uint8_t qpk_uc_prop_blocks[], qpk_uc_ccc_blocks[];
extern const uint32_t qpk_uc_decomp_cp[];    /* sorted code points with a canonical mapping */
extern const uint16_t qpk_uc_decomp_start[]; /* their full decompositions: pool[start[i]..start[i+1]) */
extern const uint32_t qpk_uc_decomp_pool[];
extern const uint32_t qpk_uc_n_decomp;
extern const uint64_t qpk_uc_comp[]; /* sorted (first << 42 | second << 21 | composite) */
extern const uint32_t qpk_uc_n_comp;

static inline uint8_t qpk_uc_prop(uint32_t cp)
{
    if (cp >= qpk_uc_prop_limit)
        return 0;
    return qpk_uc_prop_blocks[(size_t)qpk_uc_prop_index[cp >> 7] << 7 | (cp & 127)];
}

/* Canonical combining class (0 for starters). */
static inline uint8_t qpk_uc_ccc(uint32_t cp)
{
    if (cp >= qpk_uc_ccc_limit)
        return 0;
    return qpk_uc_ccc_blocks[(size_t)qpk_uc_ccc_index[cp >> 7] << 7 | (cp & 127)];
}

/*
 * Decodes one code point of text already known to be valid UTF-8 (no checks: the
 * encoder repairs its input first). *n gets the sequence length, 1..4.
 */
static inline uint32_t qpk_utf8_get(const unsigned char *s, size_t *n)
{
    uint32_t c = s[0];
    if (c < 0x80) {
        *n = 1;
        return c;
    }
    if (c < 0xE0) {
        *n = 2;
        return (c & 0x1F) << 6 | (s[1] & 0x3Fu);
    }
    if (c < 0xF0) {
        *n = 3;
        return (c & 0x0F) << 12 | (s[1] & 0x3Fu) << 6 | (s[2] & 0x3Fu);
    }
    *n = 4;
    return (c & 0x07) << 18 | (s[1] & 0x3Fu) << 12 | (s[2] & 0x3Fu) << 6 | (s[3] & 0x3Fu);
}

/* Growable scratch space for NFC, reused across calls by its owner. */
typedef struct qpk_nfc_buf {
    char *out;
    size_t out_len, out_cap;
    uint32_t *cp; /* one chunk's code points while it is normalized */
    size_t cp_cap;
} qpk_nfc_buf;

void qpk_nfc_buf_free(qpk_nfc_buf *b);

/*
 * NFC of valid UTF-8 s[0..n): canonical decomposition, canonical ordering, canonical
 * composition (Hangul algorithmically; composition exclusions honoured). Text that
 * passes the NFC quick check is not copied: *res = s. Otherwise *res points into b->out
 * (valid until the next call with b). Only the chunks around failing characters are
 * normalized, cut at code points with NFC_QC=Yes and combining class 0, where
 * NFC(x + y) = NFC(x) + NFC(y). Returns false on out-of-memory.
 */
bool qpk_nfc(const char *s, size_t n, qpk_nfc_buf *b, const char **res, size_t *res_len);

/* The canonical composite of (a, b), or 0 (exposed for tests). */
uint32_t qpk_uc_compose(uint32_t a, uint32_t b);

#endif
