/*
 * The size and group rules of tensor types, derived from the type table
 * (qpk_private.h). Kernels (quant/) and exporters (GGUF) key their own per-type code
 * on the same ids.
 */
#include <math.h>
#include <stdio.h>
#include <strings.h>

#include "internal.h"

#define TYPES QPK_TYPE_TABLE

const qpk_type_info *qpk_type_info_of(uint32_t type)
{
    return type < QPK_TYPE_COUNT_ && TYPES[type].name ? &TYPES[type] : NULL;
}

const char *qpk_type_name(uint32_t type)
{
    const qpk_type_info *t = qpk_type_info_of(type);
    return t ? t->name : NULL;
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
    const qpk_type_info *t = qpk_type_info_of(type);
    return t && t->elem_bytes == 0;
}

bool qpk_type_is_quant_target(uint32_t type)
{
    const qpk_type_info *t = qpk_type_info_of(type);
    return t && t->quant_target;
}

/* Whether a type's row is listed: a --quant target (quant), held by one of the folder layouts (folders), or both. */
static bool listed(const qpk_type_info *t, bool quant, unsigned folders)
{
    return t->name && (!quant || t->quant_target) && (!folders || (t->folders & folders));
}

/* The names of the listed types in id order, as qpk_quant_type_list writes them. */
static size_t type_list(bool quant, unsigned folders, char *buf, size_t cap, const char *sep, const char *last)
{
    size_t n = 0, left = 0;
    for (uint32_t t = 0; t < QPK_TYPE_COUNT_; t++)
        left += listed(&TYPES[t], quant, folders);
    if (cap)
        buf[0] = '\0';
    for (uint32_t t = 0; t < QPK_TYPE_COUNT_; t++) {
        if (!listed(&TYPES[t], quant, folders))
            continue;
        const char *before = n == 0 ? "" : left == 1 ? last : sep;
        const int k = snprintf(buf ? buf + (n < cap ? n : cap) : NULL, n < cap ? cap - n : 0, "%s%s", before,
                               TYPES[t].name);
        n += k > 0 ? (size_t)k : 0;
        left--;
    }
    return n;
}

size_t qpk_quant_type_list(char *buf, size_t cap, const char *sep, const char *last)
{
    return type_list(true, 0, buf, cap, sep, last);
}

size_t qpk_folder_type_list(unsigned folder, bool quant, char *buf, size_t cap)
{
    return type_list(quant, folder, buf, cap, ", ", " or ");
}

/* The group rule without the row: what a block type accepts as its group size. */
static bool group_size_ok(const qpk_type_info *t, uint32_t group)
{
    if (t->elem_bytes)
        return group == 0;
    if (t->block)
        return group == t->block;
    return group > 0 && group % QPK_GROUP_QUANTUM == 0 && group <= QPK_MAX_GROUP;
}

bool qpk_group_ok(uint32_t type, uint32_t group, int64_t cols)
{
    const qpk_type_info *t = qpk_type_info_of(type);
    return t && cols >= 0 && group_size_ok(t, group) && (t->elem_bytes || cols % group == 0);
}

size_t qpk_type_block_bytes(uint32_t type, uint32_t group)
{
    const qpk_type_info *t = qpk_type_info_of(type);
    return t && !t->elem_bytes ? t->head_bytes + (size_t)group * t->bits / 8 : 0;
}

uint64_t qpk_first_bad_scale(uint32_t type, uint32_t group, const void *blocks, uint64_t n)
{
    const qpk_type_info *t = qpk_type_info_of(type);
    const size_t bb = qpk_type_block_bytes(type, group);
    const uint8_t *p = blocks;
    for (uint64_t b = 0; bb && b < n; b++) {
        for (int k = 0; k < 2 && t->scale_at[k] >= 0; k++) {
            const uint8_t *at = p + b * bb + (size_t)t->scale_at[k];
            const uint16_t h = t->scale_nibbles ? qpk_iq1_m_scale(at) : qpk_le16(at);
            if ((h & (t->scale_bf16 ? 0x7f80 : 0x7c00)) == (t->scale_bf16 ? 0x7f80 : 0x7c00)) /* exponent all ones */
                return b;
        }
        /* bf16 halves reach f32's range: the largest code's weight s qmax + b must stay finite too */
        if (t->scale_bf16 && !isfinite(qpk_affine_top(p + b * bb, t->bits)))
            return b;
    }
    return n;
}

size_t qpk_type_row_bytes(uint32_t type, uint32_t group, int64_t cols)
{
    if (!qpk_group_ok(type, group, cols))
        return 0;
    const qpk_type_info *t = qpk_type_info_of(type);
    return t->elem_bytes ? (size_t)cols * t->elem_bytes : (size_t)(cols / group) * qpk_type_block_bytes(type, group);
}

static bool mul_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

qpk_status qpk_tensor_nbytes(uint32_t type, uint32_t group_size, int ndim, const int64_t *dims,
                             uint64_t *out, qpk_err *e)
{
    const qpk_type_info *t = qpk_type_info_of(type);
    if (!t)
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
    if (!group_size_ok(t, group_size)) {
        if (t->elem_bytes)
            return qpk_err_setf(e, QPK_E_CORRUPT, "type %s takes no group size (got %u)", t->name, group_size);
        if (t->block)
            return qpk_err_setf(e, QPK_E_CORRUPT, "type %s has blocks of %u (got a group size of %u)", t->name,
                                t->block, group_size);
        return qpk_err_setf(e, QPK_E_CORRUPT, "type %s needs a group size that is a positive multiple of %d (got %u)",
                            t->name, QPK_GROUP_QUANTUM, group_size);
    }
    if (t->elem_bytes)
        return mul_ok(numel, t->elem_bytes, out) ? QPK_OK : qpk_err_setf(e, QPK_E_LIMIT, "byte size overflows 64 bits");
    /* Groups run along the last (input) dimension of each row. */
    int64_t cols = dims[ndim - 1];
    if (!qpk_group_ok(type, group_size, cols))
        return qpk_err_setf(e, QPK_E_CORRUPT, "type %s: rows of %lld are not a whole number of groups of %u", t->name,
                            (long long)cols, group_size);
    if (!mul_ok(numel / group_size, qpk_type_block_bytes(type, group_size), out))
        return qpk_err_setf(e, QPK_E_LIMIT, "byte size overflows 64 bits");
    return QPK_OK;
}
