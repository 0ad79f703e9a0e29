/*
 * GGUF reader. A cursor walks the file; every read checks the bytes left first, with
 * overflow-safe arithmetic, so no length in the file can send it past the end.
 */
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "qpk/gguf.h"

#define MAX_ITEMS 1000000u      /* tensors, key-values */
#define MAX_ARRAY (1u << 26)    /* elements of one array */

typedef struct kv {
    char *key;
    qpk_gguf_value v;
    uint64_t *str_offsets; /* STRING arrays: offset of each element's length field */
} kv;

struct qpk_gguf {
    const uint8_t *base;
    uint64_t size;
    bool mapped;
    uint32_t version, alignment;
    kv *kvs;
    size_t n_kv;
    qpk_gguf_tensor *t;
    size_t n_t;
    char *names;
    /* Lookup indexes built once at open: the key-values and the tensors sorted by name, for
     * binary search (a scan per lookup made validation quadratic in the number of keys). */
    const void **kv_by_key, **t_by_name;
};

typedef struct cursor {
    const uint8_t *base;
    uint64_t pos, size;
    qpk_err *e;
} cursor;

static qpk_status need(cursor *c, uint64_t n, const char *what)
{
    if (n > c->size - c->pos)
        return qpk_err_setf(c->e, QPK_E_CORRUPT, "%s at byte %llu runs past the end of the file", what,
                            (unsigned long long)c->pos);
    return QPK_OK;
}


static qpk_status get_u32(cursor *c, uint32_t *v, const char *what)
{
    QPK_TRY(need(c, 4, what));
    *v = rd_u32(c->base + c->pos);
    c->pos += 4;
    return QPK_OK;
}

static qpk_status get_u64(cursor *c, uint64_t *v, const char *what)
{
    QPK_TRY(need(c, 8, what));
    *v = rd_u64(c->base + c->pos);
    c->pos += 8;
    return QPK_OK;
}

static qpk_status get_str(cursor *c, const char **s, uint64_t *len, const char *what)
{
    QPK_TRY(get_u64(c, len, what));
    QPK_TRY(need(c, *len, what));
    *s = (const char *)c->base + c->pos;
    c->pos += *len;
    return QPK_OK;
}

static const uint32_t SCALAR_SIZE[QPK_GGUF_TYPE_COUNT_] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

static qpk_status scalar(cursor *c, uint32_t type, qpk_gguf_value *v)
{
    uint32_t n = SCALAR_SIZE[type];
    QPK_TRY(need(c, n, "a value"));
    const uint8_t *p = c->base + c->pos;
    uint64_t raw = n == 1 ? p[0] : n == 2 ? (uint64_t)(p[0] | p[1] << 8) : n == 4 ? rd_u32(p) : rd_u64(p);
    c->pos += n;
    switch (type) {
    case QPK_GGUF_I8: v->num.i = (int8_t)raw; break;
    case QPK_GGUF_I16: v->num.i = (int16_t)raw; break;
    case QPK_GGUF_I32: v->num.i = (int32_t)raw; break;
    case QPK_GGUF_I64: v->num.i = (int64_t)raw; break;
    case QPK_GGUF_F32: {
        float f;
        uint32_t b = (uint32_t)raw;
        memcpy(&f, &b, 4);
        v->num.f = f;
        break;
    }
    case QPK_GGUF_F64: memcpy(&v->num.f, &raw, 8); break;
    case QPK_GGUF_BOOL:
        if (raw > 1)
            return qpk_err_setf(c->e, QPK_E_CORRUPT, "a bool holds %u", (unsigned)raw);
        /* fall through */
    default: v->num.u = raw; break;
    }
    return QPK_OK;
}

