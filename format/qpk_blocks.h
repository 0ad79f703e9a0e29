/*
 * Block layouts as structs (FORMAT.md section 6): ggml's, after ggml-common.h's block_*
 * structs, and the heads of qpk's group types, whose codes follow the head. Code names
 * a field by offsetof and a block by sizeof instead of writing byte offsets; blocks sit
 * at any byte of a mapped file, so fields are read and written through memcpy or byte
 * by byte at those offsets, never through a pointer to the struct.
 *
 * 16-bit fields (f16 scales, int8z's zero point) are uint16_t and the rest arrays of
 * bytes, so no field needs more than 2-byte alignment and every struct below is its
 * fields end to end: each size is asserted to be that sum, which is also the size ggml
 * gives the block.
 */
#ifndef QPK_BLOCKS_H
#define QPK_BLOCKS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The struct is n bytes: its fields with no padding between or after them. */
#define QPK_BLOCK_SIZE(type, n) _Static_assert(sizeof(type) == (n), #type " must be " #n " bytes, without padding")
/* Bytes of one field. */
#define QPK_FIELD_SIZE(type, field) sizeof(((type *)0)->field)

/* ------------------------------------------------------ ggml's block types */

/* Q4_0 and Q8_0: what qpk's int4s and int8 blocks of 32 are byte for byte. */
typedef struct qpk_block_q4_0 {
    uint16_t d;
    uint8_t qs[16];
} qpk_block_q4_0;
QPK_BLOCK_SIZE(qpk_block_q4_0, 2 + 16);

typedef struct qpk_block_q8_0 {
    uint16_t d;
    uint8_t qs[32]; /* int8 codes */
} qpk_block_q8_0;
QPK_BLOCK_SIZE(qpk_block_q8_0, 2 + 32);

typedef struct qpk_block_q4_1 {
    uint16_t d, m;
    uint8_t qs[16];
} qpk_block_q4_1;
QPK_BLOCK_SIZE(qpk_block_q4_1, 2 + 2 + 16);

/* qh: ggml's uint8_t[4], bit j = bit 4 of weight j (a u32, read by memcpy). */
typedef struct qpk_block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[16];
} qpk_block_q5_0;
QPK_BLOCK_SIZE(qpk_block_q5_0, 2 + 4 + 16);

typedef struct qpk_block_q5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[16];
} qpk_block_q5_1;
QPK_BLOCK_SIZE(qpk_block_q5_1, 2 + 2 + 4 + 16);

typedef struct qpk_block_q2_k {
    uint8_t scales[16]; /* low nibble scale, high nibble min */
    uint8_t qs[64];
    uint16_t d, dmin;
} qpk_block_q2_k;
QPK_BLOCK_SIZE(qpk_block_q2_k, 16 + 64 + 2 + 2);

typedef struct qpk_block_q3_k {
    uint8_t hmask[32];
    uint8_t qs[64];
    uint8_t scales[12]; /* 16 6-bit scales */
    uint16_t d;
} qpk_block_q3_k;
QPK_BLOCK_SIZE(qpk_block_q3_k, 32 + 64 + 12 + 2);

typedef struct qpk_block_q4_k {
    uint16_t d, dmin;
    uint8_t scales[12]; /* 8 6-bit scales and 8 6-bit mins */
    uint8_t qs[128];
} qpk_block_q4_k;
QPK_BLOCK_SIZE(qpk_block_q4_k, 2 + 2 + 12 + 128);

typedef struct qpk_block_q5_k {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[32];
    uint8_t qs[128];
} qpk_block_q5_k;
QPK_BLOCK_SIZE(qpk_block_q5_k, 2 + 2 + 12 + 32 + 128);

typedef struct qpk_block_q6_k {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    uint16_t d;
} qpk_block_q6_k;
QPK_BLOCK_SIZE(qpk_block_q6_k, 128 + 64 + 16 + 2);

