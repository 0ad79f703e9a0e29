/*
 * llama.cpp's importance matrices, both forms (qpk/imatrix.h), written from the layout
 * llama-imatrix saves and llama-quantize loads (tools/imatrix, common/imatrix-loader in
 * llama.cpp). The GGUF form goes through qpk's GGUF reader and writer; the legacy form is
 * parsed here, every length checked against the bytes left before it is read.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qpk/gguf.h"
#include "qpk/imatrix.h"
#include "qpk_private.h"

#define MAX_VALUES (1LL << 31) /* values of one entry: 2^31 floats is 8 GiB, past any model's row times experts */

void qpk_imatrix_free(qpk_imatrix *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++)
        free(m->entries[i].sum2), free(m->entries[i].counts);
    free(m->entries), free(m->dataset), free(m);
}

qpk_status qpk_imatrix_create(qpk_imatrix **out, const char *dataset, uint32_t chunk_count, uint32_t chunk_size,
                              qpk_err *e)
{
    *out = NULL;
    qpk_imatrix *m = calloc(1, sizeof *m);
    if (!m || (dataset && !(m->dataset = qpk_utf8_dup(dataset)))) {
        free(m);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    m->chunk_count = chunk_count, m->chunk_size = chunk_size;
    *out = m;
    return QPK_OK;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const qpk_imatrix_entry *)a)->name, ((const qpk_imatrix_entry *)b)->name);
}

const qpk_imatrix_entry *qpk_imatrix_find(const qpk_imatrix *m, const char *name)
{
    qpk_imatrix_entry key;
    if (!m || !m->n || strlen(name) > QPK_IMATRIX_MAX_NAME)
        return NULL;
    snprintf(key.name, sizeof key.name, "%s", name);
    return bsearch(&key, m->entries, m->n, sizeof *m->entries, by_name);
}

/* An entry's values, checked: finite and not negative (sums of squares and token counts). */
static qpk_status check_values(const char *name, const char *what, const float *v, int64_t n, qpk_err *e)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]) || v[i] < 0)
            return qpk_err_setf(e, QPK_E_VALUE, "imatrix: %s's %s[%lld] is %g: a sum of squares or a count is "
                                "finite and not negative", name, what, (long long)i, (double)v[i]);
    return QPK_OK;
}

