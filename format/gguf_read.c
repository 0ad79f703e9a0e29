/*
 * GGUF reader. A cursor walks the file; every read checks the bytes left first, with
 * overflow-safe arithmetic, so no length in the file can send it past the end.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
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
    /* A split set (gguf-split's): this handle is shard 0 (its key-values are the model's), the
     * others are parts[1..n_parts-1]; t and t_by_name then hold every shard's tensors. */
    qpk_gguf **parts;
    size_t n_parts;
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

/* Parses one buffer into a handle of its own (no split logic). */
static qpk_status open_one(qpk_gguf **out, const void *buf, size_t size, qpk_err *e)
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

/* ------------------------------------------------------------ split sets */

/* A shard's split keys as gguf-split writes them: split.no (u16, 0-based), split.count (u16),
 * split.tensors.count (i32, tensors in the whole set). present: split.count is there. */
typedef struct split_keys {
    bool present;
    uint32_t no, count;
    int64_t n_tensors;
} split_keys;

static qpk_status split_key(const qpk_gguf *g, const char *key, uint32_t type, const char *type_name, int64_t *v,
                            qpk_err *e)
{
    qpk_gguf_value x;
    if (!qpk_gguf_find(g, key, &x))
        return qpk_err_setf(e, QPK_E_CORRUPT, "split.count without %s", key);
    if (x.type != type)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s is not %s", key, type_name);
    *v = type == QPK_GGUF_I32 ? x.num.i : (int64_t)x.num.u;
    return QPK_OK;
}

static qpk_status read_split_keys(const qpk_gguf *g, split_keys *k, qpk_err *e)
{
    qpk_gguf_value x;
    memset(k, 0, sizeof *k);
    if (!qpk_gguf_find(g, "split.count", &x))
        return QPK_OK;
    k->present = true;
    if (x.type != QPK_GGUF_U16)
        return qpk_err_setf(e, QPK_E_CORRUPT, "split.count is not a u16");
    k->count = (uint32_t)x.num.u;
    /* 0 or 1: one file, as llama.cpp reads it (gguf-split --merge writes split.count 0) */
    if (k->count < 2)
        return QPK_OK;
    int64_t no;
    QPK_TRY(split_key(g, "split.no", QPK_GGUF_U16, "a u16", &no, e));
    k->no = (uint32_t)no;
    if (k->no >= k->count)
        return qpk_err_setf(e, QPK_E_CORRUPT, "split.no %u is out of range for split.count %u", k->no, k->count);
    QPK_TRY(split_key(g, "split.tensors.count", QPK_GGUF_I32, "an i32", &k->n_tensors, e));
    if (k->n_tensors < 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "split.tensors.count is %lld", (long long)k->n_tensors);
    return QPK_OK;
}

/* The first tensor of shard i also found in an earlier shard, or NULL. */
static const char *tensor_in_earlier(qpk_gguf *const *parts, size_t i, size_t *earlier)
{
    for (size_t t = 0; t < parts[i]->n_t; t++)
        for (size_t j = 0; j < i; j++)
            if (lookup(parts[j]->t_by_name, parts[j]->n_t, parts[i]->t[t].name)) {
                *earlier = j;
                return parts[i]->t[t].name;
            }
    return NULL;
}

/*
 * Checks the n parsed shards as one set (labels[i] names shard i in messages) and, when they are
 * one, gives parts[0] every shard's tensors. Takes the parts (parts[0] stays the caller's).
 */
