/*
 * .qpk writer and reader: round trip, determinism, atomic failure, and one
 * handcrafted defect per validation rule, each with its exact expected error.
 */
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "qpk/format.h"
#include "qpk_private.h"
#include "testhelp.h"

static char g_dir[] = "/tmp/qpk-test-format-XXXXXX";

static const qpk_config TINY = {
    .vocab_size = 8, .hidden_size = 4, .intermediate_size = 8, .n_layers = 1, .n_heads = 2,
    .n_kv_heads = 1, .head_dim = 2, .max_position_embeddings = 64, .rope_theta = 10000,
    .rms_norm_eps = 1e-6, .tie_word_embeddings = true, .hidden_act = "silu", .bos_token_id = -1,
};

static char *meta_for(const qpk_config *c)
{
    char *cfg = qpk_config_to_json(c);
    size_t n = strlen(cfg) + 200;
    char *m = malloc(n);
    snprintf(m, n, "{\"format\":\"qpk\",\"format_version\":1,\"architecture\":\"qwen2\",\"config\":%s}", cfg);
    free(cfg);
    return m;
}

/* Value j of tensor i: distinct everywhere, so a misplaced byte shows. */
static float sample_value(size_t i, size_t j) { return (float)i + (float)j / 1024.0f; }

/* A complete tiny model in f32, plus one embedded file. */
static qpk_status write_sample(const char *path, qpk_err *e)
{
    qpk_writer *w;
    qpk_status s = qpk_writer_create(&w, path, e);
    if (s != QPK_OK)
        return s;
    for (size_t i = 0; i < qpk_model_n_tensors(&TINY) && s == QPK_OK; i++) {
        qpk_role role;
        int layer;
        char name[QPK_MAX_NAME];
        int64_t dims[2];
        qpk_model_tensor_at(&TINY, i, &role, &layer);
        qpk_tensor_name(name, sizeof name, role, layer);
        int nd = qpk_role_shape(&TINY, role, dims);
        size_t n = (size_t)dims[0] * (size_t)(nd == 2 ? dims[1] : 1);
        s = qpk_writer_begin_tensor(w, name, QPK_TYPE_F32, 0, nd, dims, e);
        for (size_t j = 0; j < n && s == QPK_OK; j++) {
            float v = sample_value(i, j);
            s = qpk_writer_write(w, &v, sizeof v, e);
        }
        if (s == QPK_OK)
            s = qpk_writer_end_tensor(w, e);
    }
    const char blob[] = "{\"hello\": \"tokenizer\"}";
    if (s == QPK_OK)
        s = qpk_writer_add_blob(w, "tokenizer.json", blob, sizeof blob - 1, e);
    if (s != QPK_OK) {
        qpk_writer_discard(w);
        return s;
    }
    char *meta = meta_for(&TINY);
    s = qpk_writer_finish(w, meta, strlen(meta), e);
    free(meta);
    return s;
}

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n ? *n : 1);
    if (fread(b, 1, *n, f) != *n)
        *n = 0;
    fclose(f);
    return b;
}

static int count_dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *de; d && (de = readdir(d));)
        n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    if (d)
        closedir(d);
    return n;
}

/* ------------------------------------------------------------ byte surgery */

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static void wr64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> 8 * i);
}
static void wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> 8 * i);
}

/* Recomputes every checksum after an edit, so the defect under test is what the reader meets. */
static void reseal(uint8_t *b, size_t n)
{
    uint32_t ns = rd32(b + 28);
    uint64_t dir = rd64(b + 32);
    for (uint32_t i = 0; i < ns && dir + 32 * (i + 1) <= n; i++) {
        uint8_t *d = b + dir + 32 * i;
        uint64_t off = rd64(d + 8), size = rd64(d + 16);
        if (off <= n && size <= n - off)
            wr64(d + 24, XXH3_64bits(b + off, size));
    }
    uint8_t h[64];
    memcpy(h, b, 64);
    memset(h + 56, 0, 8);
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, h, 64);
    if (dir + 32ull * ns <= n)
        XXH3_64bits_update(st, b + dir, 32ull * ns);
    wr64(b + 56, XXH3_64bits_digest(st));
    XXH3_freeState(st);
}

static uint8_t *section(uint8_t *b, uint32_t kind, uint64_t *size)
{
    uint64_t dir = rd64(b + 32);
    for (uint32_t i = 0; i < rd32(b + 28); i++)
        if (rd32(b + dir + 32 * i) == kind) {
            *size = rd64(b + dir + 32 * i + 16);
            return b + rd64(b + dir + 32 * i + 8);
        }
    return NULL;
}

static uint8_t *entry(uint8_t *b, size_t i)
{
    uint64_t size;
    return section(b, 2, &size) + 16 + 80 * i;
}

/* ------------------------------------------------------------ the defects */

typedef struct defect {
    const char *what;
    void (*apply)(uint8_t *b, size_t *n);
    bool reseal;
    qpk_status want;
    const char *msg;
    bool verify;
} defect;

