/*
 * The .qpk reader. Every length and offset read from the file is checked against
 * the bytes actually there (with overflow-safe arithmetic) before anything is
 * dereferenced; only a fully validated file yields a handle.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>
#include <zlib.h>

#include "internal.h"

typedef struct qpk_blob_view {
    const char *name;
    uint64_t raw_size, z_size, raw_xxh3;
    const uint8_t *z;
} qpk_blob_view;

struct qpk_file {
    const uint8_t *base;
    uint64_t size;
    bool mapped;
    uint32_t version, alignment;
    qpk_tensor *tensors;
    size_t n_tensors;
    const qpk_tensor **by_name; /* sorted by name, for lookup */
    char *names;     /* NUL-terminated copies of the tensor names */
    char *blob_names;
    const char *meta;
    size_t meta_len;
    qpk_config cfg;
    qpk_blob_view *blobs;
    size_t n_blobs;
};

/*
 * Fuzzing builds accept bad checksums so that mutated inputs reach the checks behind
 * them (as libpng does with its CRCs); every other build enforces them.
 */
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#define CHECKSUM_DIFFERS(a, b) ((void)(a), (void)(b), false)
#else
#define CHECKSUM_DIFFERS(a, b) ((a) != (b))
#endif


/* True if [off, off+len) lies inside [0, size): no overflow possible. */
static bool span_ok(uint64_t off, uint64_t len, uint64_t size)
{
    return off <= size && len <= size - off;
}

/* ------------------------------------------------------------------- header */

typedef struct section {
    uint32_t kind, flags;
    uint64_t off, size;
} section;

typedef struct layout {
    uint64_t data_off, data_size;
    section meta, table, files;
} layout;

static qpk_status check_header(qpk_file *f, layout *L, qpk_err *e)
{
    const uint8_t *h = f->base;
    if (f->size < QPK_HEADER_SIZE)
        return qpk_err_setf(e, QPK_E_CORRUPT, "file is %llu bytes, shorter than the 64-byte header",
                            (unsigned long long)f->size);
    if (memcmp(h, QPK_MAGIC, QPK_MAGIC_LEN) != 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "bad magic: not a .qpk file");
    f->version = rd_u32(h + 8);
    if (f->version < 1 || f->version > QPK_FORMAT_VERSION)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "format version %u; this reader knows versions 1 to %u",
                            f->version, QPK_FORMAT_VERSION);
    if (rd_u32(h + 12) != QPK_HEADER_SIZE)
        return qpk_err_setf(e, QPK_E_CORRUPT, "header size %u, expected %u", rd_u32(h + 12), QPK_HEADER_SIZE);
    uint64_t file_size = rd_u64(h + 16);
    if (file_size != f->size)
        return qpk_err_setf(e, QPK_E_CORRUPT, "header says %llu bytes but the file has %llu (truncated?)",
                            (unsigned long long)file_size, (unsigned long long)f->size);
    f->alignment = rd_u32(h + 24);
    if (f->alignment < QPK_DEFAULT_ALIGNMENT || f->alignment > QPK_MAX_ALIGNMENT ||
        (f->alignment & (f->alignment - 1)))
        return qpk_err_setf(e, QPK_E_CORRUPT, "alignment %u is not a power of two in [64, 2^20]", f->alignment);
    uint32_t n_sections = rd_u32(h + 28);
    uint64_t dir_off = rd_u64(h + 32);
    if (n_sections < 1 || n_sections > QPK_MAX_SECTIONS)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%u sections, outside 1..%u", n_sections, QPK_MAX_SECTIONS);
    uint64_t dir_len = (uint64_t)n_sections * QPK_SECTION_ENTRY_SIZE;
    if (dir_off < QPK_HEADER_SIZE || dir_off % 8 || !span_ok(dir_off, dir_len, f->size))
        return qpk_err_setf(e, QPK_E_CORRUPT, "section directory at %llu (+%llu) is outside the file",
                            (unsigned long long)dir_off, (unsigned long long)dir_len);
    XXH3_state_t st;
    uint8_t hcopy[QPK_HEADER_SIZE];
    memcpy(hcopy, h, sizeof hcopy);
    memset(hcopy + 56, 0, 8);
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, hcopy, sizeof hcopy);
    XXH3_64bits_update(&st, h + dir_off, dir_len);
    if (CHECKSUM_DIFFERS(XXH3_64bits_digest(&st), rd_u64(h + 56)))
        return qpk_err_setf(e, QPK_E_CHECKSUM, "header checksum mismatch");

    L->data_off = rd_u64(h + 40);
    L->data_size = rd_u64(h + 48);
    if (L->data_off % f->alignment || L->data_off < dir_off + dir_len ||
        !span_ok(L->data_off, L->data_size, f->size))
        return qpk_err_setf(e, QPK_E_CORRUPT, "data area [%llu, +%llu) is misplaced",
                            (unsigned long long)L->data_off, (unsigned long long)L->data_size);

    section *seen[4] = {0, &L->meta, &L->table, &L->files};
    uint64_t prev_end = L->data_off + L->data_size;
    for (uint32_t i = 0; i < n_sections; i++) {
        const uint8_t *d = h + dir_off + (uint64_t)i * QPK_SECTION_ENTRY_SIZE;
        section s = {rd_u32(d), rd_u32(d + 4), rd_u64(d + 8), rd_u64(d + 16)};
        if (s.flags & ~QPK_SECTION_CRITICAL)
            return qpk_err_setf(e, QPK_E_CORRUPT, "section %u has unknown flags 0x%x", i, s.flags);
        /* Sections follow the data area in increasing order: this rules out all overlaps. */
        if (s.off < prev_end || s.off % 8 || !span_ok(s.off, s.size, f->size))
            return qpk_err_setf(e, QPK_E_CORRUPT, "section %u (kind %u) at [%llu, +%llu) overlaps or is outside the file",
                                i, s.kind, (unsigned long long)s.off, (unsigned long long)s.size);
        prev_end = s.off + s.size;
        if (s.kind < 1 || s.kind > 3) {
            if (s.flags & QPK_SECTION_CRITICAL)
                return qpk_err_setf(e, QPK_E_UNSUPPORTED, "unknown critical section kind %u", s.kind);
            continue;
        }
        if (seen[s.kind]->kind)
            return qpk_err_setf(e, QPK_E_CORRUPT, "section kind %u appears twice", s.kind);
        if (CHECKSUM_DIFFERS(XXH3_64bits(f->base + s.off, s.size), rd_u64(d + 24)))
            return qpk_err_setf(e, QPK_E_CHECKSUM, "section %u (kind %u) checksum mismatch", i, s.kind);
        *seen[s.kind] = s;
    }
    if (!L->meta.kind)
        return qpk_err_setf(e, QPK_E_CORRUPT, "no metadata section");
    if (!L->table.kind)
        return qpk_err_setf(e, QPK_E_CORRUPT, "no tensor table section");
    return QPK_OK;
}