/* Appends an entry (name unique, values checked), keeping no order: sorted once at the end. */
static qpk_status append(qpk_imatrix *m, const char *name, size_t name_len, int64_t n_per_row, int64_t n_mat,
                         const float *sum2, const float *counts, qpk_err *e)
{
    char nm[QPK_IMATRIX_MAX_NAME + 1];
    if (name_len == 0 || name_len > QPK_IMATRIX_MAX_NAME || memchr(name, 0, name_len) ||
        qpk_utf8_valid_prefix(name, name_len) != name_len)
        return qpk_err_setf(e, QPK_E_CORRUPT, "imatrix: entry %zu's name is empty, longer than %d bytes or not "
                            "UTF-8", m->n, QPK_IMATRIX_MAX_NAME);
    memcpy(nm, name, name_len), nm[name_len] = 0;
    if (n_per_row < 1 || n_mat < 1 || n_per_row > MAX_VALUES / n_mat)
        return qpk_err_setf(e, QPK_E_CORRUPT, "imatrix: %s has %lld values per row in %lld matrices", nm,
                            (long long)n_per_row, (long long)n_mat);
    if (m->n == QPK_IMATRIX_MAX_ENTRIES)
        return qpk_err_setf(e, QPK_E_LIMIT, "imatrix: more than %d entries", QPK_IMATRIX_MAX_ENTRIES);
    QPK_TRY(check_values(nm, "in_sum2", sum2, n_per_row * n_mat, e));
    QPK_TRY(check_values(nm, "counts", counts, n_mat, e));
    qpk_imatrix_entry *grown = realloc(m->entries, (m->n + 1) * sizeof *grown);
    if (!grown)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    m->entries = grown;
    qpk_imatrix_entry *x = &m->entries[m->n];
    memset(x, 0, sizeof *x);
    memcpy(x->name, nm, name_len + 1);
    x->n_per_row = n_per_row, x->n_mat = n_mat;
    x->sum2 = malloc((size_t)(n_per_row * n_mat) * sizeof *x->sum2);
    x->counts = malloc((size_t)n_mat * sizeof *x->counts);
    if (!x->sum2 || !x->counts) {
        free(x->sum2), free(x->counts);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    memcpy(x->sum2, sum2, (size_t)(n_per_row * n_mat) * sizeof *x->sum2);
    memcpy(x->counts, counts, (size_t)n_mat * sizeof *x->counts);
    m->n++;
    return QPK_OK;
}

/* Sorts the entries and refuses a name seen twice. */
static qpk_status finish_entries(qpk_imatrix *m, qpk_err *e)
{
    qsort(m->entries, m->n, sizeof *m->entries, by_name);
    for (size_t i = 1; i < m->n; i++)
        if (!strcmp(m->entries[i].name, m->entries[i - 1].name))
            return qpk_err_setf(e, QPK_E_CORRUPT, "imatrix: %s appears twice", m->entries[i].name);
    return QPK_OK;
}

/* Entries stay sorted as they are added: the new one moves to its place (a reader sorts once, at the end). */
qpk_status qpk_imatrix_add(qpk_imatrix *m, const char *name, int64_t n_per_row, int64_t n_mat, const float *sum2,
                           const float *counts, qpk_err *e)
{
    if (qpk_imatrix_find(m, name))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "imatrix: %s added twice", name);
    QPK_TRY(append(m, name, strlen(name), n_per_row, n_mat, sum2, counts, e));
    size_t at = m->n - 1;
    while (at > 0 && strcmp(m->entries[at - 1].name, m->entries[m->n - 1].name) > 0)
        at--;
    const qpk_imatrix_entry added = m->entries[m->n - 1];
    memmove(&m->entries[at + 1], &m->entries[at], (m->n - 1 - at) * sizeof *m->entries);
    m->entries[at] = added;
    return QPK_OK;
}

/* ------------------------------------------------------------- legacy .dat */

typedef struct cursor {
    const uint8_t *p;
    size_t left;
} cursor;

static bool take(cursor *c, void *dst, size_t n)
{
    if (n > c->left)
        return false;
    memcpy(dst, c->p, n);
    c->p += n, c->left -= n;
    return true;
}

static bool take_i32(cursor *c, int32_t *v) { return take(c, v, 4); }

static qpk_status read_legacy(qpk_imatrix *m, const uint8_t *buf, size_t size, qpk_err *e)
{
    cursor c = {buf, size};
    int32_t n = 0;
    m->legacy = true;
    if (!take_i32(&c, &n) || n < 1 || n > QPK_IMATRIX_MAX_ENTRIES)
        return qpk_err_setf(e, QPK_E_CORRUPT, "imatrix (legacy .dat): entry count %d is not 1..%d", size >= 4 ? n : 0,
                            QPK_IMATRIX_MAX_ENTRIES);
    float *vals = NULL;
    qpk_status s = QPK_OK;
    for (int32_t i = 0; i < n && s == QPK_OK; i++) {
        int32_t len = 0, ncall = 0, nval = 0;
        if (!take_i32(&c, &len) || len < 1 || len > QPK_IMATRIX_MAX_NAME || (size_t)len > c.left) {
            s = qpk_err_setf(e, QPK_E_CORRUPT, "imatrix (legacy .dat): entry %d's name length does not fit the file", i);
            break;
        }
        const char *name = (const char *)c.p;
        c.p += len, c.left -= (size_t)len;
        if (memchr(name, 0, (size_t)len) || qpk_utf8_valid_prefix(name, (size_t)len) != (size_t)len) {
            s = qpk_err_setf(e, QPK_E_CORRUPT, "imatrix (legacy .dat): entry %d's name is not UTF-8 text", i);
            break;
        }
        if (!take_i32(&c, &ncall) || !take_i32(&c, &nval) || ncall < 0 || nval < 1 ||
            (size_t)nval > c.left / sizeof(float)) {
            s = qpk_err_setf(e, QPK_E_CORRUPT, "imatrix (legacy .dat): entry %d (%.*s): %d calls and %d values do not "
                             "fit the file", i, len, name, ncall, nval);
            break;
        }
        float *grown = realloc(vals, (size_t)nval * sizeof *vals);
        if (!grown) {
            s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
            break;
        }
        vals = grown;
        take(&c, vals, (size_t)nval * sizeof *vals);
        const float count = (float)ncall; /* the values are mean squares times ncall: sums over ncall */
        s = append(m, name, (size_t)len, nval, 1, vals, &count, e);
    }
    free(vals);
    QPK_TRY(s);
    int32_t chunks = 0, len = 0;
    if (c.left && take_i32(&c, &chunks) && chunks >= 0) /* optional: the chunk count, then the dataset's name */
        m->chunk_count = (uint32_t)chunks;
    if (c.left && take_i32(&c, &len) && len > 0 && (size_t)len <= c.left) {
        char *d = malloc((size_t)len + 1);
        if (!d)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        memcpy(d, c.p, (size_t)len), d[len] = 0;
        m->dataset = qpk_utf8_dup(d); /* a path from another machine: repaired, never trusted as UTF-8 */
        free(d);
    }
    return finish_entries(m, e);
}