static void d_truncate(uint8_t *b, size_t *n) { (void)b, *n -= 100; }
static void d_tiny(uint8_t *b, size_t *n) { (void)b, *n = 40; }
static void d_magic(uint8_t *b, size_t *n) { (void)n, b[0] = 'X'; }
static void d_version(uint8_t *b, size_t *n) { (void)n, wr32(b + 8, 6); }
static void d_header_size(uint8_t *b, size_t *n) { (void)n, wr32(b + 12, 72); }
static void d_header_flip(uint8_t *b, size_t *n) { (void)n, b[44] ^= 1; }
static void d_file_size(uint8_t *b, size_t *n) { (void)n, wr64(b + 16, rd64(b + 16) + 1); }
static void d_alignment(uint8_t *b, size_t *n) { (void)n, wr32(b + 24, 96); }
static void d_sections(uint8_t *b, size_t *n) { (void)n, wr32(b + 28, 17); }
static void d_dir_past_eof(uint8_t *b, size_t *n) { wr64(b + 32, *n - 8); }
static void d_data_misplaced(uint8_t *b, size_t *n) { (void)n, wr64(b + 40, 64); }
static void d_meta_flip(uint8_t *b, size_t *n)
{
    uint64_t size;
    (void)n, section(b, 1, &size)[3] ^= 0x20;
}
static void d_meta_not_json(uint8_t *b, size_t *n)
{
    uint64_t size;
    (void)n, section(b, 1, &size)[0] = '[';
}
/* "format" twice: same length edit of the "architecture" key. */
static void d_meta_dup_key(uint8_t *b, size_t *n)
{
    uint64_t size;
    char *m = (char *)section(b, 1, &size), *k = strstr(m, "\"architecture\":\"qwen2\"");
    (void)n, memcpy(k, "\"format\":\"qpk\",\"x\":1  ", 22);
}
/* A NUL escape in the model type, which C would cut short to "qwen2". */
static void d_meta_nul(uint8_t *b, size_t *n)
{
    uint64_t size;
    char *m = (char *)section(b, 1, &size), *k = strstr(m, "\"architecture\":\"qwen2\"");
    (void)n, memcpy(k, "\"arch\\u0000tecture\":1", 22);
}
static void d_meta_version(uint8_t *b, size_t *n)
{
    uint64_t size;
    char *m = (char *)section(b, 1, &size);
    (void)n, m[strstr(m, "\"format_version\":1") - m + 17] = '7';
}
static void d_meta_model_type(uint8_t *b, size_t *n)
{
    uint64_t size;
    char *m = (char *)section(b, 1, &size);
    (void)n, memcpy(strstr(m, "qwen2\",\"vocab"), "llama", 5);
}
static void d_section_overlap(uint8_t *b, size_t *n)
{
    uint64_t dir = rd64(b + 32);
    (void)n, wr64(b + dir + 8, rd64(b + 40)); /* META placed on top of the data area */
}
static void d_section_kind(uint8_t *b, size_t *n)
{
    (void)n, wr32(b + rd64(b + 32) + 64, 9); /* FILES becomes an unknown critical kind */
}
static void d_section_flags(uint8_t *b, size_t *n) { (void)n, wr32(b + rd64(b + 32) + 68, 6); }
static void d_section_twice(uint8_t *b, size_t *n) { (void)n, wr32(b + rd64(b + 32) + 64, 1); }
static void d_no_table(uint8_t *b, size_t *n) { (void)n, wr32(b + rd64(b + 32) + 32, 9), wr32(b + rd64(b + 32) + 36, 0); }
static void d_entry_size(uint8_t *b, size_t *n)
{
    uint64_t size;
    (void)n, wr32(section(b, 2, &size) + 4, 88);
}
static void d_count_limit(uint8_t *b, size_t *n)
{
    uint64_t size;
    (void)n, wr32(section(b, 2, &size), 2000000);
}
static void d_table_size(uint8_t *b, size_t *n)
{
    uint64_t size;
    uint8_t *t = section(b, 2, &size);
    (void)n, wr64(t + 8, rd64(t + 8) + 1);
}
static void d_past_data(uint8_t *b, size_t *n) { (void)n, wr64(entry(b, 3), (rd64(b + 40) + rd64(b + 48) + 63) & ~63ull); }
static void d_misaligned(uint8_t *b, size_t *n) { (void)n, wr64(entry(b, 2), rd64(entry(b, 2)) + 4); }
static void d_overlap(uint8_t *b, size_t *n) { (void)n, wr64(entry(b, 2), rd64(entry(b, 1))); }
static void d_nbytes(uint8_t *b, size_t *n) { (void)n, wr64(entry(b, 1) + 8, rd64(entry(b, 1) + 8) + 4); }
static void d_type(uint8_t *b, size_t *n) { (void)n, wr32(entry(b, 1) + 56, 43); }
static void d_group(uint8_t *b, size_t *n) { (void)n, wr32(entry(b, 1) + 60, 32); }
static void d_ndim0(uint8_t *b, size_t *n) { (void)n, wr32(entry(b, 1) + 64, 0); }
static void d_ndim5(uint8_t *b, size_t *n) { (void)n, wr32(entry(b, 1) + 64, 5); }
static void d_dim_garbage(uint8_t *b, size_t *n) { (void)n, wr64(entry(b, 1) + 24 + 24, 3); }
static void d_reserved(uint8_t *b, size_t *n) { (void)n, wr32(entry(b, 1) + 76, 1); }
static void d_name_oob(uint8_t *b, size_t *n) { (void)n, wr32(entry(b, 1) + 68, 100000); }
static void d_name_char(uint8_t *b, size_t *n)
{
    uint64_t size;
    uint8_t *t = section(b, 2, &size);
    (void)n, t[16 + 80 * rd32(t) + 2] = ' ';
}
/* Entry 2's name rewritten to entry 1's (both "model.layers.0.input_layernorm.weight"-long). */
static void d_name_dup(uint8_t *b, size_t *n)
{
    uint64_t size;
    uint8_t *t = section(b, 2, &size), *pool = t + 16 + 80 * rd32(t);
    uint32_t len1 = rd32(entry(b, 1) + 72), len2 = rd32(entry(b, 2) + 72);
    uint8_t name1[256];
    memcpy(name1, pool + rd32(entry(b, 1) + 68), len1);
    /* Shift the rest of the pool so the names stay packed. */
    uint8_t *at = pool + rd32(entry(b, 2) + 68);
    memmove(at + len1, at + len2, (size_t)(t + size - (at + len2)));
    memcpy(at, name1, len1);
    wr32(entry(b, 2) + 72, len1);
    for (uint32_t i = 3; i < rd32(t); i++)
        wr32(entry(b, i) + 68, rd32(entry(b, i) + 68) + len1 - len2);
    wr64(t + 8, rd64(t + 8) + len1 - len2);
    uint64_t dir = rd64(b + 32);
    wr64(b + dir + 32 + 16, size + len1 - len2); /* the table section's size */
    (void)n;
}
static void d_name_overlap(uint8_t *b, size_t *n) { (void)n, wr32(entry(b, 2) + 68, rd32(entry(b, 1) + 68)); }
static void d_data_flip(uint8_t *b, size_t *n) { (void)n, b[rd64(entry(b, 0)) + 5] ^= 1; }
static void d_blob_method(uint8_t *b, size_t *n)
{
    uint64_t size;
    (void)n, wr32(section(b, 3, &size) + 8 + 4, 7);
}
static void d_blob_name(uint8_t *b, size_t *n)
{
    uint64_t size;
    (void)n, wr32(section(b, 3, &size) + 8, 300);
}
static void d_blob_size(uint8_t *b, size_t *n)
{
    uint64_t size;
    (void)n, wr64(section(b, 3, &size) + 8 + 16, 1u << 20);
}
static void d_appended(uint8_t *b, size_t *n) { (void)b, *n += 8; }