/* ---------------------------------------------------------------- the table */

static uint64_t t_end(const qpk_tensor *t) { return t->offset + t->nbytes; }

static int cmp_by_name(const void *a, const void *b)
{
    const qpk_tensor *x = *(const qpk_tensor *const *)a, *y = *(const qpk_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static qpk_status parse_entry(qpk_file *f, const layout *L, const uint8_t *p, const uint8_t *pool,
                              uint64_t pool_size, uint64_t *pool_used, char **name_cursor, size_t i, qpk_err *e)
{
    qpk_tensor *t = &f->tensors[i];
    uint32_t name_off = rd_u32(p + 68), name_len = rd_u32(p + 72);
    /* Names are packed back to back in table order, so copying them all takes pool_size bytes. */
    if (name_off != *pool_used || !span_ok(name_off, name_len, pool_size) ||
        !qpk_name_ok((const char *)pool + name_off, name_len))
        return qpk_err_setf(e, QPK_E_CORRUPT, "tensor %zu: bad name (offset %u, length %u)", i, name_off, name_len);
    *pool_used += name_len;
    memcpy(*name_cursor, pool + name_off, name_len);
    (*name_cursor)[name_len] = 0;
    t->name = *name_cursor;
    *name_cursor += name_len + 1;

    t->offset = rd_u64(p), t->nbytes = rd_u64(p + 8), t->xxh3 = rd_u64(p + 16);
    t->type = rd_u32(p + 56), t->group_size = rd_u32(p + 60);
    uint32_t ndim = rd_u32(p + 64);
    if (ndim < 1 || ndim > QPK_MAX_DIMS)
        return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s': ndim %u outside 1..%d", t->name, ndim, QPK_MAX_DIMS);
    t->ndim = (int)ndim;
    for (uint32_t d = 0; d < QPK_MAX_DIMS; d++) {
        uint64_t v = rd_u64(p + 24 + 8 * d);
        if (v > (uint64_t)INT64_MAX || (d >= ndim && v != 0))
            return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s': bad dimension %u", t->name, d);
        t->dims[d] = (int64_t)v;
    }
    if (rd_u32(p + 76) != 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s': reserved field is not zero", t->name);
    uint64_t expect;
    qpk_status s = qpk_tensor_nbytes(t->type, t->group_size, t->ndim, t->dims, &expect, e);
    if (s != QPK_OK)
        return qpk_err_prefix(e, s, "tensor '%s'", t->name);
    if (expect != t->nbytes)
        return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s': %llu bytes stored, its type and shape need %llu",
                            t->name, (unsigned long long)t->nbytes, (unsigned long long)expect);
    /* Types that came after version 3 only in files of their version (older qpk builds wrote version 2's types
     * into version 1 files, which stay readable; no build wrote these early). */
    const uint32_t tv = qpk_type_info_of(t->type)->version;
    if (tv > 3 && tv > f->version)
        return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s' is %s, which format version %u brought: the file says "
                            "version %u", t->name, qpk_type_name(t->type), tv, f->version);
    if (t->offset % f->alignment)
        return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s' at byte %llu is not aligned to %u", t->name,
                            (unsigned long long)t->offset, f->alignment);
    if (t->offset < L->data_off || !span_ok(t->offset - L->data_off, t->nbytes, L->data_size))
        return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s' [%llu, +%llu) lies outside the data area", t->name,
                            (unsigned long long)t->offset, (unsigned long long)t->nbytes);
    t->data = f->base + t->offset;
    return QPK_OK;
}