static qpk_status join(qpk_gguf **parts, size_t n, const char *const *labels, qpk_err *e)
{
    qpk_gguf *g = parts[0];
    split_keys k0, k;
    qpk_status s = read_split_keys(g, &k0, e);
    if (s != QPK_OK)
        return qpk_err_prefix(e, s, "%s", labels[0]);
    if (k0.count > 1 && k0.no != 0)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%s is shard %u of %u of a split set, not the first", labels[0],
                            k0.no + 1, k0.count);
    const uint32_t count = k0.count > 1 ? k0.count : 1;
    if (n == 1 && count > 1)
        return qpk_err_setf(e, QPK_E_MISMATCH,
                            "%s is the first shard of a split set of %u: the other shards are needed", labels[0], count);
    if (n != count && !k0.present)
        return qpk_err_setf(e, QPK_E_MISMATCH, "%s has no split.count but %zu shards were given", labels[0], n);
    if (n != count)
        return qpk_err_setf(e, QPK_E_MISMATCH, "%s: split.count is %u but %zu shards were given", labels[0], k0.count,
                            n);
    for (size_t i = 1; i < n; i++) {
        s = read_split_keys(parts[i], &k, e);
        if (s != QPK_OK)
            return qpk_err_prefix(e, s, "%s", labels[i]);
        if (!k.present)
            return qpk_err_setf(e, QPK_E_MISMATCH, "%s has no split.count: not a shard of a split set", labels[i]);
        if (k.count != count)
            return qpk_err_setf(e, QPK_E_MISMATCH,
                                "%s: split.count %u, the first shard's is %u: a shard of another set", labels[i],
                                k.count, count);
        if (k.no < i)
            return qpk_err_setf(e, QPK_E_MISMATCH, "%s holds shard %u again (split.no %u): a repeated shard", labels[i],
                                k.no + 1, k.no);
        if (k.no > i)
            return qpk_err_setf(e, QPK_E_MISMATCH,
                                "%s holds shard %u (split.no %u), not shard %zu: shards out of order", labels[i],
                                k.no + 1, k.no, i + 1);
        if (k.n_tensors != k0.n_tensors)
            return qpk_err_setf(e, QPK_E_MISMATCH,
                                "%s: split.tensors.count %lld, the first shard's is %lld: a shard of another set",
                                labels[i], (long long)k.n_tensors, (long long)k0.n_tensors);
        size_t j;
        const char *dup = tensor_in_earlier(parts, i, &j);
        if (dup)
            return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s' is in both %s and %s", dup, labels[j], labels[i]);
    }
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += parts[i]->n_t;
    if (count > 1 && total != (uint64_t)k0.n_tensors)
        return qpk_err_setf(e, QPK_E_MISMATCH,
                            "%s: the set's %zu shard%s hold %llu tensors, split.tensors.count says %lld", labels[0], n,
                            n == 1 ? "" : "s", (unsigned long long)total, (long long)k0.n_tensors);
    if (n == 1)
        return QPK_OK;
    qpk_gguf_tensor *t = calloc((size_t)total, sizeof *t);
    qpk_gguf **keep = malloc(n * sizeof *keep);
    if (!t || !keep) {
        free(t), free(keep);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < parts[i]->n_t; j++) {
            t[m] = parts[i]->t[j];
            t[m++].shard = (uint32_t)i;
        }
    memcpy(keep, parts, n * sizeof *keep);
    free(g->t), free(g->t_by_name);
    g->t = t, g->n_t = (size_t)total, g->t_by_name = NULL;
    g->parts = keep, g->n_parts = n;
    for (size_t i = 1; i < n; i++)
        parts[i] = NULL; /* g owns them now */
    return build_index(e, g->n_t, sizeof *g->t, g->t, &g->t_by_name, "tensor name");
}

static void close_parts(qpk_gguf **parts, size_t n)
{
    for (size_t i = 1; parts && i < n; i++)
        qpk_gguf_close(parts[i]);
}

qpk_status qpk_gguf_open_set_memory(qpk_gguf **out, const void *const *bufs, const size_t *sizes, size_t n,
                                    qpk_err *e)
{
    *out = NULL;
    if (n == 0 || n > 65535)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "a split set of %zu shards (1..65535)", n);
    qpk_gguf **parts = calloc(n, sizeof *parts);
    char (*labels)[32] = calloc(n, sizeof *labels);
    const char **lp = calloc(n, sizeof *lp);
    qpk_status s = parts && labels && lp ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    for (size_t i = 0; i < n && s == QPK_OK; i++) {
        snprintf(labels[i], sizeof labels[i], "shard %zu", i + 1);
        lp[i] = labels[i];
        s = open_one(&parts[i], bufs[i], sizes[i], e);
        if (s != QPK_OK && n > 1)
            s = qpk_err_prefix(e, s, "%s", labels[i]);
    }
    const char *one = "the file"; /* one buffer: a set's first shard alone is refused as incomplete */
    if (s == QPK_OK)
        s = join(parts, n, n == 1 ? &one : lp, e);
    if (s == QPK_OK)
        *out = parts[0];
    else if (parts)
        qpk_gguf_close(parts[0]);
    close_parts(parts, n);
    free(parts), free(labels), free(lp);
    return s;
}

qpk_status qpk_gguf_open_memory(qpk_gguf **out, const void *buf, size_t size, qpk_err *e)
{
    return qpk_gguf_open_set_memory(out, &buf, &size, 1, e);
}

/* Maps and parses one file; errors name it. */
static qpk_status open_file(qpk_gguf **out, const char *path, qpk_err *e)
{
    *out = NULL;
    const void *p;
    size_t size;
    QPK_TRY(qpk_map_file(path, 0, &p, &size, e));
    qpk_status s = open_one(out, p, size, e);
    if (s != QPK_OK) {
        qpk_unmap_file(p, size);
        return qpk_err_prefix(e, s, "%s", path);
    }
    (*out)->mapped = true;
    return QPK_OK;
}