static const defect DEFECTS[] = {
    {"truncated file", d_truncate, false, QPK_E_CORRUPT, "truncated"},
    {"shorter than a header", d_tiny, false, QPK_E_CORRUPT, "shorter than the 64-byte header"},
    {"bad magic", d_magic, false, QPK_E_CORRUPT, "bad magic"},
    {"unknown version", d_version, false, QPK_E_UNSUPPORTED, "format version 6"},
    {"header size", d_header_size, true, QPK_E_CORRUPT, "header size 72"},
    {"header checksum", d_header_flip, false, QPK_E_CHECKSUM, "header checksum"},
    {"file size field", d_file_size, true, QPK_E_CORRUPT, "truncated"},
    {"bytes appended", d_appended, false, QPK_E_CORRUPT, "header says"},
    {"alignment", d_alignment, true, QPK_E_CORRUPT, "alignment 96"},
    {"section count", d_sections, true, QPK_E_CORRUPT, "17 sections"},
    {"directory past EOF", d_dir_past_eof, true, QPK_E_CORRUPT, "section directory"},
    {"data area misplaced", d_data_misplaced, true, QPK_E_CORRUPT, "data area"},
    {"metadata checksum", d_meta_flip, false, QPK_E_CHECKSUM, "kind 1) checksum"},
    {"metadata not JSON", d_meta_not_json, true, QPK_E_CORRUPT, "metadata: JSON: expected ',' or ']' at byte 9"},
    {"metadata version", d_meta_version, true, QPK_E_CORRUPT, "format_version"},
    {"metadata key twice", d_meta_dup_key, true, QPK_E_CORRUPT, "key 'format' appears twice"},
    {"metadata NUL escape", d_meta_nul, true, QPK_E_UNSUPPORTED, "\\u0000"},
    {"metadata other model", d_meta_model_type, true, QPK_E_UNSUPPORTED, "model_type \"llama\""},
    {"section overlaps data", d_section_overlap, true, QPK_E_CORRUPT, "overlaps or is outside"},
    {"unknown critical section", d_section_kind, true, QPK_E_UNSUPPORTED, "unknown critical section kind 9"},
    {"section flags", d_section_flags, true, QPK_E_CORRUPT, "unknown flags"},
    {"section twice", d_section_twice, true, QPK_E_CORRUPT, "appears twice"},
    {"no tensor table", d_no_table, true, QPK_E_CORRUPT, "no tensor table"},
    {"entry size", d_entry_size, true, QPK_E_CORRUPT, "entry size 88"},
    {"tensor count limit", d_count_limit, true, QPK_E_LIMIT, "more than the limit"},
    {"table size", d_table_size, true, QPK_E_CORRUPT, "does not match"},
    {"tensor past data area", d_past_data, true, QPK_E_CORRUPT, "outside the data area"},
    {"misaligned tensor", d_misaligned, true, QPK_E_CORRUPT, "not aligned"},
    {"overlapping tensors", d_overlap, true, QPK_E_CORRUPT, "overlaps"},
    {"size vs shape", d_nbytes, true, QPK_E_CORRUPT, "its type and shape need"},
    {"unknown type", d_type, true, QPK_E_UNSUPPORTED, "unknown tensor type id 43"},
    {"group size on a float type", d_group, true, QPK_E_CORRUPT, "takes no group size"},
    {"ndim 0", d_ndim0, true, QPK_E_CORRUPT, "ndim 0"},
    {"ndim 5", d_ndim5, true, QPK_E_CORRUPT, "ndim 5"},
    {"unused dimension set", d_dim_garbage, true, QPK_E_CORRUPT, "bad dimension 3"},
    {"reserved field", d_reserved, true, QPK_E_CORRUPT, "reserved field"},
    {"name out of bounds", d_name_oob, true, QPK_E_CORRUPT, "bad name"},
    {"name with a space", d_name_char, true, QPK_E_CORRUPT, "bad name"},
    {"duplicate name", d_name_dup, true, QPK_E_CORRUPT, "duplicate tensor name"},
    {"names not packed", d_name_overlap, true, QPK_E_CORRUPT, "tensor 2: bad name"},
    {"tensor checksum", d_data_flip, false, QPK_E_CHECKSUM, "data checksum", true},
    {"blob compression", d_blob_method, true, QPK_E_UNSUPPORTED, "unknown compression 7"},
    {"blob name", d_blob_name, true, QPK_E_CORRUPT, "bad name"},
    {"blob size", d_blob_size, true, QPK_E_CORRUPT, "past the section end"},
};