/* ------------------------------------------------------------------ GGUF */

static bool ends_with(const char *s, const char *suffix, size_t *stem)
{
    size_t n = strlen(s), k = strlen(suffix);
    *stem = n - k;
    return n > k && !strcmp(s + n - k, suffix);
}

static qpk_status read_gguf(qpk_imatrix *m, const qpk_gguf *g, qpk_err *e)
{
    qpk_gguf_value v;
    if (qpk_gguf_find(g, "general.type", &v) &&
        (v.type != QPK_GGUF_STRING || v.len != 7 || memcmp(v.str, "imatrix", 7)))
        return qpk_err_setf(e, QPK_E_CORRUPT, "imatrix: a GGUF whose general.type is not \"imatrix\" (a model?)");
    if (qpk_gguf_find(g, "imatrix.chunk_count", &v) && v.type == QPK_GGUF_U32)
        m->chunk_count = (uint32_t)v.num.u;
    if (qpk_gguf_find(g, "imatrix.chunk_size", &v) && v.type == QPK_GGUF_U32)
        m->chunk_size = (uint32_t)v.num.u;
    if (qpk_gguf_find(g, "imatrix.datasets", &v) && v.type == QPK_GGUF_ARRAY && v.elem_type == QPK_GGUF_STRING &&
        v.len > 0) {
        uint64_t len;
        const char *s = qpk_gguf_array_string(g, &v, 0, &len);
        char *d = s && len < 4096 ? malloc((size_t)len + 1) : NULL;
        if (d) {
            memcpy(d, s, (size_t)len), d[len] = 0;
            m->dataset = qpk_utf8_dup(d);
            free(d);
        }
    }
    size_t pairs = 0;
    for (size_t i = 0; i < qpk_gguf_n_tensors(g); i++) {
        const qpk_gguf_tensor *sum2 = qpk_gguf_tensor_at(g, i);
        size_t stem;
        if (ends_with(sum2->name, ".counts", &stem)) {
            char name[QPK_IMATRIX_MAX_NAME + 16];
            snprintf(name, sizeof name, "%.*s.in_sum2", (int)stem, sum2->name);
            if (!qpk_gguf_find_tensor(g, name))
                return qpk_err_setf(e, QPK_E_CORRUPT, "imatrix: %s has no %s beside it", sum2->name, name);
            continue;
        }
        if (!ends_with(sum2->name, ".in_sum2", &stem))
            return qpk_err_setf(e, QPK_E_CORRUPT, "imatrix: tensor %s is neither an in_sum2 nor a counts", sum2->name);
        char name[QPK_IMATRIX_MAX_NAME + 16];
        snprintf(name, sizeof name, "%.*s.counts", (int)stem, sum2->name);
        const qpk_gguf_tensor *counts = qpk_gguf_find_tensor(g, name);
        if (!counts)
            return qpk_err_setf(e, QPK_E_CORRUPT, "imatrix: %s has no %s beside it", sum2->name, name);
        const int64_t n_per_row = (int64_t)sum2->ne[0], n_mat = sum2->n_dims > 1 ? (int64_t)sum2->ne[1] : 1;
        if (sum2->type != QPK_GGML_F32 || counts->type != QPK_GGML_F32 || sum2->n_dims > 2 || counts->n_dims > 2 ||
            counts->ne[0] != 1 || (int64_t)(counts->n_dims > 1 ? counts->ne[1] : 1) != n_mat)
            return qpk_err_setf(e, QPK_E_CORRUPT, "imatrix: %s and its counts are not F32 [n_per_row, n_mat] and "
                                "[1, n_mat]", sum2->name);
        QPK_TRY(append(m, sum2->name, stem, n_per_row, n_mat, sum2->data, counts->data, e));
        pairs++;
    }
    if (!pairs)
        return qpk_err_setf(e, QPK_E_CORRUPT, "imatrix: the GGUF holds no in_sum2 tensor");
    return finish_entries(m, e);
}

