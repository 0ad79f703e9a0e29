/*
 * ggml tensor types: names, block sizes and block bytes. A ggml type that a qpk type
 * reads as it is gets all three from that type's row (QPK_TYPE_TABLE: ggml_type and
 * ggml_name); the reader also sizes a few that no qpk type computes with.
 */
#include "qpk/gguf.h"
#include "qpk_private.h"

typedef struct ggml_info {
    const char *name;
    uint32_t block, bytes; /* elements per block, bytes per block */
} ggml_info;

/* Types no row reads, sized from ggml-common.h's block structs (GGUF's I32 is not qpk's i32, a permutation). */
static const ggml_info OTHER[] = {
    [9] = {"Q8_1", 32, 36}, [15] = {"Q8_K", 256, 292}, [24] = {"I8", 1, 1},  [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},   [27] = {"I64", 1, 8},      [28] = {"F64", 1, 8},
};

/* The qpk type whose bytes are ggml_type's as they are (the one row that names it), or NULL. */
static const qpk_type_info *reading_row(uint32_t ggml_type, uint32_t *type)
{
    for (uint32_t t = 0; t < QPK_TYPE_COUNT_; t++)
        if (QPK_TYPE_TABLE[t].ggml_name && QPK_TYPE_TABLE[t].ggml_type == (int32_t)ggml_type) {
            *type = t;
            return &QPK_TYPE_TABLE[t];
        }
    return NULL;
}

/* The group (0 for plain types) at which a reading row's blocks are ggml's. */
static uint32_t ggml_group(const qpk_type_info *r)
{
    return r->elem_bytes ? 0 : r->block ? r->block : QPK_GGML_GROUP;
}

static bool ggml_info_of(uint32_t ggml_type, ggml_info *out)
{
    uint32_t type;
    const qpk_type_info *r = reading_row(ggml_type, &type);
    if (r) {
        const uint32_t g = ggml_group(r);
        *out = (ggml_info){r->ggml_name, g ? g : 1, g ? (uint32_t)qpk_type_block_bytes(type, g) : r->elem_bytes};
        return true;
    }
    if (ggml_type < sizeof OTHER / sizeof *OTHER && OTHER[ggml_type].name) {
        *out = OTHER[ggml_type];
        return true;
    }
    return false;
}

const char *qpk_ggml_type_name(uint32_t t)
{
    ggml_info g;
    return ggml_info_of(t, &g) ? g.name : NULL;
}

qpk_status qpk_ggml_nbytes(uint32_t type, int n_dims, const uint64_t *ne, uint64_t *out, qpk_err *e)
{
    ggml_info info;
    if (!ggml_info_of(type, &info))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "ggml type %u is not one this reader knows", type);
    if (n_dims < 1 || n_dims > 4)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%d dimensions (1 to 4)", n_dims);
    const ggml_info *g = &info;
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
    uint32_t t;
    const qpk_type_info *r = reading_row(ggml_type, &t);
    if (!r)
        return false;
    *type = t, *group = ggml_group(r);
    return true;
}