static void test_defects(const uint8_t *good, size_t n)
{
    char path[256];
    snprintf(path, sizeof path, "%s/defect.qpk", g_dir);
    size_t null_e = 0;
    for (size_t i = 0; i < sizeof DEFECTS / sizeof *DEFECTS; i++) {
        const defect *d = &DEFECTS[i];
        uint8_t *b = calloc(1, n + 64);
        memcpy(b, good, n);
        size_t m = n;
        d->apply(b, &m);
        if (d->reseal)
            reseal(b, m);
        qpk_file *f = NULL;
        qpk_err e = {0};
        qpk_open_opts o = {.verify_checksums = d->verify};
        qpk_status s = qpk_open_memory(&f, b, m, &o, &e);
        CHECKF(s == d->want && strstr(e.msg, d->msg), "defect '%s': status %d (want %d), \"%s\" (want \"%s\")",
               d->what, s, d->want, e.msg, d->msg);
        CHECK(f == NULL);
        qpk_close(f);
        /* Again without an e (the error contract): the same failure and no handle, from memory and from a
         * file, whose path qpk_open prefixes to the message. */
        qpk_status s2 = qpk_open_memory(&f, b, m, &o, NULL);
        CHECKF(s2 != QPK_OK && s2 == s && f == NULL, "defect '%s' with e == NULL: status %d (want %d)", d->what,
               s2, s);
        qpk_close(f);
        FILE *out = fopen(path, "wb");
        CHECK(out && fwrite(b, 1, m, out) == m && fclose(out) == 0);
        f = NULL;
        s2 = qpk_open(&f, path, &o, NULL);
        CHECKF(s2 != QPK_OK && s2 == s && f == NULL, "defect '%s' from a file with e == NULL: status %d (want %d)",
               d->what, s2, s);
        qpk_close(f);
        null_e++;
        free(b);
    }
    unlink(path);
    printf("%zu distinct malformed .qpk inputs checked\n", sizeof DEFECTS / sizeof *DEFECTS);
    printf("%zu of them replayed with e == NULL (memory and file)\n", null_e);
}

/* ------------------------------------------------------------ round trip */

static void test_round_trip(const char *path)
{
    qpk_file *f;
    qpk_err e = {0};
    qpk_open_opts o = {.verify_checksums = true};
    CHECKF(qpk_open(&f, path, &o, &e) == QPK_OK, "%s", e.msg);
    if (!f)
        return;
    CHECK(qpk_n_tensors(f) == qpk_model_n_tensors(&TINY));
    CHECK(qpk_check_model(f, &e) == QPK_OK);
    CHECK(qpk_file_config(f)->n_kv_heads == 1 && qpk_file_config(f)->tie_word_embeddings);
    bool values_ok = true, aligned = true;
    for (size_t i = 0; i < qpk_n_tensors(f); i++) {
        const qpk_tensor *t = qpk_tensor_at(f, i);
        const float *v = t->data;
        aligned &= ((uintptr_t)t->data % 64) == 0;
        for (size_t j = 0; j < t->nbytes / 4; j++)
            values_ok &= v[j] == sample_value(i, j);
        CHECK(qpk_find_tensor(f, t->name) == t);
    }
    CHECK(values_ok);
    CHECK(aligned);
    CHECK(qpk_find_tensor(f, "lm_head.weight") == NULL);
    size_t len;
    char buf[64];
    CHECK(qpk_blob_read(f, "tokenizer.json", NULL, 0, &len, &e) == QPK_OK && len == 22);
    CHECK(qpk_blob_read(f, "tokenizer.json", buf, sizeof buf, &len, &e) == QPK_OK && !memcmp(buf, "{\"hello\"", 8));
    CHECK_ERR(qpk_blob_read(f, "vocab.json", buf, sizeof buf, &len, &e), QPK_E_MISMATCH, e, "no embedded file");
    CHECK_ERR(qpk_blob_read(f, "tokenizer.json", buf, 4, &len, &e), QPK_E_INVALID_ARG, e, "buffer of 4 bytes");
    qpk_close(f);
}