static qpk_status value(cursor *c, uint32_t type, kv *k)
{
    qpk_gguf_value *v = &k->v;
    v->type = type;
    if (type >= QPK_GGUF_TYPE_COUNT_)
        return qpk_err_setf(c->e, QPK_E_CORRUPT, "unknown value type %u", type);
    if (type == QPK_GGUF_STRING)
        return get_str(c, &v->str, &v->len, "a string");
    if (type != QPK_GGUF_ARRAY)
        return scalar(c, type, v);
    QPK_TRY(get_u32(c, &v->elem_type, "an array type"));
    QPK_TRY(get_u64(c, &v->len, "an array length"));
    if (v->elem_type == QPK_GGUF_ARRAY)
        return qpk_err_setf(c->e, QPK_E_UNSUPPORTED, "arrays of arrays are not supported");
    if (v->elem_type >= QPK_GGUF_TYPE_COUNT_)
        return qpk_err_setf(c->e, QPK_E_CORRUPT, "unknown array element type %u", v->elem_type);
    if (v->len > MAX_ARRAY)
        return qpk_err_setf(c->e, QPK_E_LIMIT, "an array of %llu elements (limit %u)", (unsigned long long)v->len,
                            MAX_ARRAY);
    if (v->elem_type != QPK_GGUF_STRING) {
        QPK_TRY(need(c, v->len * SCALAR_SIZE[v->elem_type], "an array"));
        v->elems = c->base + c->pos;
        c->pos += v->len * SCALAR_SIZE[v->elem_type];
        return QPK_OK;
    }
    /* Each string's length must be read to find the next: index them once (after checking
     * that the file can hold that many lengths, so a lying count cannot make us allocate). */
    QPK_TRY(need(c, v->len * 8, "an array of strings"));
    if (!(k->str_offsets = malloc((size_t)(v->len ? v->len : 1) * sizeof *k->str_offsets)))
        return qpk_err_setf(c->e, QPK_E_NOMEM, "out of memory");
    for (uint64_t i = 0; i < v->len; i++) {
        const char *s;
        uint64_t n;
        k->str_offsets[i] = c->pos;
        QPK_TRY(get_str(c, &s, &n, "an array string"));
    }
    return QPK_OK;
}

/*
 * The items indexes sort are structs whose first member is their name (kv.key,
 * qpk_gguf_tensor.name): a pointer to one, converted, points to that char pointer.
 */
static const char *name_of(const void *item) { return *(const char *const *)item; }
_Static_assert(offsetof(kv, key) == 0 && offsetof(qpk_gguf_tensor, name) == 0, "an indexed item starts with its name");

static int cmp_name(const void *a, const void *b)
{
    return strcmp(name_of(*(const void *const *)a), name_of(*(const void *const *)b));
}

/* Sorts pointers to the n items (of size bytes each) by name into *index, refusing a name given twice. */
static qpk_status build_index(qpk_err *e, size_t n, size_t size, const void *items, const void ***index,
                              const char *what)
{
    const void **v = malloc((n ? n : 1) * sizeof *v);
    if (!v)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        v[i] = (const uint8_t *)items + i * size;
    qsort(v, n, sizeof *v, cmp_name);
    *index = v;
    for (size_t i = 1; i < n; i++)
        if (!strcmp(name_of(v[i - 1]), name_of(v[i])))
            return qpk_err_setf(e, QPK_E_CORRUPT, "%s '%.64s' appears twice", what, name_of(v[i]));
    return QPK_OK;
}

