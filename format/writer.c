/*
 * The .qpk writer: streams tensor data in one pass, then writes the metadata, the
 * tensor table, the embedded files and finally the header. The file is built in an
 * unnamed temporary (O_TMPFILE) in the destination folder, so a crash or kill leaves
 * nothing behind; it gets its name only once complete and fsync'd.
 */
#include <stdio.h>
#include <stdlib.h>
#include <xxhash.h>
#include <zlib.h>

#include "internal.h"

typedef struct entry {
    char *name;
    uint32_t type, group_size;
    int ndim;
    int64_t dims[QPK_MAX_DIMS];
    uint64_t offset, nbytes, xxh3;
} entry;

typedef struct blob {
    char *name;
    uint64_t raw_size, raw_xxh3;
    uint8_t *z;
    uint64_t z_size;
} blob;

struct qpk_writer {
    qpk_outfile *out;
    uint64_t data_offset;
    entry *entries;
    size_t n_entries, cap_entries;
    bool in_tensor;
    uint64_t cur_written;
    XXH3_state_t *hash;
    blob blobs[QPK_MAX_BLOBS];
    size_t n_blobs;
};

uint64_t qpk_xxh3(const void *data, size_t n) { return XXH3_64bits(data, n); }

/* ------------------------------------------------------------- create/discard */

qpk_status qpk_writer_create(qpk_writer **out, const char *path, qpk_err *e)
{
    *out = NULL;
    qpk_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->hash = XXH3_createState())) {
        free(w);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    qpk_status s = qpk_outfile_create(&w->out, path, e);
    /* Room for the header and a directory of three sections (written last); data follow. */
    static const uint8_t zeros[(QPK_HEADER_SIZE + 3 * QPK_SECTION_ENTRY_SIZE + QPK_DEFAULT_ALIGNMENT - 1) /
                               QPK_DEFAULT_ALIGNMENT * QPK_DEFAULT_ALIGNMENT];
    w->data_offset = sizeof zeros;
    if (s == QPK_OK)
        s = qpk_outfile_write(w->out, zeros, sizeof zeros, e);
    if (s != QPK_OK) {
        qpk_writer_discard(w);
        return s;
    }
    *out = w;
    return QPK_OK;
}

void qpk_writer_discard(qpk_writer *w)
{
    if (!w)
        return;
    qpk_outfile_discard(w->out);
    for (size_t i = 0; i < w->n_entries; i++)
        free(w->entries[i].name);
    for (size_t i = 0; i < w->n_blobs; i++)
        free(w->blobs[i].name), free(w->blobs[i].z);
    free(w->entries);
    XXH3_freeState(w->hash);
    free(w);
}

/* -------------------------------------------------------------------- tensors */

qpk_status qpk_writer_begin_tensor(qpk_writer *w, const char *name, uint32_t type,
                                   uint32_t group_size, int ndim, const int64_t *dims, qpk_err *e)
{
    if (w->in_tensor)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "tensor '%s' begun before the previous one ended", name);
    if (!qpk_name_ok(name, strlen(name)))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "bad tensor name '%.300s'", name);
    for (size_t i = 0; i < w->n_entries; i++)
        if (strcmp(w->entries[i].name, name) == 0)
            return qpk_err_setf(e, QPK_E_INVALID_ARG, "duplicate tensor name '%s'", name);
    uint64_t nbytes;
    qpk_status s = qpk_tensor_nbytes(type, group_size, ndim, dims, &nbytes, e);
    if (s != QPK_OK)
        return qpk_err_prefix(e, s, "tensor '%s'", name);
    if (w->n_entries == w->cap_entries) {
        size_t cap = w->cap_entries ? 2 * w->cap_entries : 64;
        entry *p = realloc(w->entries, cap * sizeof *p);
        if (!p)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        w->entries = p, w->cap_entries = cap;
    }
    QPK_TRY(qpk_outfile_pad(w->out, QPK_DEFAULT_ALIGNMENT, e));
    entry *t = &w->entries[w->n_entries];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    t->type = type, t->group_size = group_size, t->ndim = ndim;
    memcpy(t->dims, dims, (size_t)ndim * sizeof *dims);
    t->offset = qpk_outfile_tell(w->out), t->nbytes = nbytes;
    w->n_entries++;
    w->in_tensor = true;
    w->cur_written = 0;
    XXH3_64bits_reset(w->hash);
    return QPK_OK;
}

qpk_status qpk_writer_write(qpk_writer *w, const void *data, size_t n, qpk_err *e)
{
    entry *t = w->in_tensor ? &w->entries[w->n_entries - 1] : NULL;
    if (!t || n > t->nbytes - w->cur_written)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "more bytes written than tensor '%s' holds",
                            t ? t->name : "(none)");
    XXH3_64bits_update(w->hash, data, n);
    w->cur_written += n;
    return qpk_outfile_write(w->out, data, n, e);
}

