/* The table of tensor types: names and storage sizes. Kernels live in quant/. */
#include <strings.h>

#include "internal.h"

typedef struct type_info {
    const char *name;
    uint32_t elem_bytes; /* plain types: bytes per element; 0 for quantized */
} type_info;

static const type_info TYPES[QPK_TYPE_COUNT_] = {
    [QPK_TYPE_F32] = {"f32", 4},
    [QPK_TYPE_F16] = {"f16", 2},
    [QPK_TYPE_BF16] = {"bf16", 2},
    [QPK_TYPE_INT8] = {"int8", 0},
    [QPK_TYPE_INT4] = {"int4", 0},
    [QPK_TYPE_INT4S] = {"int4s", 0},
};

size_t qpk_type_block_bytes(uint32_t type, uint32_t g)
{
    switch (type) {
    case QPK_TYPE_INT8: return 2 + (size_t)g;      /* f16 d, g x int8 */
    case QPK_TYPE_INT4: return 4 + (size_t)g / 2;  /* f16 d, u8 z, u8 0, g/2 bytes of codes */
    case QPK_TYPE_INT4S: return 2 + (size_t)g / 2; /* f16 d, g/2 bytes of codes */
    default: return 0;
    }
}

const char *qpk_type_name(uint32_t type)
{
    return type < QPK_TYPE_COUNT_ ? TYPES[type].name : NULL;
}

bool qpk_type_from_name(const char *name, qpk_type *out)
{
    for (uint32_t t = 0; t < QPK_TYPE_COUNT_; t++)
        if (TYPES[t].name && strcasecmp(name, TYPES[t].name) == 0) {
            *out = (qpk_type)t;
            return true;
        }
    return false;
}

bool qpk_type_is_quantized(uint32_t type)
{
    return type < QPK_TYPE_COUNT_ && TYPES[type].name && TYPES[type].elem_bytes == 0;
}

static bool mul_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

qpk_status qpk_tensor_nbytes(uint32_t type, uint32_t group_size, int ndim, const int64_t *dims,
                             uint64_t *out, qpk_err *e)
{
    if (type >= QPK_TYPE_COUNT_ || !TYPES[type].name)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "unknown tensor type id %u", type);
    if (ndim < 1 || ndim > QPK_MAX_DIMS)
        return qpk_err_setf(e, QPK_E_CORRUPT, "ndim %d outside 1..%d", ndim, QPK_MAX_DIMS);
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (dims[i] < 0)
            return qpk_err_setf(e, QPK_E_CORRUPT, "negative dimension %lld", (long long)dims[i]);
        if (!mul_ok(numel, (uint64_t)dims[i], &numel))
            return qpk_err_setf(e, QPK_E_LIMIT, "element count overflows 64 bits");
    }
    const type_info *t = &TYPES[type];
    if (t->elem_bytes) {
        if (group_size != 0)
            return qpk_err_setf(e, QPK_E_CORRUPT, "type %s takes no group size (got %u)", t->name,
                                group_size);
        if (!mul_ok(numel, t->elem_bytes, out))
            return qpk_err_setf(e, QPK_E_LIMIT, "byte size overflows 64 bits");
        return QPK_OK;
    }
    /* Groups of group_size run along the last (input) dimension of each row. */
    int64_t cols = dims[ndim - 1];
    if (group_size == 0 || group_size % QPK_GROUP_QUANTUM != 0 || group_size > (1u << 20))
        return qpk_err_setf(e, QPK_E_CORRUPT, "type %s needs a group size that is a positive multiple of %d (got %u)",
                            t->name, QPK_GROUP_QUANTUM, group_size);
    if (cols % group_size != 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "type %s: rows of %lld are not a whole number of groups of %u", t->name,
                            (long long)cols, group_size);
    if (!mul_ok(numel / group_size, qpk_type_block_bytes(type, group_size), out))
        return qpk_err_setf(e, QPK_E_LIMIT, "byte size overflows 64 bits");
    return QPK_OK;
}