qpk_status qpk_imatrix_read_memory(qpk_imatrix **out, const void *buf, size_t size, qpk_err *e)
{
    *out = NULL;
    qpk_imatrix *m = calloc(1, sizeof *m);
    if (!m)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    qpk_status s;
    if (size >= 4 && !memcmp(buf, "GGUF", 4)) {
        qpk_gguf *g;
        s = qpk_gguf_open_memory(&g, buf, size, e);
        if (s == QPK_OK) {
            s = read_gguf(m, g, e);
            qpk_gguf_close(g);
        }
    } else {
        s = read_legacy(m, buf, size, e);
    }
    if (s != QPK_OK) {
        qpk_imatrix_free(m);
        return s;
    }
    *out = m;
    return QPK_OK;
}

qpk_status qpk_imatrix_read(qpk_imatrix **out, const char *path, qpk_err *e)
{
    *out = NULL;
    const void *data;
    size_t size;
    QPK_TRY(qpk_map_file(path, 0, &data, &size, e));
    qpk_status s = qpk_imatrix_read_memory(out, data ? data : "", size, e);
    qpk_unmap_file(data, size);
    return s != QPK_OK ? qpk_err_prefix(e, s, "%s", path) : QPK_OK;
}

/* --------------------------------------------------------------- writing */

static const char *dataset_at(void *ud, uint64_t i, size_t *len)
{
    (void)i;
    *len = strlen(ud);
    return ud;
}

static qpk_status write_gguf(const qpk_imatrix *m, const char *path, qpk_err *e)
{
    qpk_gguf_writer *w;
    QPK_TRY(qpk_gguf_writer_create(&w, path, e));
    qpk_status s = qpk_gguf_kv_string(w, "general.type", "imatrix", 7, e);
    if (s == QPK_OK)
        s = qpk_gguf_kv_string_array(w, "imatrix.datasets", m->dataset ? 1 : 0, dataset_at, m->dataset, e);
    if (s == QPK_OK)
        s = qpk_gguf_kv_u32(w, "imatrix.chunk_count", m->chunk_count, e);
    if (s == QPK_OK)
        s = qpk_gguf_kv_u32(w, "imatrix.chunk_size", m->chunk_size, e);
    char name[QPK_IMATRIX_MAX_NAME + 16];
    for (size_t i = 0; i < m->n && s == QPK_OK; i++) {
        const qpk_imatrix_entry *x = &m->entries[i];
        const uint64_t ne_sum[2] = {(uint64_t)x->n_per_row, (uint64_t)x->n_mat}, ne_cnt[2] = {1, (uint64_t)x->n_mat};
        snprintf(name, sizeof name, "%s.in_sum2", x->name);
        s = qpk_gguf_add_tensor(w, name, QPK_GGML_F32, 2, ne_sum, e);
        snprintf(name, sizeof name, "%s.counts", x->name);
        if (s == QPK_OK)
            s = qpk_gguf_add_tensor(w, name, QPK_GGML_F32, 2, ne_cnt, e);
    }
    for (size_t i = 0; i < m->n && s == QPK_OK; i++) {
        const qpk_imatrix_entry *x = &m->entries[i];
        s = qpk_gguf_write(w, x->sum2, (size_t)(x->n_per_row * x->n_mat) * sizeof(float), e);
        if (s == QPK_OK)
            s = qpk_gguf_write(w, x->counts, (size_t)x->n_mat * sizeof(float), e);
    }
    if (s != QPK_OK) {
        qpk_gguf_writer_discard(w);
        return s;
    }
    return qpk_gguf_finish(w, e);
}

