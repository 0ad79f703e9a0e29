/* ggml tensor types: the block size and block bytes of those whose layout we know. */
#include "qpk/gguf.h"

typedef struct ggml_info {
    const char *name;
    uint32_t block, bytes; /* elements per block, bytes per block */
} ggml_info;

/* Sizes from ggml's block structs (ggml-common.h); types left out are unknown to the reader. */
static const ggml_info GGML[] = {
    [0] = {"F32", 1, 4},      [1] = {"F16", 1, 2},      [2] = {"Q4_0", 32, 18},   [3] = {"Q4_1", 32, 20},
    [6] = {"Q5_0", 32, 22},   [7] = {"Q5_1", 32, 24},   [8] = {"Q8_0", 32, 34},   [9] = {"Q8_1", 32, 36},
    [10] = {"Q2_K", 256, 84}, [11] = {"Q3_K", 256, 110}, [12] = {"Q4_K", 256, 144}, [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210}, [15] = {"Q8_K", 256, 292}, [24] = {"I8", 1, 1},     [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},     [27] = {"I64", 1, 8},     [28] = {"F64", 1, 8},     [30] = {"BF16", 1, 2},
};

const char *qpk_ggml_type_name(uint32_t t)
{
    return t < sizeof GGML / sizeof *GGML ? GGML[t].name : NULL;
}

qpk_status qpk_ggml_nbytes(uint32_t type, int n_dims, const uint64_t *ne, uint64_t *out, qpk_err *e)
{
    if (!qpk_ggml_type_name(type))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "ggml type %u is not one this reader knows", type);
    if (n_dims < 1 || n_dims > 4)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%d dimensions (1 to 4)", n_dims);
    const ggml_info *g = &GGML[type];
    if (ne[0] % g->block != 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "rows of %llu are not whole %s blocks of %u",
                            (unsigned long long)ne[0], g->name, g->block);
    uint64_t n;
    if (ne[0] > (uint64_t)INT64_MAX || __builtin_mul_overflow(ne[0] / g->block, (uint64_t)g->bytes, &n))
        return qpk_err_setf(e, QPK_E_LIMIT, "tensor size overflows 64 bits");
    for (int d = 1; d < n_dims; d++)
        if (ne[d] > (uint64_t)INT64_MAX || __builtin_mul_overflow(n, ne[d], &n))
            return qpk_err_setf(e, QPK_E_LIMIT, "tensor size overflows 64 bits");
    *out = n;
    return QPK_OK;
}

bool qpk_type_of_ggml(uint32_t ggml_type, uint32_t *type, uint32_t *group)
{
    static const struct {
        uint32_t ggml, type, group;
    } MAP[] = {
        {QPK_GGML_F32, QPK_TYPE_F32, 0},     {QPK_GGML_F16, QPK_TYPE_F16, 0},     {QPK_GGML_BF16, QPK_TYPE_BF16, 0},
        {QPK_GGML_Q8_0, QPK_TYPE_INT8, 32},  {QPK_GGML_Q4_0, QPK_TYPE_INT4S, 32}, {QPK_GGML_Q4_1, QPK_TYPE_Q4_1, 32},
        {QPK_GGML_Q5_0, QPK_TYPE_Q5_0, 32},  {QPK_GGML_Q5_1, QPK_TYPE_Q5_1, 32},  {QPK_GGML_Q2_K, QPK_TYPE_Q2_K, 256},
        {QPK_GGML_Q3_K, QPK_TYPE_Q3_K, 256}, {QPK_GGML_Q4_K, QPK_TYPE_Q4_K, 256}, {QPK_GGML_Q5_K, QPK_TYPE_Q5_K, 256},
        {QPK_GGML_Q6_K, QPK_TYPE_Q6_K, 256},
    };
    for (size_t i = 0; i < sizeof MAP / sizeof *MAP; i++)
        if (MAP[i].ggml == ggml_type) {
            *type = MAP[i].type, *group = MAP[i].group;
            return true;
        }
    return false;
}
