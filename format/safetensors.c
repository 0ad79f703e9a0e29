/*
 * safetensors reader. Layout: u64 little-endian header length N, N bytes of UTF-8
 * JSON ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}),
 * then the data area, which the tensors must tile exactly (as the reference
 * implementation requires: no overlaps, no holes, nothing after the last tensor).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qpk_private.h"
#include "qpk/safetensors.h"
#include "qpk_json.h"

struct qpk_safetensors {
    const uint8_t *base;
    uint64_t size;
    bool mapped;
    qpk_st_tensor *tensors; /* sorted by name */
    size_t n;
    char *names;
};

static const struct {
    const char *name;
    size_t size;
} DTYPES[QPK_ST_DTYPE_COUNT_] = {
    [QPK_ST_F64] = {"F64", 8},     [QPK_ST_F32] = {"F32", 4},        [QPK_ST_F16] = {"F16", 2},
    [QPK_ST_BF16] = {"BF16", 2},   [QPK_ST_I64] = {"I64", 8},        [QPK_ST_I32] = {"I32", 4},
    [QPK_ST_I16] = {"I16", 2},     [QPK_ST_I8] = {"I8", 1},          [QPK_ST_U64] = {"U64", 8},
    [QPK_ST_U32] = {"U32", 4},     [QPK_ST_U16] = {"U16", 2},        [QPK_ST_U8] = {"U8", 1},
    [QPK_ST_BOOL] = {"BOOL", 1},   [QPK_ST_F8_E4M3] = {"F8_E4M3", 1}, [QPK_ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *qpk_st_dtype_name(qpk_st_dtype d) { return d < QPK_ST_DTYPE_COUNT_ ? DTYPES[d].name : "?"; }
size_t qpk_st_dtype_size(qpk_st_dtype d) { return d < QPK_ST_DTYPE_COUNT_ ? DTYPES[d].size : 0; }

/* A JSON number that is a non-negative integer exactly representable in a double. */
static bool json_uint(const cJSON *it, uint64_t *out)
{
    if (!cJSON_IsNumber(it))
        return false;
    double v = it->valuedouble;
    if (!(v >= 0) || v > 9007199254740992.0 || v != floor(v))
        return false;
    *out = (uint64_t)v;
    return true;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const qpk_st_tensor *)a)->name, ((const qpk_st_tensor *)b)->name);
}

static int cmp_data(const void *a, const void *b)
{
    const qpk_st_tensor *x = *(const qpk_st_tensor *const *)a, *y = *(const qpk_st_tensor *const *)b;
    if (x->data != y->data)
        return (const uint8_t *)x->data < (const uint8_t *)y->data ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static qpk_status parse_entry(qpk_st_tensor *t, const cJSON *it, const uint8_t *data, uint64_t data_size,
                              qpk_err *e)
{
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(it, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsObject(it) || !cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs))
        return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s': needs dtype, shape and data_offsets", t->name);
    t->dtype = QPK_ST_DTYPE_COUNT_;
    for (int d = 0; d < QPK_ST_DTYPE_COUNT_; d++)
        if (strcmp(dt->valuestring, DTYPES[d].name) == 0)
            t->dtype = (qpk_st_dtype)d;
    if (t->dtype == QPK_ST_DTYPE_COUNT_)
        return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s': unknown dtype \"%.32s\"", t->name, dt->valuestring);
    int nd = cJSON_GetArraySize(shape);
    if (nd > QPK_ST_MAX_DIMS)
        return qpk_err_setf(e, QPK_E_LIMIT, "tensor '%s': %d dimensions (at most %d)", t->name, nd, QPK_ST_MAX_DIMS);
    t->ndim = nd;
    t->numel = 1;
    const cJSON *x;
    int d = 0;
    cJSON_ArrayForEach(x, shape)
    {
        uint64_t v;
        if (!json_uint(x, &v))
            return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s': shape holds a non-integer or negative value", t->name);
        t->shape[d++] = (int64_t)v;
        if (__builtin_mul_overflow(t->numel, v, &t->numel))
            return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s': element count overflows", t->name);
    }
    uint64_t begin, end;
    if (cJSON_GetArraySize(offs) != 2 || !json_uint(cJSON_GetArrayItem(offs, 0), &begin) ||
        !json_uint(cJSON_GetArrayItem(offs, 1), &end) || begin > end)
        return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s': data_offsets must be [begin, end] with begin <= end",
                            t->name);
    if (end > data_size)
        return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s': data_offsets end %llu is past the data area (%llu bytes)",
                            t->name, (unsigned long long)end, (unsigned long long)data_size);
    if (__builtin_mul_overflow(t->numel, (uint64_t)DTYPES[t->dtype].size, &t->nbytes) || t->nbytes != end - begin)
        return qpk_err_setf(e, QPK_E_CORRUPT,
                            "tensor '%s': data_offsets span %llu bytes but shape x %s needs %llu", t->name,
                            (unsigned long long)(end - begin), DTYPES[t->dtype].name,
                            (unsigned long long)t->nbytes);
    t->data = data + begin;
    return QPK_OK;
}