static qpk_status parse_table(qpk_file *f, const layout *L, uint32_t max_tensors, qpk_err *e)
{
    const uint8_t *s = f->base + L->table.off;
    if (L->table.size < QPK_TENSORS_PREFIX)
        return qpk_err_setf(e, QPK_E_CORRUPT, "tensor table shorter than its prefix");
    uint32_t n = rd_u32(s), entry_size = rd_u32(s + 4);
    uint64_t pool_size = rd_u64(s + 8);
    if (entry_size != QPK_TENSOR_ENTRY_SIZE)
        return qpk_err_setf(e, QPK_E_CORRUPT, "tensor entry size %u, expected %u", entry_size, QPK_TENSOR_ENTRY_SIZE);
    if (n > max_tensors)
        return qpk_err_setf(e, QPK_E_LIMIT, "%u tensors, more than the limit %u", n, max_tensors);
    uint64_t entries = (uint64_t)n * QPK_TENSOR_ENTRY_SIZE;
    if (pool_size > L->table.size || L->table.size - pool_size != QPK_TENSORS_PREFIX + entries)
        return qpk_err_setf(e, QPK_E_CORRUPT, "tensor table size %llu does not match %u entries and %llu name bytes",
                            (unsigned long long)L->table.size, n, (unsigned long long)pool_size);
    f->n_tensors = n;
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    f->by_name = calloc(n ? n : 1, sizeof *f->by_name);
    f->names = malloc(pool_size + n + 1);
    if (!f->tensors || !f->by_name || !f->names)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory for %u tensor entries", n);
    const uint8_t *pool = s + QPK_TENSORS_PREFIX + entries;
    char *cursor = f->names;
    uint64_t pool_used = 0;
    for (size_t i = 0; i < n; i++) {
        QPK_TRY(parse_entry(f, L, s + QPK_TENSORS_PREFIX + i * QPK_TENSOR_ENTRY_SIZE, pool, pool_size, &pool_used,
                        &cursor, i, e));
        if (i > 0 && t_end(&f->tensors[i - 1]) > f->tensors[i].offset)
            return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s' overlaps '%s' or is out of order",
                                f->tensors[i].name, f->tensors[i - 1].name);
    }
    if (pool_used != pool_size)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%llu name bytes in the table are not used by any tensor",
                            (unsigned long long)(pool_size - pool_used));
    const qpk_tensor **idx = f->by_name;
    for (size_t i = 0; i < n; i++)
        idx[i] = &f->tensors[i];
    qsort(idx, n, sizeof *idx, cmp_by_name);
    for (size_t i = 1; i < n; i++)
        if (strcmp(idx[i - 1]->name, idx[i]->name) == 0)
            return qpk_err_setf(e, QPK_E_CORRUPT, "duplicate tensor name '%s'", idx[i]->name);
    return QPK_OK;
}

/* ------------------------------------------------------------ embedded files */