/* ------------------------------------------------------------ atomicity */

static void test_writer_misuse(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/misuse.qpk", g_dir);
    qpk_writer *w;
    qpk_err e = {0};
    int64_t dims[2] = {2, 3};
    CHECK(qpk_writer_create(&w, path, &e) == QPK_OK);
    CHECK_ERR(qpk_writer_begin_tensor(w, "bad name", QPK_TYPE_F32, 0, 2, dims, &e), QPK_E_INVALID_ARG, e, "bad tensor name");
    CHECK(qpk_writer_begin_tensor(w, "a", QPK_TYPE_F32, 0, 2, dims, &e) == QPK_OK);
    float v[7] = {0};
    CHECK_ERR(qpk_writer_write(w, v, sizeof v, &e), QPK_E_INVALID_ARG, e, "more bytes");
    CHECK(qpk_writer_write(w, v, 5 * sizeof *v, &e) == QPK_OK);
    CHECK_ERR(qpk_writer_end_tensor(w, &e), QPK_E_INVALID_ARG, e, "got 20 of its 24 bytes");
    CHECK(qpk_writer_write(w, v, sizeof *v, &e) == QPK_OK && qpk_writer_end_tensor(w, &e) == QPK_OK);
    CHECK_ERR(qpk_writer_begin_tensor(w, "a", QPK_TYPE_F32, 0, 2, dims, &e), QPK_E_INVALID_ARG, e, "duplicate");
    CHECK_ERR(qpk_writer_finish(w, "{}", 2, &e), QPK_E_CORRUPT, e, "refusing to write metadata");
    CHECK(access(path, F_OK) != 0);
    CHECK(count_dir_entries(g_dir) == 1); /* only sample.qpk: no temporary left */
}

static void test_no_folder(void)
{
    qpk_writer *w;
    qpk_err e = {0};
    CHECK_ERR(qpk_writer_create(&w, "/nonexistent-qpk-dir/x.qpk", &e), QPK_E_IO, e, "cannot create");
    CHECK(w == NULL);
}

/* A full disk, simulated with RLIMIT_FSIZE in a child: the write fails, nothing is left. */
static void test_disk_full(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/full.qpk", g_dir);
    FILE *old = fopen(path, "w"); /* an existing file must survive a failed replacement */
    fputs("previous", old);
    fclose(old);
    int before = count_dir_entries(g_dir);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {64 << 10, 64 << 10};
        setrlimit(RLIMIT_FSIZE, &rl);
        qpk_writer *w;
        qpk_err e = {0};
        if (qpk_writer_create(&w, path, &e) != QPK_OK)
            _exit(90);
        int64_t dims[1] = {1 << 20};
        qpk_status s = qpk_writer_begin_tensor(w, "big", QPK_TYPE_F32, 0, 1, dims, &e);
        static float zeros[1 << 16];
        for (int i = 0; i < 16 && s == QPK_OK; i++)
            s = qpk_writer_write(w, zeros, sizeof zeros, &e);
        if (s == QPK_OK)
            s = qpk_writer_end_tensor(w, &e);
        if (s == QPK_OK) {
            char *meta = meta_for(&TINY);
            s = qpk_writer_finish(w, meta, strlen(meta), &e);
        } else {
            qpk_writer_discard(w);
        }
        _exit(s == QPK_E_IO && strstr(e.msg, "while writing") ? 0 : 91);
    }
    int st;
    waitpid(pid, &st, 0);
    CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
    size_t n;
    uint8_t *b = slurp(path, &n);
    CHECK(b && n == 8 && !memcmp(b, "previous", 8));
    free(b);
    CHECK(count_dir_entries(g_dir) == before);
    unlink(path);
}

static void test_deterministic(const char *path)
{
    char other[256];
    snprintf(other, sizeof other, "%s/again.qpk", g_dir);
    qpk_err e = {0};
    CHECK(write_sample(other, &e) == QPK_OK);
    size_t n1, n2;
    uint8_t *a = slurp(path, &n1), *b = slurp(other, &n2);
    CHECK(a && b && n1 == n2 && memcmp(a, b, n1) == 0);
    free(a);
    free(b);
    unlink(other);
}