/* The item named name in a sorted index of n, or NULL. */
static const void *lookup(const void *const *index, size_t n, const char *name)
{
    size_t lo = 0, hi = index ? n : 0;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        const int c = strcmp(name_of(index[mid]), name);
        if (c == 0)
            return index[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static qpk_status parse_kvs(qpk_gguf *g, cursor *c)
{
    for (size_t i = 0; i < g->n_kv; i++) {
        kv *k = &g->kvs[i];
        const char *s;
        uint64_t n;
        uint32_t type;
        QPK_TRY(get_str(c, &s, &n, "a key"));
        if (n == 0 || n > 65535)
            return qpk_err_setf(c->e, QPK_E_CORRUPT, "key %zu has length %llu", i, (unsigned long long)n);
        if (!(k->key = malloc((size_t)n + 1)))
            return qpk_err_setf(c->e, QPK_E_NOMEM, "out of memory");
        memcpy(k->key, s, (size_t)n);
        k->key[n] = 0;
        if (strlen(k->key) != n)
            return qpk_err_setf(c->e, QPK_E_CORRUPT, "key %zu holds a NUL byte", i);
        QPK_TRY(get_u32(c, &type, "a value type"));
        k->v.kv = i;
        qpk_status st = value(c, type, k);
        if (st != QPK_OK)
            return qpk_err_prefix(c->e, st, "key '%.64s'", k->key);
    }
    QPK_TRY(build_index(c->e, g->n_kv, sizeof *g->kvs, g->kvs, &g->kv_by_key, "key"));
    qpk_gguf_value a;
    g->alignment = 32;
    if (qpk_gguf_find(g, "general.alignment", &a)) {
        if (a.type != QPK_GGUF_U32 || a.num.u == 0 || a.num.u % 8 || (a.num.u & (a.num.u - 1)) || a.num.u > (1u << 20))
            return qpk_err_setf(c->e, QPK_E_CORRUPT, "general.alignment is not a power of two, multiple of 8, in u32");
        g->alignment = (uint32_t)a.num.u;
    }
    return QPK_OK;
}

static int cmp_offset(const void *a, const void *b)
{
    const qpk_gguf_tensor *x = *(const qpk_gguf_tensor *const *)a, *y = *(const qpk_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static qpk_status parse_tensors(qpk_gguf *g, cursor *c)
{
    if (!(g->names = malloc(g->n_t * 65 + 1)))
        return qpk_err_setf(c->e, QPK_E_NOMEM, "out of memory");
    for (size_t i = 0; i < g->n_t; i++) {
        qpk_gguf_tensor *t = &g->t[i];
        const char *s;
        uint64_t n;
        uint32_t nd;
        QPK_TRY(get_str(c, &s, &n, "a tensor name"));
        if (n == 0 || n > 64)
            return qpk_err_setf(c->e, QPK_E_CORRUPT, "tensor %zu: name of %llu bytes (1..64)", i, (unsigned long long)n);
        char *name = g->names + i * 65;
        memcpy(name, s, (size_t)n);
        name[n] = 0;
        t->name = name;
        QPK_TRY(get_u32(c, &nd, "a dimension count"));
        if (nd < 1 || nd > 4)
            return qpk_err_setf(c->e, QPK_E_CORRUPT, "tensor '%s': %u dimensions (1..4)", name, nd);
        t->n_dims = (int)nd;
        for (uint32_t d = 0; d < nd; d++)
            QPK_TRY(get_u64(c, &t->ne[d], "a dimension"));
        QPK_TRY(get_u32(c, &t->type, "a tensor type"));
        QPK_TRY(get_u64(c, &t->offset, "a tensor offset"));
        qpk_status st = qpk_ggml_nbytes(t->type, t->n_dims, t->ne, &t->nbytes, c->e);
        if (st != QPK_OK)
            return qpk_err_prefix(c->e, st, "tensor '%s'", name);
        if (t->offset % g->alignment)
            return qpk_err_setf(c->e, QPK_E_CORRUPT, "tensor '%s': offset %llu is not aligned to %u", name,
                                (unsigned long long)t->offset, g->alignment);
    }
    QPK_TRY(build_index(c->e, g->n_t, sizeof *g->t, g->t, &g->t_by_name, "tensor name"));
    uint64_t data = align_up(c->pos, g->alignment);
    if (data > g->size && g->n_t)
        return qpk_err_setf(c->e, QPK_E_CORRUPT, "the tensor data would start past the end of the file");
    const qpk_gguf_tensor **by = malloc((g->n_t ? g->n_t : 1) * sizeof *by);
    if (!by)
        return qpk_err_setf(c->e, QPK_E_NOMEM, "out of memory");
    for (size_t i = 0; i < g->n_t; i++) {
        qpk_gguf_tensor *t = &g->t[i];
        if (t->offset > g->size - data || t->nbytes > g->size - data - t->offset) {
            free(by);
            return qpk_err_setf(c->e, QPK_E_CORRUPT, "tensor '%s' [%llu, +%llu) runs past the end of the file",
                                t->name, (unsigned long long)t->offset, (unsigned long long)t->nbytes);
        }
        t->offset += data;
        t->data = g->base + t->offset;
        by[i] = t;
    }
    qsort(by, g->n_t, sizeof *by, cmp_offset);
    qpk_status s = QPK_OK;
    for (size_t i = 1; i < g->n_t && s == QPK_OK; i++)
        if (by[i - 1]->offset + by[i - 1]->nbytes > by[i]->offset)
            s = qpk_err_setf(c->e, QPK_E_CORRUPT, "tensors '%s' and '%s' overlap", by[i - 1]->name, by[i]->name);
    free(by);
    return s;
}

static qpk_status parse(qpk_gguf *g, qpk_err *e)
{
    cursor c = {g->base, 0, g->size, e};
    uint64_t nt, nkv;
    QPK_TRY(need(&c, 4, "the magic"));
    if (memcmp(g->base, "GGUF", 4) != 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "bad magic: not a GGUF file");
    c.pos = 4;
    QPK_TRY(get_u32(&c, &g->version, "the version"));
    if (g->version != 2 && g->version != 3)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "GGUF version %u (this reader knows 2 and 3)", g->version);
    QPK_TRY(get_u64(&c, &nt, "the tensor count"));
    QPK_TRY(get_u64(&c, &nkv, "the key-value count"));
    if (nt > MAX_ITEMS || nkv > MAX_ITEMS)
        return qpk_err_setf(e, QPK_E_LIMIT, "%llu tensors and %llu key-values (limit %u each)",
                            (unsigned long long)nt, (unsigned long long)nkv, MAX_ITEMS);
    g->n_kv = (size_t)nkv, g->n_t = (size_t)nt;
    g->kvs = calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kvs);
    g->t = calloc(g->n_t ? g->n_t : 1, sizeof *g->t);
    if (!g->kvs || !g->t)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    QPK_TRY(parse_kvs(g, &c));
    return parse_tensors(g, &c);
}

qpk_status qpk_gguf_open_memory(qpk_gguf **out, const void *buf, size_t size, qpk_err *e)
{
    *out = NULL;
    qpk_gguf *g = calloc(1, sizeof *g);
    if (!g)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    g->base = buf, g->size = size;
    qpk_status s = parse(g, e);
    if (s != QPK_OK) {
        qpk_gguf_close(g);
        return s;
    }
    *out = g;
    return QPK_OK;
}

qpk_status qpk_gguf_open(qpk_gguf **out, const char *path, qpk_err *e)
{
    *out = NULL;
    const void *p;
    size_t size;
    QPK_TRY(qpk_map_file(path, 0, &p, &size, e));
    qpk_status s = qpk_gguf_open_memory(out, p, size, e);
    if (s != QPK_OK) {
        qpk_unmap_file(p, size);
        return qpk_err_prefix(e, s, "%s", path);
    }
    (*out)->mapped = true;
    return QPK_OK;
}

void qpk_gguf_close(qpk_gguf *g)
{
    if (!g)
        return;
    if (g->mapped)
        qpk_unmap_file(g->base, (size_t)g->size);
    for (size_t i = 0; g->kvs && i < g->n_kv; i++)
        free(g->kvs[i].key), free(g->kvs[i].str_offsets);
    free(g->kvs), free(g->t), free(g->names), free(g->kv_by_key), free(g->t_by_name), free(g);
}

uint32_t qpk_gguf_version(const qpk_gguf *g) { return g->version; }
uint64_t qpk_gguf_file_size(const qpk_gguf *g) { return g->size; }
uint32_t qpk_gguf_alignment(const qpk_gguf *g) { return g->alignment; }
size_t qpk_gguf_n_kv(const qpk_gguf *g) { return g->n_kv; }
size_t qpk_gguf_n_tensors(const qpk_gguf *g) { return g->n_t; }

const char *qpk_gguf_kv_at(const qpk_gguf *g, size_t i, qpk_gguf_value *v)
{
    if (i >= g->n_kv || !g->kvs[i].key)
        return NULL;
    *v = g->kvs[i].v;
    return g->kvs[i].key;
}

bool qpk_gguf_find(const qpk_gguf *g, const char *key, qpk_gguf_value *v)
{
    const kv *k = lookup(g->kv_by_key, g->n_kv, key);
    if (k)
        *v = k->v;
    return k != NULL;
}

const char *qpk_gguf_array_string(const qpk_gguf *g, const qpk_gguf_value *v, uint64_t i, uint64_t *len)
{
    if (v->type != QPK_GGUF_ARRAY || v->elem_type != QPK_GGUF_STRING || i >= v->len || v->kv >= g->n_kv ||
        !g->kvs[v->kv].str_offsets)
        return NULL;
    uint64_t off = g->kvs[v->kv].str_offsets[i];
    *len = rd_u64(g->base + off);
    return (const char *)g->base + off + 8;
}

const qpk_gguf_tensor *qpk_gguf_tensor_at(const qpk_gguf *g, size_t i) { return i < g->n_t ? &g->t[i] : NULL; }

const qpk_gguf_tensor *qpk_gguf_find_tensor(const qpk_gguf *g, const char *name)
{
    return lookup(g->t_by_name, g->n_t, name);
}