static qpk_status parse_files(qpk_file *f, const layout *L, qpk_err *e)
{
    if (!L->files.kind)
        return QPK_OK;
    const uint8_t *s = f->base + L->files.off;
    uint64_t size = L->files.size, pos = 8;
    if (size < 8)
        return qpk_err_setf(e, QPK_E_CORRUPT, "files section shorter than its count");
    uint32_t n = rd_u32(s);
    if (n > QPK_MAX_BLOBS || rd_u32(s + 4) != 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "files section: bad count %u or reserved field", n);
    f->blobs = calloc(n ? n : 1, sizeof *f->blobs);
    char *names = malloc((size_t)n * 256 + 1);
    if (!f->blobs || !names) {
        free(names);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    /* The blob names live right after the tensor names, in a second allocation we own. */
    f->blob_names = names;
    for (uint32_t i = 0; i < n; i++) {
        if (!span_ok(pos, QPK_BLOB_RECORD_SIZE, size))
            return qpk_err_setf(e, QPK_E_CORRUPT, "embedded file %u: record past the section end", i);
        const uint8_t *r = s + pos;
        qpk_blob_view *b = &f->blobs[i];
        uint32_t nl = rd_u32(r), method = rd_u32(r + 4);
        b->raw_size = rd_u64(r + 8), b->z_size = rd_u64(r + 16), b->raw_xxh3 = rd_u64(r + 24);
        if (method != QPK_BLOB_ZLIB)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "embedded file %u: unknown compression %u", i, method);
        if (b->raw_size > QPK_MAX_BLOB_BYTES)
            return qpk_err_setf(e, QPK_E_LIMIT, "embedded file %u: %llu bytes, over the limit", i,
                                (unsigned long long)b->raw_size);
        if (!span_ok(pos + QPK_BLOB_RECORD_SIZE, nl, size) ||
            !qpk_name_ok((const char *)r + QPK_BLOB_RECORD_SIZE, nl))
            return qpk_err_setf(e, QPK_E_CORRUPT, "embedded file %u: bad name", i);
        if (!span_ok(pos + QPK_BLOB_RECORD_SIZE + nl, b->z_size, size))
            return qpk_err_setf(e, QPK_E_CORRUPT, "embedded file %u: data past the section end", i);
        memcpy(names, r + QPK_BLOB_RECORD_SIZE, nl);
        names[nl] = 0;
        b->name = names;
        names += nl + 1;
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(f->blobs[j].name, b->name) == 0)
                return qpk_err_setf(e, QPK_E_CORRUPT, "embedded file '%s' appears twice", b->name);
        b->z = r + QPK_BLOB_RECORD_SIZE + nl;
        pos = align_up(pos + QPK_BLOB_RECORD_SIZE + nl + b->z_size, 8);
        f->n_blobs++;
    }
    return QPK_OK;
}

/* ---------------------------------------------------------------------- open */

static qpk_status validate(qpk_file *f, const qpk_open_opts *o, qpk_err *e)
{
    layout L = {0};
    QPK_TRY(check_header(f, &L, e));
    uint64_t max_meta = o && o->max_meta_bytes ? o->max_meta_bytes : (64ull << 20);
    if (L.meta.size > max_meta)
        return qpk_err_setf(e, QPK_E_LIMIT, "metadata is %llu bytes, over the limit %llu",
                            (unsigned long long)L.meta.size, (unsigned long long)max_meta);
    f->meta = (const char *)f->base + L.meta.off;
    f->meta_len = (size_t)L.meta.size;
    uint32_t meta_version;
    qpk_status s = qpk_meta_validate(f->meta, f->meta_len, &f->cfg, &meta_version, e);
    if (s != QPK_OK)
        return qpk_err_prefix(e, s, "metadata");
    if (meta_version != f->version)
        return qpk_err_setf(e, QPK_E_CORRUPT, "the header says version %u, the metadata %u", f->version, meta_version);
    QPK_TRY(parse_table(f, &L, o && o->max_tensors ? o->max_tensors : 1000000u, e));
    QPK_TRY(parse_files(f, &L, e));
    if (o && o->verify_checksums)
        for (size_t i = 0; i < f->n_tensors; i++)
            QPK_TRY(qpk_verify_tensor(f, i, e));
    return QPK_OK;
}