static qpk_status check_tiling(qpk_safetensors *st, const uint8_t *data, uint64_t data_size, qpk_err *e)
{
    const qpk_st_tensor **by_off = malloc((st->n ? st->n : 1) * sizeof *by_off);
    if (!by_off)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    for (size_t i = 0; i < st->n; i++)
        by_off[i] = &st->tensors[i];
    qsort(by_off, st->n, sizeof *by_off, cmp_data);
    uint64_t pos = 0;
    qpk_status s = QPK_OK;
    for (size_t i = 0; i < st->n && s == QPK_OK; i++) {
        uint64_t b = (uint64_t)((const uint8_t *)by_off[i]->data - data);
        if (b < pos)
            s = qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s' overlaps '%s'", by_off[i]->name, by_off[i - 1]->name);
        else if (b > pos)
            s = qpk_err_setf(e, QPK_E_CORRUPT, "hole of %llu bytes before tensor '%s' in the data area",
                             (unsigned long long)(b - pos), by_off[i]->name);
        pos = b + by_off[i]->nbytes;
    }
    if (s == QPK_OK && pos != data_size)
        s = qpk_err_setf(e, QPK_E_CORRUPT, "%llu bytes after the last tensor are not covered by the header",
                         (unsigned long long)(data_size - pos));
    free(by_off);
    return s;
}

static qpk_status parse_header(qpk_safetensors *st, const cJSON *root, const uint8_t *data,
                               uint64_t data_size, qpk_err *e)
{
    if (!cJSON_IsObject(root))
        return qpk_err_setf(e, QPK_E_CORRUPT, "header is not a JSON object");
    size_t n = 0, name_bytes = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, root)
    {
        if (strcmp(it->string, "__metadata__") == 0) {
            const cJSON *m;
            if (!cJSON_IsObject(it))
                return qpk_err_setf(e, QPK_E_CORRUPT, "__metadata__ is not an object");
            cJSON_ArrayForEach(m, it) if (!cJSON_IsString(m))
                return qpk_err_setf(e, QPK_E_CORRUPT, "__metadata__ value '%.64s' is not a string", m->string);
            continue;
        }
        if (!it->string[0])
            return qpk_err_setf(e, QPK_E_CORRUPT, "a tensor has an empty name");
        n++;
        name_bytes += strlen(it->string) + 1;
    }
    st->tensors = calloc(n ? n : 1, sizeof *st->tensors);
    st->names = malloc(name_bytes ? name_bytes : 1);
    if (!st->tensors || !st->names)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory for %zu tensors", n);
    char *cursor = st->names;
    cJSON_ArrayForEach(it, root)
    {
        if (strcmp(it->string, "__metadata__") == 0)
            continue;
        qpk_st_tensor *t = &st->tensors[st->n++];
        size_t len = strlen(it->string) + 1;
        memcpy(cursor, it->string, len);
        t->name = cursor;
        cursor += len;
        QPK_TRY(parse_entry(t, it, data, data_size, e));
    }
    qsort(st->tensors, st->n, sizeof *st->tensors, cmp_name);
    for (size_t i = 1; i < st->n; i++)
        if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0)
            return qpk_err_setf(e, QPK_E_CORRUPT, "duplicate tensor name '%s'", st->tensors[i].name);
    return check_tiling(st, data, data_size, e);
}

static qpk_status validate(qpk_safetensors *st, qpk_err *e)
{
    if (st->size < 8)
        return qpk_err_setf(e, QPK_E_CORRUPT, "file of %llu bytes has no 8-byte header length",
                            (unsigned long long)st->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | st->base[i];
    if (n > QPK_ST_MAX_HEADER)
        return qpk_err_setf(e, QPK_E_LIMIT, "header length %llu exceeds the limit of %u bytes",
                            (unsigned long long)n, QPK_ST_MAX_HEADER);
    if (n > st->size - 8)
        return qpk_err_setf(e, QPK_E_CORRUPT, "header length %llu runs past the end of the file (%llu bytes)",
                            (unsigned long long)n, (unsigned long long)st->size);
    const uint8_t *h = st->base + 8;
    if (n == 0 || h[0] != '{')
        return qpk_err_setf(e, QPK_E_CORRUPT, "header does not start with '{'");
    cJSON *root;
    qpk_status s = qpk_json_parse("header", (const char *)h, (size_t)n, &root, e);
    if (s == QPK_OK)
        s = parse_header(st, root, h + n, st->size - 8 - n, e);
    cJSON_Delete(root);
    return s;
}

qpk_status qpk_st_open_memory(qpk_safetensors **out, const void *buf, size_t size, qpk_err *e)
{
    *out = NULL;
    qpk_safetensors *st = calloc(1, sizeof *st);
    if (!st)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    st->base = buf, st->size = size;
    qpk_status s = validate(st, e);
    if (s != QPK_OK) {
        qpk_st_close(st);
        return s;
    }
    *out = st;
    return QPK_OK;
}

qpk_status qpk_st_open(qpk_safetensors **out, const char *path, qpk_err *e)
{
    *out = NULL;
    const void *p;
    size_t size;
    qpk_status s = qpk_map_file(path, MADV_SEQUENTIAL, &p, &size, e); /* converted front to back */
    if (s != QPK_OK)
        return s;
    if ((s = qpk_st_open_memory(out, p, size, e)) != QPK_OK) {
        qpk_unmap_file(p, size);
        return qpk_err_prefix(e, s, "%s", path);
    }
    (*out)->mapped = p != NULL;
    return QPK_OK;
}

void qpk_st_close(qpk_safetensors *st)
{
    if (!st)
        return;
    if (st->mapped)
        qpk_unmap_file(st->base, (size_t)st->size);
    free(st->tensors);
    free(st->names);
    free(st);
}

size_t qpk_st_n_tensors(const qpk_safetensors *st) { return st->n; }
uint64_t qpk_st_file_size(const qpk_safetensors *st) { return st->size; }

const qpk_st_tensor *qpk_st_tensor_at(const qpk_safetensors *st, size_t i)
{
    return i < st->n ? &st->tensors[i] : NULL;
}

const qpk_st_tensor *qpk_st_find(const qpk_safetensors *st, const char *name)
{
    qpk_st_tensor key = {.name = name};
    return bsearch(&key, st->tensors, st->n, sizeof key, cmp_name);
}