qpk_status qpk_writer_end_tensor(qpk_writer *w, qpk_err *e)
{
    if (!w->in_tensor)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "no tensor begun");
    entry *t = &w->entries[w->n_entries - 1];
    if (w->cur_written != t->nbytes)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "tensor '%s' got %llu of its %llu bytes", t->name,
                            (unsigned long long)w->cur_written, (unsigned long long)t->nbytes);
    t->xxh3 = XXH3_64bits_digest(w->hash);
    w->in_tensor = false;
    return QPK_OK;
}

uint64_t qpk_writer_last_xxh3(const qpk_writer *w)
{
    return w->n_entries ? w->entries[w->n_entries - 1].xxh3 : 0;
}

qpk_status qpk_writer_add_blob(qpk_writer *w, const char *name, const void *data, size_t n, qpk_err *e)
{
    if (w->n_blobs == QPK_MAX_BLOBS)
        return qpk_err_setf(e, QPK_E_LIMIT, "more than %u embedded files", QPK_MAX_BLOBS);
    if (!qpk_name_ok(name, strlen(name)))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "bad embedded file name '%.300s'", name);
    if (n > QPK_MAX_BLOB_BYTES)
        return qpk_err_setf(e, QPK_E_LIMIT, "embedded file '%s' is larger than %llu bytes", name,
                            QPK_MAX_BLOB_BYTES);
    for (size_t i = 0; i < w->n_blobs; i++)
        if (strcmp(w->blobs[i].name, name) == 0)
            return qpk_err_setf(e, QPK_E_INVALID_ARG, "duplicate embedded file '%s'", name);
    blob *b = &w->blobs[w->n_blobs];
    uLongf zn = compressBound((uLong)n);
    b->z = malloc(zn ? zn : 1);
    b->name = strdup(name);
    if (!b->z || !b->name) {
        free(b->z), free(b->name);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    /* Level 6 is zlib's default: within a few % of level 9 on JSON at a third of the time. */
    if (compress2(b->z, &zn, data, (uLong)n, 6) != Z_OK) {
        free(b->z), free(b->name);
        return qpk_err_setf(e, QPK_E_NOMEM, "zlib failed to compress '%s'", name);
    }
    b->z_size = zn, b->raw_size = n, b->raw_xxh3 = qpk_xxh3(data, n);
    w->n_blobs++;
    return QPK_OK;
}

/* ---------------------------------------------------------------------- finish */

static qpk_status emit_section(qpk_writer *w, uint8_t *dir_entry, uint32_t kind, const void *p,
                               size_t n, qpk_err *e)
{
    QPK_TRY(qpk_outfile_pad(w->out, 8, e));
    wr_u32(dir_entry, kind);
    wr_u32(dir_entry + 4, QPK_SECTION_CRITICAL);
    wr_u64(dir_entry + 8, qpk_outfile_tell(w->out));
    wr_u64(dir_entry + 16, n);
    wr_u64(dir_entry + 24, qpk_xxh3(p, n));
    return qpk_outfile_write(w->out, p, n, e);
}

/* TENSORS section: prefix, fixed-size entries, then the names. */
static uint8_t *build_table(const qpk_writer *w, size_t *len)
{
    size_t names = 0;
    for (size_t i = 0; i < w->n_entries; i++)
        names += strlen(w->entries[i].name);
    *len = QPK_TENSORS_PREFIX + w->n_entries * QPK_TENSOR_ENTRY_SIZE + names;
    uint8_t *t = calloc(1, *len), *pool = t + QPK_TENSORS_PREFIX + w->n_entries * QPK_TENSOR_ENTRY_SIZE;
    if (!t)
        return NULL;
    wr_u32(t, (uint32_t)w->n_entries);
    wr_u32(t + 4, QPK_TENSOR_ENTRY_SIZE);
    wr_u64(t + 8, names);
    size_t name_off = 0;
    for (size_t i = 0; i < w->n_entries; i++) {
        const entry *x = &w->entries[i];
        uint8_t *p = t + QPK_TENSORS_PREFIX + i * QPK_TENSOR_ENTRY_SIZE;
        size_t nl = strlen(x->name);
        wr_u64(p, x->offset);
        wr_u64(p + 8, x->nbytes);
        wr_u64(p + 16, x->xxh3);
        for (int d = 0; d < x->ndim; d++)
            wr_u64(p + 24 + 8 * d, (uint64_t)x->dims[d]);
        wr_u32(p + 56, x->type);
        wr_u32(p + 60, x->group_size);
        wr_u32(p + 64, (uint32_t)x->ndim);
        wr_u32(p + 68, (uint32_t)name_off);
        wr_u32(p + 72, (uint32_t)nl);
        memcpy(pool + name_off, x->name, nl);
        name_off += nl;
    }
    return t;
}