static void test_types(void)
{
    uint64_t n;
    qpk_err e = {0};
    int64_t d[2] = {3, 5};
    CHECK(qpk_tensor_nbytes(QPK_TYPE_BF16, 0, 2, d, &n, &e) == QPK_OK && n == 30);
    int64_t huge[3] = {1LL << 40, 1LL << 40, 4};
    CHECK_ERR(qpk_tensor_nbytes(QPK_TYPE_F32, 0, 3, huge, &n, &e), QPK_E_LIMIT, e, "overflows");
    qpk_type t;
    CHECK(qpk_type_from_name("BF16", &t) && t == QPK_TYPE_BF16);
    CHECK(!qpk_type_from_name("int3", &t));
    CHECK(qpk_type_name(63) == NULL);
    /* What --quant takes, from the rows: int8z (imported GPTQ's) and the read-only Q2_K, Q3_K (and i-quants) are not
     * among them. */
    static const char LIST[] = "int8, int4, int4s, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, mlx4, mlx8, mlx4_f16, mlx8_f16, iq4_nl or iq4_xs";
    char buf[sizeof LIST + 8], small[8];
    CHECK(qpk_quant_type_list(buf, sizeof buf, ", ", " or ") == strlen(LIST) && !strcmp(buf, LIST));
    CHECK(qpk_quant_type_list(small, sizeof small, ", ", " or ") == strlen(LIST) && !strcmp(small, "int8, i"));
    CHECK(qpk_quant_type_list(NULL, 0, " | ", " | ") ==
          strlen("int8 | int4 | int4s | q4_1 | q5_0 | q5_1 | q4_k | q5_k | q6_k | mlx4 | mlx8 | mlx4_f16 | mlx8_f16 | "
                 "iq4_nl | iq4_xs"));
    static const uint32_t TARGETS[] = {QPK_TYPE_INT8, QPK_TYPE_INT4, QPK_TYPE_INT4S,   QPK_TYPE_Q4_1,    QPK_TYPE_Q5_0,
                                       QPK_TYPE_Q5_1, QPK_TYPE_Q4_K, QPK_TYPE_Q5_K,    QPK_TYPE_Q6_K,    QPK_TYPE_MLX4,
                                       QPK_TYPE_MLX8, QPK_TYPE_MLX4_F16, QPK_TYPE_MLX8_F16, QPK_TYPE_IQ4_NL, QPK_TYPE_IQ4_XS};
    for (uint32_t id = 0; id < 64; id++) {
        bool listed = false;
        for (size_t i = 0; i < sizeof TARGETS / sizeof *TARGETS; i++)
            listed |= TARGETS[i] == id;
        CHECKF(qpk_type_is_quant_target(id) == listed, "type %u", id);
    }
}

static void test_err_prefix(void)
{
    qpk_err e = {0};
    qpk_status s = qpk_err_setf(&e, QPK_E_IO, "inner");
    CHECK(qpk_err_prefix(&e, s, "outer %d", 1) == QPK_E_IO);
    CHECK(strcmp(e.msg, "outer 1: inner") == 0 && e.status == QPK_E_IO);
    memset(e.msg, 'x', sizeof e.msg - 1);
    e.msg[sizeof e.msg - 1] = 0;
    qpk_err_prefix(&e, s, "p");
    CHECK(strncmp(e.msg, "p: xxx", 6) == 0 && strlen(e.msg) == sizeof e.msg - 1);
    /* Without an e the failure is still forwarded: `return qpk_err_prefix(e, s, ...)` must not succeed. */
    CHECK(qpk_err_prefix(NULL, QPK_E_CORRUPT, "ctx %d", 2) == QPK_E_CORRUPT);
}

/* A quantized tensor whose f16 scale is NaN or infinite, with every checksum made consistent. */
static void test_nonfinite_scales(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/scales.qpk", g_dir);
    const uint32_t types[2] = {QPK_TYPE_INT8, QPK_TYPE_INT4};
    const uint16_t bad[2] = {0x7e00, 0xfc00}; /* a NaN, -infinity */
    for (int t = 0; t < 2; t++) {
        qpk_writer *w;
        qpk_err e = {0};
        int64_t dims[2] = {3, 64};
        size_t bytes = 3 * qpk_type_row_bytes(types[t], 32, 64);
        uint8_t data[512] = {0};
        CHECK(qpk_writer_create(&w, path, &e) == QPK_OK);
        CHECK(qpk_writer_begin_tensor(w, "x", types[t], 32, 2, dims, &e) == QPK_OK);
        CHECK(qpk_writer_write(w, data, bytes, &e) == QPK_OK && qpk_writer_end_tensor(w, &e) == QPK_OK);
        char *meta = meta_for(&TINY);
        CHECK(qpk_writer_finish(w, meta, strlen(meta), &e) == QPK_OK);
        free(meta);
        size_t n;
        uint8_t *b = slurp(path, &n), *ent = entry(b, 0);
        uint8_t *block = b + rd64(ent) + 2 * qpk_type_block_bytes(types[t], 32) + 1 * qpk_type_row_bytes(types[t], 32, 64);
        memcpy(block, &bad[t], 2); /* row 1, group 0... then 2 blocks further: row 1, group 1 */
        wr64(ent + 16, XXH3_64bits(b + rd64(ent), rd64(ent + 8)));
        reseal(b, n);
        qpk_file *f = NULL;
        CHECK(qpk_open_memory(&f, b, n, NULL, &e) == QPK_OK); /* the structure is sound */
        CHECK_ERR(qpk_verify_tensor(f, 0, &e), QPK_E_VALUE, e, "tensor 'x': row 2, group 0 has a non-finite scale");
        qpk_close(f);
        f = NULL;
        CHECK_ERR(qpk_open_memory(&f, b, n, &(qpk_open_opts){.verify_checksums = true}, &e), QPK_E_VALUE, e,
                  "non-finite scale");
        CHECK(f == NULL);
        free(b);
    }
    unlink(path);
}

/*
 * Issue 20, class 8: the version each type came with (FORMAT.md section 10), the folder
 * layouts that hold it, and a writer that refuses a tensor newer than the version it writes.
 */