qpk_status qpk_open_memory(qpk_file **out, const void *buf, size_t size, const qpk_open_opts *opts,
                           qpk_err *e)
{
    *out = NULL;
    qpk_file *f = calloc(1, sizeof *f);
    if (!f)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    f->base = buf, f->size = size;
    qpk_status s = validate(f, opts, e);
    if (s != QPK_OK) {
        qpk_close(f);
        return s;
    }
    *out = f;
    return QPK_OK;
}

bool qpk_is_qpk_file(const char *path) { return qpk_file_starts_with(path, QPK_MAGIC, QPK_MAGIC_LEN); }

qpk_status qpk_open(qpk_file **out, const char *path, const qpk_open_opts *opts, qpk_err *e)
{
    *out = NULL;
    const void *p;
    size_t size;
    QPK_TRY(qpk_map_file(path, 0, &p, &size, e));
    if (size < QPK_HEADER_SIZE) {
        qpk_unmap_file(p, size);
        return qpk_err_setf(e, QPK_E_CORRUPT, "'%s': %zu bytes, shorter than the 64-byte header", path, size);
    }
    qpk_status s = qpk_open_memory(out, p, size, opts, e);
    if (s != QPK_OK) {
        qpk_unmap_file(p, size);
        return qpk_err_prefix(e, s, "%s", path);
    }
    (*out)->mapped = true;
    return QPK_OK;
}

void qpk_close(qpk_file *f)
{
    if (!f)
        return;
    if (f->mapped)
        qpk_unmap_file(f->base, (size_t)f->size);
    free(f->tensors);
    free(f->by_name);
    free(f->names);
    free(f->blobs);
    free(f->blob_names);
    free(f);
}

/* ----------------------------------------------------------------- accessors */

uint32_t qpk_file_version(const qpk_file *f) { return f->version; }
uint64_t qpk_file_size(const qpk_file *f) { return f->size; }
uint32_t qpk_file_alignment(const qpk_file *f) { return f->alignment; }
size_t qpk_n_tensors(const qpk_file *f) { return f->n_tensors; }
const qpk_config *qpk_file_config(const qpk_file *f) { return &f->cfg; }

const qpk_tensor *qpk_tensor_at(const qpk_file *f, size_t i)
{
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

const qpk_tensor *qpk_find_tensor(const qpk_file *f, const char *name)
{
    size_t lo = 0, hi = f->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->by_name[mid]->name, name);
        if (c == 0)
            return f->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *qpk_metadata(const qpk_file *f, size_t *len)
{
    *len = f->meta_len;
    return f->meta;
}

/* Every f16 scale of a block tensor is finite. */
static qpk_status check_scales(const qpk_tensor *t, qpk_err *e)
{
    const size_t bb = qpk_type_block_bytes(t->type, t->group_size);
    if (!bb)
        return QPK_OK;
    const uint64_t n = t->nbytes / bb, per_row = (uint64_t)t->dims[t->ndim - 1] / t->group_size;
    const uint64_t b = qpk_first_bad_scale(t->type, t->group_size, t->data, n);
    if (b == n)
        return QPK_OK;
    const uint8_t *blk = (const uint8_t *)t->data + b * bb;
    return qpk_err_setf(e, QPK_E_VALUE, "tensor '%s': row %llu, group %llu has a non-finite scale (block bytes %02x%02x%02x%02x)",
                        t->name, (unsigned long long)(b / per_row), (unsigned long long)(b % per_row), blk[0], blk[1],
                        blk[2], blk[3]);
}

qpk_status qpk_verify_tensor(const qpk_file *f, size_t i, qpk_err *e)
{
    if (i >= f->n_tensors)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "no tensor %zu", i);
    const qpk_tensor *t = &f->tensors[i];
    uint64_t h = XXH3_64bits(t->data, (size_t)t->nbytes);
    if (CHECKSUM_DIFFERS(h, t->xxh3))
        return qpk_err_setf(e, QPK_E_CHECKSUM, "tensor '%s': data checksum %016llx, table says %016llx",
                            t->name, (unsigned long long)h, (unsigned long long)t->xxh3);
    return check_scales(t, e);
}

qpk_status qpk_check_permutation(const void *perm, int64_t n, const char *name, qpk_err *e)
{
    uint8_t *seen = calloc((size_t)n + 1, 1);
    if (!seen)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    qpk_status s = QPK_OK;
    for (int64_t j = 0; j < n && s == QPK_OK; j++) {
        int32_t v;
        memcpy(&v, (const uint8_t *)perm + 4 * j, 4); /* mapped file data: no alignment promised beyond the tensor's */
        if (v < 0 || v >= n || seen[v]++)
            s = qpk_err_setf(e, QPK_E_CORRUPT, "'%s': the input permutation takes input %d %s", name, v,
                             v < 0 || v >= n ? "that does not exist" : "twice");
    }
    free(seen);
    return s;
}