/*
 * The prefix of a shard's path, as llama.cpp's llama_split_prefix takes it: the path less
 * "-%05d-of-%05d.gguf" (shard no+1 of count); NULL if the path does not end so.
 */
static char *split_prefix(const char *path, uint32_t no, uint32_t count)
{
    char tail[48];
    snprintf(tail, sizeof tail, "-%05u-of-%05u.gguf", no + 1, count);
    size_t n = strlen(path), k = strlen(tail);
    if (n <= k || strcmp(path + n - k, tail) != 0)
        return NULL;
    char *p = malloc(n - k + 1);
    if (p) {
        memcpy(p, path, n - k);
        p[n - k] = 0;
    }
    return p;
}

char *qpk_gguf_split_path(const char *prefix, uint32_t no, uint32_t count)
{
    size_t n = strlen(prefix) + 48;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s-%05u-of-%05u.gguf", prefix, no + 1, count);
    return p;
}

/* The other shards of the set whose first shard g (at path) says it has count shards. */
static qpk_status open_set(qpk_gguf **gp, const char *path, uint32_t count, qpk_err *e)
{
    char *prefix = split_prefix(path, 0, count);
    if (!prefix)
        return qpk_err_setf(e, QPK_E_INVALID_ARG,
                            "%s: the first shard of a split set of %u, but its name does not end in "
                            "-00001-of-%05u.gguf, the name the other shards are found by", path, count, count);
    qpk_gguf **parts = calloc(count, sizeof *parts);
    char **names = calloc(count, sizeof *names);
    qpk_status s = parts && names ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK) {
        parts[0] = *gp;
        names[0] = strdup(path);
        s = names[0] ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    for (uint32_t i = 1; i < count && s == QPK_OK; i++) {
        if (!(names[i] = qpk_gguf_split_path(prefix, i, count)))
            s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        else if ((s = open_file(&parts[i], names[i], e)) != QPK_OK)
            s = qpk_err_prefix(e, s, "split set %s: shard %u of %u", path, i + 1, count);
    }
    if (s == QPK_OK)
        s = join(parts, count, (const char *const *)names, e);
    close_parts(parts, count);
    for (uint32_t i = 0; names && i < count; i++)
        free(names[i]);
    free(parts), free(names), free(prefix);
    return s;
}

qpk_status qpk_gguf_open(qpk_gguf **out, const char *path, qpk_err *e)
{
    *out = NULL;
    qpk_gguf *g;
    QPK_TRY(open_file(&g, path, e));
    split_keys k;
    qpk_status s = read_split_keys(g, &k, e);
    if (s != QPK_OK)
        s = qpk_err_prefix(e, s, "%s", path);
    else if (k.count > 1 && k.no != 0) {
        char *prefix = split_prefix(path, k.no, k.count);
        char *first = prefix ? qpk_gguf_split_path(prefix, 0, k.count) : NULL;
        if (first)
            s = qpk_err_setf(e, QPK_E_INVALID_ARG, "%s is shard %u of %u of a split set: give the first, %s", path,
                             k.no + 1, k.count, first);
        else
            s = qpk_err_setf(e, QPK_E_INVALID_ARG, "%s is shard %u of %u of a split set: give the first, "
                             "NAME-00001-of-%05u.gguf", path, k.no + 1, k.count, k.count);
        free(prefix), free(first);
    } else if (k.count > 1)
        s = open_set(&g, path, k.count, e);
    else {
        const char *one = path;
        s = join(&g, 1, &one, e);
    }
    if (s != QPK_OK) {
        qpk_gguf_close(g);
        return s;
    }
    *out = g;
    return QPK_OK;
}

void qpk_gguf_close(qpk_gguf *g)
{
    if (!g)
        return;
    close_parts(g->parts, g->n_parts);
    free(g->parts);
    if (g->mapped)
        qpk_unmap_file(g->base, (size_t)g->size);
    for (size_t i = 0; g->kvs && i < g->n_kv; i++)
        free(g->kvs[i].key), free(g->kvs[i].str_offsets);
    free(g->kvs), free(g->t), free(g->names), free(g->kv_by_key), free(g->t_by_name), free(g);
}

uint32_t qpk_gguf_version(const qpk_gguf *g) { return g->version; }
uint64_t qpk_gguf_file_size(const qpk_gguf *g)
{
    uint64_t n = g->size;
    for (size_t i = 1; i < g->n_parts; i++)
        n += g->parts[i]->size;
    return n;
}
size_t qpk_gguf_n_shards(const qpk_gguf *g) { return g->n_parts ? g->n_parts : 1; }
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