static qpk_status put_i32(qpk_outfile *o, int64_t v, qpk_err *e)
{
    const int32_t x = (int32_t)v;
    return qpk_outfile_write(o, &x, 4, e);
}

/*
 * The legacy form stores one call count per entry and each value as its mean square times
 * it (llama-imatrix's ncall: chunks, rounded up); a matrix nothing reached stores 1 with a
 * count of 1, as llama-imatrix does, which weighs every column alike.
 */
static qpk_status write_legacy(const qpk_imatrix *m, const char *path, qpk_err *e)
{
    qpk_outfile *o;
    QPK_TRY(qpk_outfile_create(&o, path, e));
    qpk_status s = put_i32(o, (int64_t)m->n, e);
    float *tmp = NULL;
    for (size_t i = 0; i < m->n && s == QPK_OK; i++) {
        const qpk_imatrix_entry *x = &m->entries[i];
        const size_t nval = (size_t)(x->n_per_row * x->n_mat);
        if (nval > INT32_MAX) {
            s = qpk_err_setf(e, QPK_E_LIMIT, "imatrix: %s has %zu values, past the legacy format's int32", x->name, nval);
            break;
        }
        float top = 0;
        for (int64_t k = 0; k < x->n_mat; k++)
            top = fmaxf(top, x->counts[k]);
        const double per = m->chunk_size ? (double)m->chunk_size : 1.0;
        const double ncall = fmax(1.0, ceil((double)top / per));
        float *grown = realloc(tmp, nval * sizeof *tmp);
        if (!grown) {
            s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
            break;
        }
        tmp = grown;
        for (size_t k = 0; k < nval; k++) {
            const double count = x->counts[k / (size_t)x->n_per_row];
            tmp[k] = count > 0 ? (float)(x->sum2[k] / count * ncall) : 1.0f * (float)ncall;
        }
        s = put_i32(o, (int64_t)strlen(x->name), e);
        if (s == QPK_OK)
            s = qpk_outfile_write(o, x->name, strlen(x->name), e);
        if (s == QPK_OK)
            s = put_i32(o, (int64_t)ncall, e);
        if (s == QPK_OK)
            s = put_i32(o, (int64_t)nval, e);
        if (s == QPK_OK)
            s = qpk_outfile_write(o, tmp, nval * sizeof *tmp, e);
    }
    free(tmp);
    const char *d = m->dataset ? m->dataset : "";
    if (s == QPK_OK)
        s = put_i32(o, m->chunk_count, e);
    if (s == QPK_OK)
        s = put_i32(o, (int64_t)strlen(d), e);
    if (s == QPK_OK)
        s = qpk_outfile_write(o, d, strlen(d), e);
    if (s != QPK_OK) {
        qpk_outfile_discard(o);
        return s;
    }
    return qpk_outfile_commit(o, e);
}

qpk_status qpk_imatrix_write(const qpk_imatrix *m, const char *path, bool legacy, qpk_err *e)
{
    if (!m->n)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "imatrix: no entries to write");
    return legacy ? write_legacy(m, path, e) : write_gguf(m, path, e);
}
