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