static void test_type_versions(void)
{
    static const uint32_t V1[] = {QPK_TYPE_F32,  QPK_TYPE_F16,  QPK_TYPE_BF16,
                                  QPK_TYPE_INT8, QPK_TYPE_INT4, QPK_TYPE_INT4S};
    for (uint32_t id = 0; id < QPK_TYPE_COUNT_; id++) {
        const qpk_type_info *t = qpk_type_info_of(id);
        bool v1 = false;
        for (size_t i = 0; i < sizeof V1 / sizeof *V1; i++)
            v1 |= V1[i] == id;
        const bool mlx = id >= QPK_TYPE_MLX4 && id <= QPK_TYPE_MLX8_F16; /* MLX's affine groups came with version 4 */
        const bool iq = id >= QPK_TYPE_IQ4_NL; /* ggml's i-quants came with version 5 */
        CHECKF(!t || t->version == (v1 ? 1u : mlx ? 4u : iq ? 5u : 2u), "type %u: version %u", id, t ? t->version : 0);
        const bool gptq = id == QPK_TYPE_INT8 || id == QPK_TYPE_INT4 || id == QPK_TYPE_INT4S || id == QPK_TYPE_INT8Z;
        const bool awq = id == QPK_TYPE_INT4 || id == QPK_TYPE_INT4S;
        CHECKF(!t || t->folders == ((gptq ? QPK_FOLDER_GPTQ | QPK_FOLDER_CT : 0) | (awq ? QPK_FOLDER_AWQ : 0) |
                                    (mlx ? QPK_FOLDER_MLX : 0)),
               "type %u: folders %u",
               id, t ? t->folders : 0);
    }
    char buf[64];
    CHECK(qpk_folder_type_list(QPK_FOLDER_GPTQ, false, buf, sizeof buf) == strlen("int8, int4, int4s or int8z") &&
          !strcmp(buf, "int8, int4, int4s or int8z"));
    CHECK(qpk_folder_type_list(QPK_FOLDER_GPTQ, true, buf, sizeof buf) == strlen("int8, int4 or int4s"));
    CHECK(qpk_folder_type_list(QPK_FOLDER_AWQ, true, buf, sizeof buf) && !strcmp(buf, "int4 or int4s"));
    CHECK(qpk_folder_type_list(QPK_FOLDER_CT, false, buf, sizeof buf) && !strcmp(buf, "int8, int4, int4s or int8z"));
    /* A version 1 file with an i32 tensor: refused at finish, nothing left. */
    char path[256];
    snprintf(path, sizeof path, "%s/v1.qpk", g_dir);
    qpk_writer *w;
    qpk_err e = {0};
    const int64_t n = 4;
    const int32_t perm[4] = {3, 2, 1, 0};
    char *meta = meta_for(&TINY);
    CHECK(qpk_writer_create(&w, path, &e) == QPK_OK);
    CHECK(qpk_writer_begin_tensor(w, "p", QPK_TYPE_I32, 0, 1, &n, &e) == QPK_OK &&
          qpk_writer_write(w, perm, sizeof perm, &e) == QPK_OK && qpk_writer_end_tensor(w, &e) == QPK_OK);
    const qpk_status s = qpk_writer_finish(w, meta, strlen(meta), &e);
    CHECK_ERR(s, QPK_E_INVALID_ARG, e,
              "tensor 'p' is i32, which format version 2 brought: the metadata says version 1");
    CHECK(access(path, F_OK) != 0 && count_dir_entries(g_dir) == 1);
    /* A version 1 file whose int4 tensor says mlx4_f16 (the same bytes), checksums resealed: the reader refuses it. */
    const int64_t dims[2] = {2, 64};
    uint8_t zeros[256] = {0};
    CHECK(qpk_writer_create(&w, path, &e) == QPK_OK &&
          qpk_writer_begin_tensor(w, "x", QPK_TYPE_INT4, 32, 2, dims, &e) == QPK_OK &&
          qpk_writer_write(w, zeros, 2 * qpk_type_row_bytes(QPK_TYPE_INT4, 32, 64), &e) == QPK_OK &&
          qpk_writer_end_tensor(w, &e) == QPK_OK && qpk_writer_finish(w, meta, strlen(meta), &e) == QPK_OK);
    size_t len;
    uint8_t *b = slurp(path, &len);
    CHECK(qpk_type_row_bytes(QPK_TYPE_MLX4_F16, 32, 64) == qpk_type_row_bytes(QPK_TYPE_INT4, 32, 64));
    wr32(entry(b, 0) + 56, QPK_TYPE_MLX4_F16);
    reseal(b, len);
    qpk_file *f = NULL;
    CHECK_ERR(qpk_open_memory(&f, b, len, NULL, &e), QPK_E_CORRUPT, e,
              "tensor 'x' is mlx4_f16, which format version 4 brought: the file says version 1");
    free(b), unlink(path);
    free(meta);
    /* The affine types' scale and bias are bf16 (mlx4, mlx8) or f16: a NaN or infinity in either is found. */
    uint8_t blocks[3 * (4 + 16)] = {0};
    blocks[20 + 2] = 0xc0, blocks[20 + 3] = 0x7f;          /* block 1's bias: bf16 NaN (0x7fc0) */
    CHECK(qpk_first_bad_scale(QPK_TYPE_MLX4, 32, blocks, 3) == 1);
    CHECK(qpk_first_bad_scale(QPK_TYPE_MLX4_F16, 32, blocks, 3) == 1); /* 0x7fc0 is an f16 NaN too */
    blocks[20 + 2] = 0, blocks[20 + 3] = 0x7c;             /* 0x7c00: f16 infinity, bf16 2^121 */
    CHECK(qpk_first_bad_scale(QPK_TYPE_MLX4_F16, 32, blocks, 3) == 1);
    CHECK(qpk_first_bad_scale(QPK_TYPE_MLX4, 32, blocks, 3) == 3);
    blocks[40] = 0x80, blocks[41] = 0xff;                  /* block 2's scale: bf16 -infinity (0xff80) */
    CHECK(qpk_first_bad_scale(QPK_TYPE_MLX4, 32, blocks, 3) == 2);
}