/* ggml's i-quants: codes that index a codebook (ggml-common.h's tables; FORMAT.md section 6). */
typedef struct qpk_block_iq4_nl {
    uint16_t d;
    uint8_t qs[16]; /* indices into the 16 non-linear values, as q4_0's nibbles */
} qpk_block_iq4_nl;
QPK_BLOCK_SIZE(qpk_block_iq4_nl, 2 + 16);

typedef struct qpk_block_iq4_xs {
    uint16_t d;
    uint16_t scales_h;  /* bits 4-5 of the 8 6-bit scales, two per scale */
    uint8_t scales_l[4]; /* bits 0-3, a nibble per scale */
    uint8_t qs[128];    /* per 32 weights, 16 bytes as iq4_nl's */
} qpk_block_iq4_xs;
QPK_BLOCK_SIZE(qpk_block_iq4_xs, 2 + 2 + 4 + 128);

/* The lower i-quants: 256 weights in 8 sub-blocks of 32, each 4 groups of 8 whose values are a codebook entry. */
typedef struct qpk_block_iq2_xxs {
    uint16_t d;
    uint8_t qs[64]; /* per sub-block: 4 entry indices, then a u32 of 4 7-bit sign sets and a 4-bit scale */
} qpk_block_iq2_xxs;
QPK_BLOCK_SIZE(qpk_block_iq2_xxs, 2 + 64);

typedef struct qpk_block_iq2_xs {
    uint16_t d;
    uint8_t qs[64];    /* per group a u16: 9-bit entry index, 7-bit sign set */
    uint8_t scales[8]; /* per sub-block two 4-bit scales, one per 16 weights */
} qpk_block_iq2_xs;
QPK_BLOCK_SIZE(qpk_block_iq2_xs, 2 + 64 + 8);

typedef struct qpk_block_iq2_s {
    uint16_t d;
    uint8_t qs[64];    /* 32 low bytes of the 10-bit entry indices, then 32 bytes of 8 signs per group */
    uint8_t qh[8];     /* per sub-block the indices' top 2 bits */
    uint8_t scales[8]; /* as iq2_xs's */
} qpk_block_iq2_s;
QPK_BLOCK_SIZE(qpk_block_iq2_s, 2 + 64 + 8 + 8);

typedef struct qpk_block_iq3_xxs {
    uint16_t d;
    uint8_t qs[96]; /* 64 entry indices (4 values each), then per sub-block a u32 as iq2_xxs's */
} qpk_block_iq3_xxs;
QPK_BLOCK_SIZE(qpk_block_iq3_xxs, 2 + 96);

typedef struct qpk_block_iq3_s {
    uint16_t d;
    uint8_t qs[64];    /* low bytes of the 9-bit entry indices (4 values each) */
    uint8_t qh[8];     /* per sub-block the 8 indices' top bits */
    uint8_t signs[32]; /* per group 8 signs */
    uint8_t scales[4]; /* a 4-bit scale per sub-block */
} qpk_block_iq3_s;
QPK_BLOCK_SIZE(qpk_block_iq3_s, 2 + 64 + 8 + 32 + 4);

typedef struct qpk_block_iq1_s {
    uint16_t d;
    uint8_t qs[32]; /* low bytes of the 11-bit entry indices */
    uint8_t qh[16]; /* per sub-block a u16: 4 x 3 index bits, a 3-bit scale, the delta's sign */
} qpk_block_iq1_s;
QPK_BLOCK_SIZE(qpk_block_iq1_s, 2 + 32 + 16);

/* No d field: its f16 is the top nibbles of the four u16 of scales (qpk_iq1_m_scale). */
typedef struct qpk_block_iq1_m {
    uint8_t qs[32];    /* low bytes of the 11-bit entry indices */
    uint8_t qh[16];    /* per group a nibble: 3 index bits, the delta's sign */
    uint8_t scales[8]; /* 16 3-bit scales (two per sub-block), and the f16's nibbles */
} qpk_block_iq1_m;
QPK_BLOCK_SIZE(qpk_block_iq1_m, 32 + 16 + 8);

