/* libFuzzer target: ggml's block types as qpk reads and writes them (every type with a reference
 * dequantization, the first byte choosing; the first 8 as ever, so old inputs keep their type). For
 * arbitrary blocks: dequantization touches only the row's bytes and gives finite weights wherever the
 * block's f16 scales are finite (the check the GGUF reader makes); for the types qpk writes, the grid
 * GPTQ quantizes on is the dequantization's own (codes packed onto it dequantize to a v(q) - m exactly,
 * v(q) the code or its codebook value). For arbitrary finite rows: every quantizer's row dequantizes to
 * finite weights no further from the input than the largest magnitude of its block of 256. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ggml_blocks.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { MAX_BLOCKS = 8, MAX_W = 256 * MAX_BLOCKS };

/* The k-th of the ggml types qpk decodes (every one, as the type table grows), cycling. */
static uint32_t ggml_type_at(unsigned k)
{
    uint32_t n = 0;
    for (uint32_t t = 0; t < QPK_TYPE_COUNT_; t++)
        n += qpk_ggml_type(t);
    k %= n;
    for (uint32_t t = 0;; t++)
        if (qpk_ggml_type(t) && k-- == 0)
            return t;
}

/* Arbitrary blocks: dequantize, and pack random codes onto each block's grid. */
static void blocks(uint32_t type, const uint8_t *data, size_t size)
{
    const qpk_type_info *ti = qpk_type_info_of(type);
    const size_t bb = qpk_type_block_bytes(type, ti->block), n = ti->block;
    size_t nb = size / bb < MAX_BLOCKS ? size / bb : MAX_BLOCKS;
    if (!nb)
        return;
    uint8_t *in = malloc(nb * bb); /* exactly the row: ASan sees any read past it */
    float *w = malloc(nb * n * sizeof *w);
    memcpy(in, data, nb * bb);
    qpk_ggml_dequantize_row(type, in, (int64_t)(nb * n), w);
    for (size_t b = 0; b < nb; b++)
        if (qpk_first_bad_scale(type, ti->block, in + b * bb, 1) == 1)
            for (size_t i = 0; i < n; i++)
                if (!isfinite(w[b * n + i]))
                    __builtin_trap();
    float a[16], m[16];
    int32_t q[256];
    int qmin, qmax;
    for (size_t b = 0; b < nb && qpk_ggml_can_quantize(type); b++) {
        uint8_t *blk = in + b * bb;
        const int sub = qpk_ggml_grid(type, blk, a, m, &qmin, &qmax);
        for (size_t i = 0; i < n; i++) /* codes drawn from the block's own bytes */
            q[i] = qmin + (int)(data[(b * bb + i * 7) % size] % (unsigned)(qmax - qmin + 1));
        qpk_ggml_pack_codes(type, blk, q);
        float back[256];
        qpk_ggml_dequantize_row(type, blk, (int64_t)n, back);
        for (size_t i = 0; i < n; i++) {
            const float want = a[i / (size_t)sub] * qpk_ggml_code_value(type, q[i]) - m[i / (size_t)sub];
            if (memcmp(&want, &back[i], sizeof want) && !(isnan(want) && isnan(back[i])))
                __builtin_trap();
        }
    }
    free(in);
    free(w);
}

/* Arbitrary finite rows (int16 steps of 2^-8, so no f16 scale overflows), with and without importances. */
static void rows(uint32_t type, bool weighted, const uint8_t *data, size_t size)
{
    const qpk_type_info *ti = qpk_type_info_of(type);
    const size_t n = ti->block, nw = size / 2 < MAX_W ? size / 2 / n * n : MAX_W;
    if (!nw || !qpk_ggml_can_quantize(type))
        return;
    float *x = malloc(nw * sizeof *x), *imp = malloc(nw * sizeof *imp), *y = malloc(nw * sizeof *y);
    uint8_t *out = malloc(nw / n * qpk_type_block_bytes(type, ti->block));
    for (size_t i = 0; i < nw; i++) {
        int16_t v;
        memcpy(&v, data + 2 * i, 2);
        x[i] = (float)v / 256.0f;
        imp[i] = (float)(data[(i * 13) % size] + 1);
    }
    qpk_err e;
    if (qpk_ggml_quantize_row(type, x, (int64_t)nw, weighted ? imp : NULL, out, &e) != QPK_OK)
        __builtin_trap(); /* finite input of modest range: nothing to refuse */
    qpk_ggml_dequantize_row(type, out, (int64_t)nw, y);
    for (size_t s = 0; s < nw; s += 256 < nw ? 256 : nw) {
        const size_t len = nw - s < 256 ? nw - s : 256;
        float amax = 0;
        for (size_t i = 0; i < len; i++)
            amax = fmaxf(amax, fabsf(x[s + i]));
        for (size_t i = 0; i < len; i++)
            if (!isfinite(y[s + i]) || fabsf(y[s + i] - x[s + i]) > amax * 1.001f + 1e-6f)
                __builtin_trap();
    }
    free(x);
    free(imp);
    free(y);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const uint32_t type = ggml_type_at(data[0] & 0x3f);
    if (data[0] & 0x80)
        rows(type, data[0] & 0x40, data + 1, size - 1);
    else
        blocks(type, data + 1, size - 1);
    return 0;
}