/*
 * Issue 20, class 8: outputs a rename can never put in place are refused before any work
 * ('.', '..', a mount point, a link where a folder goes, a file path spelled as a folder);
 * a file output that is a link is replaced itself, never what it leads to.
 */
static void test_output_paths(void)
{
    char dot[300], link[300], target[300], file[300], slash[300], empty[300];
    snprintf(dot, sizeof dot, "%s/.", g_dir);
    snprintf(link, sizeof link, "%s/link", g_dir);
    snprintf(target, sizeof target, "%s/target", g_dir);
    snprintf(empty, sizeof empty, "%s/empty", g_dir);
    snprintf(file, sizeof file, "%s/out.qpk", g_dir);
    snprintf(slash, sizeof slash, "%s/new/", g_dir);
    qpk_err e = {0};
    qpk_outdir *d = NULL;
    qpk_outfile *o = NULL;
    const int before = count_dir_entries(g_dir);
    static const struct {
        const char *path;
        qpk_status want;
        const char *msg;
    } DIRS[] = {
        {".", QPK_E_INVALID_ARG, "the output '.' ends in '.': no folder can be put in its place"},
        {"..", QPK_E_INVALID_ARG, "the output '..' ends in '..'"},
        {"./", QPK_E_INVALID_ARG, "the output '.' ends in '.'"},
        {"/", QPK_E_INVALID_ARG, "the output '/' is a mount point"},
    };
    for (size_t i = 0; i < sizeof DIRS / sizeof *DIRS; i++) {
        const qpk_status s = qpk_outdir_create(&d, DIRS[i].path, &e);
        CHECK_ERR(s, DIRS[i].want, e, DIRS[i].msg);
        CHECK(d == NULL);
    }
    qpk_status s = qpk_outdir_create(&d, dot, &e);
    CHECK_ERR(s, QPK_E_INVALID_ARG, e, "ends in '.'");
    CHECK(mkdir(empty, 0755) == 0 && symlink("empty", link) == 0);
    s = qpk_outdir_create(&d, link, &e);
    CHECK_ERR(s, QPK_E_IO, e, "link' is a symbolic link: a folder output replaces only an empty folder, never a link");
    CHECK(count_dir_entries(g_dir) == before + 2); /* nothing beside the folder and the link */
    /* A trailing slash names the folder itself. */
    CHECK(qpk_outdir_create(&d, slash, &e) == QPK_OK && qpk_outdir_commit(d, &e) == QPK_OK);
    snprintf(slash, sizeof slash, "%s/new", g_dir);
    struct stat sb;
    CHECK(lstat(slash, &sb) == 0 && S_ISDIR(sb.st_mode));
    rmdir(slash);
    /* File outputs: spelled as folders, refused; a link replaced itself. */
    static const char *const FILES[] = {".", "..", "x/", "./x/.."};
    for (size_t i = 0; i < sizeof FILES / sizeof *FILES; i++) {
        s = qpk_outfile_create(&o, FILES[i], &e);
        CHECK_ERR(s, QPK_E_INVALID_ARG, e, "names a folder: this output is a file");
    }
    unlink(link);
    FILE *t = fopen(target, "w");
    CHECK(t && fputs("kept", t) >= 0 && fclose(t) == 0 && symlink("target", link) == 0);
    CHECK(qpk_outfile_create(&o, link, &e) == QPK_OK && qpk_outfile_write(o, "new", 3, &e) == QPK_OK &&
          qpk_outfile_commit(o, &e) == QPK_OK);
    CHECK(lstat(link, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size == 3);
    CHECK(lstat(target, &sb) == 0 && sb.st_size == 4);
    unlink(link), unlink(target), rmdir(empty), unlink(file);
    CHECK(count_dir_entries(g_dir) == before);
}

int main(void)
{
    if (!mkdtemp(g_dir))
        return 2;
    test_nonfinite_scales();
    char path[256];
    snprintf(path, sizeof path, "%s/sample.qpk", g_dir);
    qpk_err e = {0};
    CHECKF(write_sample(path, &e) == QPK_OK, "%s", e.msg);
    test_round_trip(path);
    test_deterministic(path);
    size_t n;
    uint8_t *good = slurp(path, &n);
    qpk_file *f;
    CHECK(qpk_open_memory(&f, good, n, NULL, &e) == QPK_OK);
    qpk_close(f);
    test_defects(good, n);
    free(good);
    test_writer_misuse();
    test_no_folder();
    test_disk_full();
    test_types();
    test_type_versions();
    test_output_paths();
    test_err_prefix();
    unlink(path);
    rmdir(g_dir);
    return th_summary("test_format");
}