/* The f16 bits of an IQ1_M block's scale from its scales field: bits 12..15 of each u16, the first lowest. */
static inline uint16_t qpk_iq1_m_scale(const uint8_t *scales)
{
    uint16_t h = 0;
    for (int k = 0; k < 4; k++)
        h |= (uint16_t)(scales[2 * k + 1] >> 4 << 4 * k);
    return h;
}

/* Ternary: weights d (t - 1), t in {0, 1, 2}; d after the codes. */
typedef struct qpk_block_tq1_0 {
    uint8_t qs[48]; /* 5 trits a byte, as a base-3 fraction of 256 */
    uint8_t qh[4];  /* 4 trits a byte, the same way */
    uint16_t d;
} qpk_block_tq1_0;
QPK_BLOCK_SIZE(qpk_block_tq1_0, 48 + 4 + 2);

typedef struct qpk_block_tq2_0 {
    uint8_t qs[64]; /* 2 bits per weight */
    uint16_t d;
} qpk_block_tq2_0;
QPK_BLOCK_SIZE(qpk_block_tq2_0, 64 + 2);

/* ------------------------------------------- heads of qpk's group types */

typedef struct qpk_head_int8 {
    uint16_t d;
} qpk_head_int8;
QPK_BLOCK_SIZE(qpk_head_int8, 2);

typedef struct qpk_head_int4s {
    uint16_t d;
} qpk_head_int4s;
QPK_BLOCK_SIZE(qpk_head_int4s, 2);

typedef struct qpk_head_int4 {
    uint16_t d;
    uint8_t z;
    uint8_t zero; /* always 0: the codes start at offset 4, where Q4_1's do */
} qpk_head_int4;
QPK_BLOCK_SIZE(qpk_head_int4, 2 + 1 + 1);

typedef struct qpk_head_int8z {
    uint16_t d;
    uint16_t z; /* up to 256: GPTQ's v1 zero of 0 reads back as 255 + 1 */
} qpk_head_int8z;
QPK_BLOCK_SIZE(qpk_head_int8z, 2 + 2);

/* MLX's affine group: scale and bias as 16-bit floats of the model's dtype (bf16 or f16), then the codes as int4's or
 * int8z's (w = s q + b). At f16 and 4 bits a group of 32 is byte for byte ggml's Q4_1 (d = s, m = b). */
typedef struct qpk_head_affine {
    uint16_t s, b;
} qpk_head_affine;
QPK_BLOCK_SIZE(qpk_head_affine, 2 + 2);

/* The weight of a bf16 affine group's largest code, s (2^bits - 1) + b, rounded once: what overflows first. */
static inline float qpk_affine_top(const uint8_t *block, uint32_t bits)
{
    uint32_t s = (uint32_t)(block[0] | block[1] << 8) << 16, b = (uint32_t)(block[2] | block[3] << 8) << 16;
    float fs, fb;
    memcpy(&fs, &s, 4), memcpy(&fb, &b, 4);
    return fmaf(fs, (float)((1u << bits) - 1), fb);
}

/* What GGUF export copies as it is: int8 and int4s blocks of 32 are Q8_0 and Q4_0, int4's codes sit where Q4_1's do. */
_Static_assert(sizeof(qpk_head_int8) + 32 == sizeof(qpk_block_q8_0), "int8 at 32 is Q8_0");
_Static_assert(sizeof(qpk_head_int4s) + 16 == sizeof(qpk_block_q4_0), "int4s at 32 is Q4_0");
_Static_assert(sizeof(qpk_head_int4) == offsetof(qpk_block_q4_1, qs), "int4's codes where Q4_1's are");
_Static_assert(sizeof(qpk_head_affine) == offsetof(qpk_block_q4_1, qs), "an affine group's codes where Q4_1's are");
_Static_assert(offsetof(qpk_head_affine, b) == offsetof(qpk_block_q4_1, m), "an affine group's bias where Q4_1's m is");
_Static_assert(offsetof(qpk_block_q4_0, qs) == offsetof(qpk_block_q8_0, qs), "Q4_0's and Q8_0's codes after d alone");

/* A little-endian u16 at p, which may sit at any byte. */
static inline uint16_t qpk_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

#endif
