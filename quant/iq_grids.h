/*
 * The codebooks of ggml's i-quants (FORMAT.md section 6): ggml-common.h's iq2xxs_grid,
 * iq2xs_grid, iq2s_grid, iq3xxs_grid, iq3s_grid and iq1s_grid, data of the format. Each
 * entry is a handful of small values from a few levels, so qpk stores an entry as its
 * level indices in a u16 (iq_grids.c, written by tests/llamacpp/make_iq_grids.c) rather
 * than ggml's 8 bytes: a quarter of the size, and nothing to keep in step by hand.
 */
#ifndef QPK_IQ_GRIDS_H
#define QPK_IQ_GRIDS_H

#include <stdint.h>

typedef enum qpk_iq_grid_id {
    QPK_IQ2XXS_GRID, /* 256 entries of 8 values in {8, 25, 43} */
    QPK_IQ2XS_GRID,  /* 512 of the same */
    QPK_IQ2S_GRID,   /* 1024 of the same */
    QPK_IQ3XXS_GRID, /* 256 entries of 4 values in {4, 12, .., 52, 62} */
    QPK_IQ3S_GRID,   /* 512 entries of 4 odd values 1..15 */
    QPK_IQ1S_GRID,   /* 2048 entries of 8 values in {-1, 0, 1} (IQ1_S and IQ1_M) */
    QPK_IQ_GRID_COUNT_
} qpk_iq_grid_id;

typedef struct qpk_iq_grid {
    const char *name;        /* ggml-common.h's name of the table */
    const uint16_t *entries; /* entry i: value j's level index in bits [bits j, bits (j + 1)) */
    uint32_t n;              /* entries */
    uint32_t width;          /* values per entry (8 or 4) */
    uint32_t bits;           /* bits per level index (2 or 3) */
    int8_t levels[8];        /* the value of each index */
} qpk_iq_grid;

extern const qpk_iq_grid QPK_IQ_GRIDS[QPK_IQ_GRID_COUNT_];

/* IQ4_NL's and IQ4_XS's 16 values (ggml_blocks.c; ggml-common.h's kvalues_iq4nl). */
extern const int8_t qpk_iq4nl_values[16];

/* The values of entry i (< g->n) into v[0 .. g->width - 1]. */
static inline void qpk_iq_grid_entry(const qpk_iq_grid *g, uint32_t i, int8_t *v)
{
    const unsigned code = g->entries[i], mask = (1u << g->bits) - 1;
    for (uint32_t j = 0; j < g->width; j++)
        v[j] = g->levels[code >> g->bits * j & mask];
}

/* The eight sign bits of a group of 8 weights from the 7 stored (s < 128): the eighth keeps the count of
 * negated weights even (ggml-common.h's ksigns_iq2xs, computed rather than stored). */
static inline unsigned qpk_iq_signs(unsigned s)
{
    return s | (unsigned)__builtin_parity(s) << 7;
}

#endif
