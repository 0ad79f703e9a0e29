/*
 * libFuzzer target: a reference-logits file (safetensors: tokens [S, T], logits [S, T, V])
 * checked by qpk_ref_file_check and read as qpk_verify_ref_file reads it: every token, every
 * row converted to f32 and measured against fixed model logits. For finite logits the
 * measurement must never be impossible (a KLD below zero beyond rounding, a negative
 * log-likelihood), whatever their scale or offset: that would trap.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../verify/metrics.h"
#include "qpk/convert.h"
#include "qpk/quant.h"
#include "qpk/verify.h"

#define MAX_V 4096
#define MAX_ROWS 256

static int64_t token_at(const qpk_st_tensor *t, uint64_t i)
{
    if (t->dtype == QPK_ST_I64) {
        int64_t v;
        memcpy(&v, (const uint8_t *)t->data + 8 * i, 8);
        return v;
    }
    int32_t v;
    memcpy(&v, (const uint8_t *)t->data + 4 * i, 4);
    return v;
}

static void read_as_verify(const qpk_safetensors *st, int64_t V)
{
    const qpk_st_tensor *tk = qpk_st_find(st, "tokens"), *lg = qpk_st_find(st, "logits");
    static float model[MAX_V], ref[MAX_V], scratch[2 * MAX_V];
    for (int64_t v = 0; v < V; v++)
        model[v] = (float)(3.0 * sin((double)v)); /* a fixed, non-uniform model */
    qpk_type lt = lg->dtype == QPK_ST_F32 ? QPK_TYPE_F32 : lg->dtype == QPK_ST_F16 ? QPK_TYPE_F16 : QPK_TYPE_BF16;
    size_t esize = qpk_st_dtype_size(lg->dtype);
    int64_t S = tk->shape[0], T = tk->shape[1];
    const qpk_kernels *k = qpk_kernels_best();
    for (int64_t r = 0; r < S * T && r < MAX_ROWS; r++) {
        int64_t t = token_at(tk, (uint64_t)r);
        if (t < 0 || t >= V) /* qpk_ref_file_check let it through: the reader would index past the vocabulary */
            __builtin_trap();
        int32_t target = (r % T) + 1 < T ? (int32_t)token_at(tk, (uint64_t)r + 1) : -1;
        qpk_row_to_f32(lt, (const uint8_t *)lg->data + (size_t)r * (size_t)V * esize, ref, (size_t)V);
        qpk_position p;
        qpk_measure(k, model, ref, V, target, scratch, &p);
        const char *what;
        double value;
        if (p.bad_model < 0 && p.bad_ref < 0 && qpk_position_impossible(&p, &what, &value))
            __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qpk_safetensors *st;
    qpk_err e;
    if (qpk_st_open_memory(&st, data, size, &e) != QPK_OK)
        return 0;
    /* The vocabulary the file claims (so that the reading is reached), and one it does not match. */
    const qpk_st_tensor *lg = qpk_st_find(st, "logits");
    int64_t V = lg && lg->ndim == 3 && lg->shape[2] >= 1 && lg->shape[2] <= MAX_V ? lg->shape[2] : 16;
    if (qpk_ref_file_check(st, V, &e) == QPK_OK)
        read_as_verify(st, V);
    (void)qpk_ref_file_check(st, V + 1, NULL);
    qpk_st_close(st);
    return 0;
}