qpk_status qpk_check_model(const qpk_file *f, qpk_err *e)
{
    const qpk_config *c = &f->cfg;
    size_t n = qpk_model_n_tensors(c), perms = 0;
    for (size_t i = 0; i < n; i++) {
        qpk_role role;
        int layer;
        char name[QPK_MAX_NAME];
        int64_t dims[2];
        qpk_model_tensor_at(c, i, &role, &layer);
        qpk_tensor_name(name, sizeof name, role, layer);
        const qpk_tensor *t = qpk_find_tensor(f, name);
        if (!t)
            return qpk_err_setf(e, QPK_E_MISMATCH, "missing tensor '%s'", name);
        if (t->type == QPK_TYPE_I32)
            return qpk_err_setf(e, QPK_E_MISMATCH, "tensor '%s' is i32: integers are for permutations only", name);
        /* Norms and biases are vectors of floats (FORMAT.md section 5): blocks are for matrices' rows. */
        if (!qpk_role_is_matrix(role) && qpk_type_is_quantized(t->type))
            return qpk_err_setf(e, QPK_E_MISMATCH, "tensor '%s' is %s: norms and biases are stored as f32, f16 or bf16",
                                name, qpk_type_name(t->type));
        int nd = qpk_role_shape(c, role, dims);
        if (t->ndim != nd || t->dims[0] != dims[0] || (nd == 2 && t->dims[1] != dims[1]))
            return qpk_err_setf(e, QPK_E_MISMATCH, "tensor '%s' has the wrong shape for the config", name);
        /* A linear's input permutation (version 2): i32 [in] beside it. */
        const qpk_tensor *p = qpk_perm_name(name, sizeof name, role, layer) ? qpk_find_tensor(f, name) : NULL;
        if (!p)
            continue;
        if (f->version < 2)
            return qpk_err_setf(e, QPK_E_CORRUPT, "tensor '%s' is a permutation, which version 1 files do not have", name);
        if (p->type != QPK_TYPE_I32 || p->ndim != 1 || p->dims[0] != dims[1])
            return qpk_err_setf(e, QPK_E_MISMATCH, "permutation '%s' is not i32 [%lld]", name, (long long)dims[1]);
        QPK_TRY(qpk_check_permutation(p->data, p->dims[0], name, e));
        perms++;
    }
    if (f->n_tensors != n + perms)
        return qpk_err_setf(e, QPK_E_MISMATCH, "%zu tensors, the config implies %zu", f->n_tensors, n + perms);
    return QPK_OK;
}

size_t qpk_n_blobs(const qpk_file *f) { return f->n_blobs; }

const char *qpk_blob_name(const qpk_file *f, size_t i, uint64_t *raw_size)
{
    if (i >= f->n_blobs)
        return NULL;
    if (raw_size)
        *raw_size = f->blobs[i].raw_size;
    return f->blobs[i].name;
}

qpk_status qpk_blob_read(const qpk_file *f, const char *name, void *buf, size_t cap, size_t *len,
                         qpk_err *e)
{
    const qpk_blob_view *b = NULL;
    for (size_t i = 0; i < f->n_blobs && !b; i++)
        if (strcmp(f->blobs[i].name, name) == 0)
            b = &f->blobs[i];
    if (!b)
        return qpk_err_setf(e, QPK_E_MISMATCH, "no embedded file '%s'", name);
    if (len)
        *len = (size_t)b->raw_size;
    if (!buf)
        return QPK_OK;
    if (cap < b->raw_size)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "buffer of %zu bytes for '%s' of %llu", cap, name,
                            (unsigned long long)b->raw_size);
    uLongf out = (uLongf)b->raw_size;
    uLong in = (uLong)b->z_size;
    int z = uncompress2(buf, &out, b->z, &in);
    if (z != Z_OK || out != b->raw_size || in != b->z_size)
        return qpk_err_setf(e, QPK_E_CORRUPT, "embedded file '%s': bad zlib stream", name);
    if (CHECKSUM_DIFFERS(XXH3_64bits(buf, (size_t)out), b->raw_xxh3))
        return qpk_err_setf(e, QPK_E_CHECKSUM, "embedded file '%s': checksum mismatch", name);
    return QPK_OK;
}