/* FILES section: a count, then 8-aligned records of header, name and zlib stream. */
static uint8_t *build_files(const qpk_writer *w, size_t *len)
{
    size_t n = 8;
    for (size_t i = 0; i < w->n_blobs; i++)
        n += align_up(QPK_BLOB_RECORD_SIZE + strlen(w->blobs[i].name) + w->blobs[i].z_size, 8);
    uint8_t *f = calloc(1, n), *p = f + 8;
    if (!f)
        return NULL;
    wr_u32(f, (uint32_t)w->n_blobs);
    for (size_t i = 0; i < w->n_blobs; i++) {
        const blob *b = &w->blobs[i];
        size_t nl = strlen(b->name);
        wr_u32(p, (uint32_t)nl);
        wr_u32(p + 4, QPK_BLOB_ZLIB);
        wr_u64(p + 8, b->raw_size);
        wr_u64(p + 16, b->z_size);
        wr_u64(p + 24, b->raw_xxh3);
        memcpy(p + QPK_BLOB_RECORD_SIZE, b->name, nl);
        memcpy(p + QPK_BLOB_RECORD_SIZE + nl, b->z, b->z_size);
        p += align_up(QPK_BLOB_RECORD_SIZE + nl + b->z_size, 8);
    }
    *len = n;
    return f;
}

static qpk_status finish(qpk_writer *w, const char *meta, size_t meta_len, qpk_err *e)
{
    if (w->in_tensor)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "finish inside tensor '%s'",
                            w->entries[w->n_entries - 1].name);
    qpk_config cfg;
    uint32_t version;
    qpk_status s = qpk_meta_validate(meta, meta_len, &cfg, &version, e);
    if (s != QPK_OK)
        return qpk_err_prefix(e, s, "refusing to write metadata");
    for (size_t i = 0; i < w->n_entries; i++) /* a reader of the version written must know every type */
        if (qpk_type_info_of(w->entries[i].type)->version > version)
            return qpk_err_setf(e, QPK_E_INVALID_ARG, "tensor '%s' is %s, which format version %u brought: the "
                                "metadata says version %u", w->entries[i].name, qpk_type_name(w->entries[i].type),
                                qpk_type_info_of(w->entries[i].type)->version, version);
    uint8_t head[QPK_HEADER_SIZE + 3 * QPK_SECTION_ENTRY_SIZE] = {0};
    uint8_t *dir = head + QPK_HEADER_SIZE;
    uint64_t data_size = qpk_outfile_tell(w->out) - w->data_offset;
    size_t table_len = 0, files_len = 0;
    uint8_t *table = build_table(w, &table_len), *files = build_files(w, &files_len);
    if (!table || !files)
        s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK)
        s = emit_section(w, dir, QPK_SECTION_META, meta, meta_len, e);
    if (s == QPK_OK)
        s = emit_section(w, dir + QPK_SECTION_ENTRY_SIZE, QPK_SECTION_TENSORS, table, table_len, e);
    if (s == QPK_OK)
        s = emit_section(w, dir + 2 * QPK_SECTION_ENTRY_SIZE, QPK_SECTION_FILES, files, files_len, e);
    free(table);
    free(files);
    if (s != QPK_OK)
        return s;
    memcpy(head, QPK_MAGIC, QPK_MAGIC_LEN);
    wr_u32(head + 8, version); /* as the metadata says: 2 when the file holds what version 1 readers lack */
    wr_u32(head + 12, QPK_HEADER_SIZE);
    wr_u64(head + 16, qpk_outfile_tell(w->out));
    wr_u32(head + 24, QPK_DEFAULT_ALIGNMENT);
    wr_u32(head + 28, 3);
    wr_u64(head + 32, QPK_HEADER_SIZE);
    wr_u64(head + 40, w->data_offset);
    wr_u64(head + 48, data_size);
    wr_u64(head + 56, qpk_xxh3(head, sizeof head)); /* computed with the field still zero */
    QPK_TRY(qpk_outfile_pwrite(w->out, head, sizeof head, 0, e));
    s = qpk_outfile_commit(w->out, e);
    w->out = NULL;
    return s;
}

qpk_status qpk_writer_finish(qpk_writer *w, const char *meta_json, size_t meta_len, qpk_err *e)
{
    qpk_status s = finish(w, meta_json, meta_len, e);
    qpk_writer_discard(w);
    return s;
}
