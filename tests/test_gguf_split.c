/*
 * GGUF split sets, as llama.cpp's gguf-split writes them and llama.cpp loads them. The fixture
 * written as a set (by tensor count, by size, one tensor a shard, a set of one) reads back as one
 * model: the single file's logits bit for bit, the same .qpk tensors; every shard a GGUF with the
 * split keys, the metadata in the first. Malformed sets, built shard by shard in memory (and on
 * disk where the path matters), are refused with their exact messages. A failing write leaves
 * nothing, and an existing file is untouched.
 */
#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fixtures.h"
#include "qpk/gguf.h"
#include "qpk/runtime.h"
#include "testhelp.h"
#include "testutil.h"

#define N_TOK 16

static const int32_t TOKENS[N_TOK] = {9707, 11,  847, 829,  374,  1207, 16948, 13,
                                      358,  1079, 264, 3460, 4128, 1614, 14,    198};
static char tmp[4096], fx[4096];

/* The status is want and the message exactly msg. */
#define CHECK_MSG(got, want, err, text)                                                                    \
    CHECKF((got) == (want) && !strcmp((err).msg, (text)), "status %d (want %d), message\n  \"%s\"\nwant\n  \"%s\"", \
           (int)(got), (int)(want), (err).msg, (text))

static float *logits_of(const char *path)
{
    qpk_source *src;
    qpk_err e = {0};
    if (tu_open(&src, path, false, &e) != QPK_OK) {
        CHECKF(false, "%s: %s", path, e.msg);
        return NULL;
    }
    const qpk_model *m = tu_model(src);
    const size_t V = (size_t)qpk_model_config(m)->vocab_size;
    float *logits = malloc((size_t)N_TOK * V * sizeof *logits);
    qpk_context *ctx = NULL;
    qpk_context_opts co = {.n_ctx = 32, .n_threads = 2};
    qpk_status s = qpk_context_create(&ctx, m, &co, &e);
    if (s == QPK_OK)
        s = qpk_eval(ctx, TOKENS, N_TOK, logits, N_TOK, &e);
    CHECKF(s == QPK_OK, "%s: %s", path, e.msg);
    qpk_context_free(ctx);
    tu_close(src);
    if (s != QPK_OK)
        free(logits), logits = NULL;
    return logits;
}

static size_t vocab_of(const char *path)
{
    qpk_source *src;
    qpk_err e = {0};
    size_t v = 0;
    if (tu_open(&src, path, false, &e) == QPK_OK)
        v = (size_t)qpk_model_config(tu_model(src))->vocab_size;
    tu_close(src);
    return v;
}

static void same_logits(const char *a, const char *b)
{
    const size_t V = vocab_of(a);
    float *x = logits_of(a), *y = logits_of(b);
    CHECKF(V && x && y && !memcmp(x, y, (size_t)N_TOK * V * sizeof *x), "%s and %s: logits differ", a, b);
    free(x), free(y);
}

/* Every tensor of the two .qpk files: the same names, types, shapes and bytes. */
static void same_qpk_tensors(const char *a, const char *b)
{
    qpk_file *f = NULL, *g = NULL;
    qpk_err e = {0};
    CHECKF(qpk_open(&f, a, NULL, &e) == QPK_OK, "%s", e.msg);
    CHECKF(qpk_open(&g, b, NULL, &e) == QPK_OK, "%s", e.msg);
    if (f && g) {
        CHECK(qpk_n_tensors(f) == qpk_n_tensors(g));
        for (size_t i = 0; i < qpk_n_tensors(f) && i < qpk_n_tensors(g); i++) {
            const qpk_tensor *x = qpk_tensor_at(f, i), *y = qpk_tensor_at(g, i);
            CHECKF(!strcmp(x->name, y->name) && x->type == y->type && x->nbytes == y->nbytes &&
                       !memcmp(x->data, y->data, (size_t)x->nbytes),
                   "tensor %zu: %s vs %s", i, x->name, y->name);
        }
    }
    qpk_close(f), qpk_close(g);
}

static uint64_t file_u64(const char *path, long off)
{
    FILE *f = fopen(path, "rb");
    uint8_t b[8] = {0};
    if (f) {
        if (fseek(f, off, SEEK_SET) != 0 || fread(b, 1, 8, f) != 8)
            memset(b, 0xff, 8);
        fclose(f);
    }
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *x; d && (x = readdir(d));)
        n += x->d_name[0] != '.' || (strcmp(x->d_name, ".") && strcmp(x->d_name, ".."));
    if (d)
        closedir(d);
    return n;
}

/* The fixture as a set (opts as qconvert's); checks its shards and that it reads as the single file. */
static void check_set(const char *single, const char *single_qpk, const char *name, uint64_t max_size,
                      uint64_t max_tensors, unsigned want_shards)
{
    char out[4200], first[4300], shard[4300], qpk[4300];
    qpk_err e = {0};
    snprintf(out, sizeof out, "%s/%s.gguf", tmp, name);
    qpk_convert_opts o = {.to = QPK_OUT_GGUF, .dtype = -1, .quant = QPK_TYPE_INT4, .group = 32, .n_threads = 2,
                          .split_max_size = max_size, .split_max_tensors = max_tensors};
    CHECKF(tu_convert(fx, out, &o, &e) == QPK_OK, "%s: %s", name, e.msg);
    CHECKF(access(out, F_OK) != 0, "%s: the single file's path was written", name);
    snprintf(first, sizeof first, "%s/%s-00001-of-%05u.gguf", tmp, name, want_shards);
    qpk_gguf *g = NULL;
    CHECKF(qpk_gguf_open(&g, first, &e) == QPK_OK, "%s: %s", first, e.msg);
    if (g) {
        qpk_gguf_value v;
        CHECK(qpk_gguf_n_shards(g) == want_shards);
        CHECK(qpk_gguf_find(g, "tokenizer.ggml.tokens", &v) && qpk_gguf_find(g, "general.architecture", &v));
        CHECK(qpk_gguf_find(g, "split.count", &v) && v.type == QPK_GGUF_U16 && v.num.u == want_shards);
        CHECK(qpk_gguf_find(g, "split.tensors.count", &v) && v.type == QPK_GGUF_I32 &&
              v.num.i == (int64_t)qpk_gguf_n_tensors(g));
        for (size_t i = 1; i < qpk_gguf_n_tensors(g); i++) /* in order, each shard a run of them */
            CHECK(qpk_gguf_tensor_at(g, i)->shard == qpk_gguf_tensor_at(g, i - 1)->shard ||
                  qpk_gguf_tensor_at(g, i)->shard == qpk_gguf_tensor_at(g, i - 1)->shard + 1);
        CHECK(qpk_gguf_tensor_at(g, qpk_gguf_n_tensors(g) - 1)->shard == want_shards - 1);
        for (size_t i = 0; max_tensors && i < qpk_gguf_n_tensors(g); i++)
            CHECK(qpk_gguf_tensor_at(g, i)->shard == i / max_tensors);
        qpk_gguf_close(g);
    }
    for (unsigned k = 2; k <= want_shards; k++) { /* later shards: the three split keys only */
        snprintf(shard, sizeof shard, "%s/%s-%05u-of-%05u.gguf", tmp, name, k, want_shards);
        CHECKF(file_u64(shard, 16) == 3, "%s: %llu key-values", shard, (unsigned long long)file_u64(shard, 16));
    }
    same_logits(single, first);
    snprintf(qpk, sizeof qpk, "%s/%s.qpk", tmp, name);
    qpk_convert_opts back = {.to = QPK_OUT_QPK, .dtype = -1, .n_threads = 2};
    CHECKF(tu_convert(first, qpk, &back, &e) == QPK_OK, "%s: %s", first, e.msg);
    same_qpk_tensors(single_qpk, qpk);
    printf("%-14s %u shards: logits and .qpk tensors the single file's\n", name, want_shards);
}

static void test_roundtrip(void)
{
    char single[4200], single_qpk[4200];
    qpk_err e = {0};
    snprintf(single, sizeof single, "%s/single.gguf", tmp);
    snprintf(single_qpk, sizeof single_qpk, "%s/single.qpk", tmp);
    qpk_convert_opts o = {.to = QPK_OUT_GGUF, .dtype = -1, .quant = QPK_TYPE_INT4, .group = 32, .n_threads = 2};
    CHECKF(tu_convert(fx, single, &o, &e) == QPK_OK, "%s", e.msg);
    qpk_convert_opts back = {.to = QPK_OUT_QPK, .dtype = -1, .n_threads = 2};
    CHECKF(tu_convert(single, single_qpk, &back, &e) == QPK_OK, "%s", e.msg);
    check_set(single, single_qpk, "by-tensors", 0, 10, 5);         /* 50 tensors */
    check_set(single, single_qpk, "by-size", 21000000, 0, 2);      /* the 20.7 MB embedding, then the rest */
    check_set(single, single_qpk, "each", 1, 0, 50);               /* every tensor a shard of its own */
    check_set(single, single_qpk, "one", 0, 1000, 1);              /* a set of one */
    check_set(single, single_qpk, "both", 21000000, 20, 3);        /* 1 | 20 | 29 -> 20 | 9: both limits */
}

/* ------------------------------------------------------------ malformed sets */

typedef struct buf {
    uint8_t p[4096];
    size_t n;
} buf;

static void put(buf *b, const void *p, size_t n) { memcpy(b->p + b->n, p, n), b->n += n; }
static void put_u16(buf *b, uint32_t v) { put(b, (uint8_t[2]){(uint8_t)v, (uint8_t)(v >> 8)}, 2); }
static void put_u32(buf *b, uint32_t v) { put_u16(b, v & 0xffff), put_u16(b, v >> 16); }
static void put_u64(buf *b, uint64_t v) { put_u32(b, (uint32_t)v), put_u32(b, (uint32_t)(v >> 32)); }
static void put_str(buf *b, const char *s) { put_u64(b, strlen(s)), put(b, s, strlen(s)); }

/* One shard: its split keys (a negative value leaves the key out; count_type the type of split.count),
 * and its tensors (F32 [4], names separated by commas). */
typedef struct spec {
    int no, count, total;
    const char *tensors;
    uint32_t count_type;
} spec;

static void make_shard(buf *b, spec s)
{
    const char *names[8];
    char list[256];
    int n_t = 0, n_kv = (s.no >= 0) + (s.count >= 0) + (s.total >= 0);
    snprintf(list, sizeof list, "%s", s.tensors);
    for (char *p = strtok(list, ","); p && n_t < 8; p = strtok(NULL, ","))
        names[n_t++] = p;
    b->n = 0;
    put(b, "GGUF", 4), put_u32(b, 3), put_u64(b, (uint64_t)n_t), put_u64(b, (uint64_t)n_kv);
    if (s.no >= 0)
        put_str(b, "split.no"), put_u32(b, QPK_GGUF_U16), put_u16(b, (uint32_t)s.no);
    if (s.total >= 0)
        put_str(b, "split.tensors.count"), put_u32(b, QPK_GGUF_I32), put_u32(b, (uint32_t)s.total);
    if (s.count >= 0 && s.count_type == QPK_GGUF_U32)
        put_str(b, "split.count"), put_u32(b, QPK_GGUF_U32), put_u32(b, (uint32_t)s.count);
    else if (s.count >= 0)
        put_str(b, "split.count"), put_u32(b, QPK_GGUF_U16), put_u16(b, (uint32_t)s.count);
    for (int i = 0; i < n_t; i++)
        put_str(b, names[i]), put_u32(b, 1), put_u64(b, 4), put_u32(b, 0), put_u64(b, (uint64_t)i * 32);
    while (b->n % 32)
        put(b, "", 1);
    for (int i = 0; i < n_t; i++) {
        const float x[8] = {(float)i, 1, 2, 3, 0, 0, 0, 0};
        put(b, x, sizeof x);
    }
}

/* Opens the shards as a set in memory. */
static qpk_status open_specs(const spec *s, size_t n, qpk_gguf **g, qpk_err *e)
{
    static buf b[8];
    const void *p[8];
    size_t sz[8];
    for (size_t i = 0; i < n; i++)
        make_shard(&b[i], s[i]), p[i] = b[i].p, sz[i] = b[i].n;
    return qpk_gguf_open_set_memory(g, p, sz, n, e);
}

#define S(no, count, total, tensors) ((spec){no, count, total, tensors, QPK_GGUF_U16})

static void test_memory(void)
{
    qpk_gguf *g = NULL;
    qpk_err e = {0};
    const spec ok[3] = {S(0, 3, 6, "a,b"), S(1, 3, 6, "c,d"), S(2, 3, 6, "e,f")};
    CHECKF(open_specs(ok, 3, &g, &e) == QPK_OK, "%s", e.msg);
    if (g) {
        CHECK(qpk_gguf_n_tensors(g) == 6 && qpk_gguf_n_shards(g) == 3 && qpk_gguf_n_kv(g) == 3);
        const qpk_gguf_tensor *t = qpk_gguf_find_tensor(g, "e");
        CHECK(t && t->shard == 2 && ((const float *)t->data)[0] == 0 && ((const float *)t->data)[1] == 1);
        t = qpk_gguf_find_tensor(g, "d");
        CHECK(t && t->shard == 1 && ((const float *)t->data)[0] == 1);
        qpk_gguf_close(g), g = NULL;
    }
    /* gguf-split --merge writes split.count 0; llama.cpp reads 0 and 1 as one file */
    const spec merged[1] = {S(0, 0, 6, "a,b,c")}, one[1] = {S(0, 1, 1, "a")};
    CHECKF(open_specs(merged, 1, &g, &e) == QPK_OK, "%s", e.msg);
    qpk_gguf_close(g), g = NULL;
    CHECKF(open_specs(one, 1, &g, &e) == QPK_OK, "%s", e.msg);
    qpk_gguf_close(g), g = NULL;

    static const struct {
        const char *what;
        spec s[4];
        size_t n;
        qpk_status st;
        const char *msg;
    } BAD[] = {
        {"first alone", {S(0, 3, 6, "a,b")}, 1, QPK_E_MISMATCH,
         "the file is the first shard of a split set of 3: the other shards are needed"},
        {"missing (2 of 3 given)", {S(0, 3, 6, "a,b"), S(1, 3, 6, "c,d")}, 2, QPK_E_MISMATCH,
         "shard 1: split.count is 3 but 2 shards were given"},
        {"repeated", {S(0, 3, 6, "a,b"), S(1, 3, 6, "c,d"), S(1, 3, 6, "c,d")}, 3, QPK_E_MISMATCH,
         "shard 3 holds shard 2 again (split.no 1): a repeated shard"},
        {"first repeated", {S(0, 3, 6, "a,b"), S(0, 3, 6, "a,b"), S(2, 3, 6, "e,f")}, 3, QPK_E_MISMATCH,
         "shard 2 holds shard 1 again (split.no 0): a repeated shard"},
        {"reordered", {S(0, 3, 6, "a,b"), S(2, 3, 6, "e,f"), S(1, 3, 6, "c,d")}, 3, QPK_E_MISMATCH,
         "shard 2 holds shard 3 (split.no 2), not shard 2: shards out of order"},
        {"non-first first", {S(1, 3, 6, "c,d"), S(0, 3, 6, "a,b"), S(2, 3, 6, "e,f")}, 3, QPK_E_INVALID_ARG,
         "shard 1 is shard 2 of 3 of a split set, not the first"},
        {"foreign count", {S(0, 3, 6, "a,b"), S(1, 4, 6, "c,d"), S(2, 3, 6, "e,f")}, 3, QPK_E_MISMATCH,
         "shard 2: split.count 4, the first shard's is 3: a shard of another set"},
        {"foreign total", {S(0, 3, 6, "a,b"), S(1, 3, 6, "c,d"), S(2, 3, 7, "e,f,g")}, 3, QPK_E_MISMATCH,
         "shard 3: split.tensors.count 7, the first shard's is 6: a shard of another set"},
        {"total wrong", {S(0, 3, 7, "a,b"), S(1, 3, 7, "c,d"), S(2, 3, 7, "e,f")}, 3, QPK_E_MISMATCH,
         "shard 1: the set's 3 shards hold 6 tensors, split.tensors.count says 7"},
        {"tensor in two shards", {S(0, 3, 6, "a,b"), S(1, 3, 6, "c,d"), S(2, 3, 6, "e,c")}, 3, QPK_E_CORRUPT,
         "tensor 'c' is in both shard 2 and shard 3"},
        {"split.no out of range", {S(0, 3, 6, "a,b"), S(5, 3, 6, "c,d"), S(2, 3, 6, "e,f")}, 3, QPK_E_CORRUPT,
         "shard 2: split.no 5 is out of range for split.count 3"},
        {"split.count 0 in a shard", {S(0, 3, 6, "a,b"), S(1, 0, 6, "c,d"), S(2, 3, 6, "e,f")}, 3, QPK_E_MISMATCH,
         "shard 2: split.count 0, the first shard's is 3: a shard of another set"},
        {"split.count 0 first", {S(0, 0, 6, "a,b"), S(1, 3, 6, "c,d"), S(2, 3, 6, "e,f")}, 3, QPK_E_MISMATCH,
         "shard 1: split.count is 0 but 3 shards were given"},
        {"no split keys", {S(0, 2, 4, "a,b"), S(-1, -1, -1, "c,d")}, 2, QPK_E_MISMATCH,
         "shard 2 has no split.count: not a shard of a split set"},
        {"no split.no", {S(0, 2, 4, "a,b"), S(-1, 2, 4, "c,d")}, 2, QPK_E_CORRUPT,
         "shard 2: split.count without split.no"},
        {"no split.tensors.count", {S(0, 2, 4, "a,b"), S(1, 2, -1, "c,d")}, 2, QPK_E_CORRUPT,
         "shard 2: split.count without split.tensors.count"},
        {"split.count u32", {S(0, 2, 4, "a,b"), {1, 2, 4, "c,d", QPK_GGUF_U32}}, 2, QPK_E_CORRUPT,
         "shard 2: split.count is not a u16"},
        {"corrupt shard", {S(0, 2, 4, "a,b"), S(1, 2, 4, "c,d,d")}, 2, QPK_E_CORRUPT,
         "shard 2: tensor name 'd' appears twice"},
    };
    for (size_t i = 0; i < sizeof BAD / sizeof *BAD; i++) {
        e.msg[0] = 0;
        qpk_status st = open_specs(BAD[i].s, BAD[i].n, &g, &e);
        CHECK_MSG(st, BAD[i].st, e, BAD[i].msg);
        CHECKF(!g, "%s: a handle came back", BAD[i].what);
        qpk_gguf_close(g), g = NULL;
    }
    printf("%zu malformed sets in memory refused with their messages\n", sizeof BAD / sizeof *BAD);
}

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(p, 1, n, f) == n);
    if (f)
        fclose(f);
}

static void write_spec(const char *name, spec s)
{
    char path[4300];
    buf b;
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    make_shard(&b, s);
    write_file(path, b.p, b.n);
}

/* On disk: what the path decides (which shard was given, the other shards' names). */
static void test_paths(void)
{
    char path[4300], want[9000];
    qpk_gguf *g = NULL;
    qpk_err e = {0};
    write_spec("m-00001-of-00003.gguf", S(0, 3, 6, "a,b"));
    write_spec("m-00002-of-00003.gguf", S(1, 3, 6, "c,d"));
    write_spec("m-00003-of-00003.gguf", S(2, 3, 6, "e,f"));
    snprintf(path, sizeof path, "%s/m-00001-of-00003.gguf", tmp);
    CHECKF(qpk_gguf_open(&g, path, &e) == QPK_OK, "%s", e.msg);
    CHECK(g && qpk_gguf_n_tensors(g) == 6);
    qpk_gguf_close(g), g = NULL;

    snprintf(path, sizeof path, "%s/m-00002-of-00003.gguf", tmp);
    snprintf(want, sizeof want, "%s is shard 2 of 3 of a split set: give the first, %s/m-00001-of-00003.gguf", path,
             tmp);
    CHECK_MSG(qpk_gguf_open(&g, path, &e), QPK_E_INVALID_ARG, e, want);

    /* the third renamed away: missing */
    char third[4300], away[4300];
    snprintf(third, sizeof third, "%s/m-00003-of-00003.gguf", tmp);
    snprintf(away, sizeof away, "%s/away.gguf", tmp);
    CHECK(rename(third, away) == 0);
    snprintf(path, sizeof path, "%s/m-00001-of-00003.gguf", tmp);
    snprintf(want, sizeof want, "split set %s: shard 3 of 3: ", path);
    e.msg[0] = 0;
    CHECKF(qpk_gguf_open(&g, path, &e) == QPK_E_IO && !strncmp(e.msg, want, strlen(want)) && strstr(e.msg, third),
           "%s", e.msg);
    /* the second copied over the third: repeated, named by its file */
    write_spec("m-00003-of-00003.gguf", S(1, 3, 6, "c,d"));
    snprintf(want, sizeof want, "%s holds shard 2 again (split.no 1): a repeated shard", third);
    CHECK_MSG(qpk_gguf_open(&g, path, &e), QPK_E_MISMATCH, e, want);
    CHECK(rename(away, third) == 0);

    /* a first shard whose name does not say so */
    write_spec("renamed.gguf", S(0, 3, 6, "a,b"));
    snprintf(path, sizeof path, "%s/renamed.gguf", tmp);
    snprintf(want, sizeof want, "%s: the first shard of a split set of 3, but its name does not end in "
             "-00001-of-00003.gguf, the name the other shards are found by", path);
    CHECK_MSG(qpk_gguf_open(&g, path, &e), QPK_E_INVALID_ARG, e, want);
    CHECK(!g);
    printf("split sets on disk: later shard given, missing, repeated, misnamed refused\n");
}

/* ------------------------------------------------------------ atomicity */

static qpk_status write_three(const char *path, size_t n_data, qpk_err *e)
{
    qpk_gguf_writer *w;
    const uint64_t ne[1] = {8};
    const float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    qpk_status s = qpk_gguf_writer_create(&w, path, e);
    if (s != QPK_OK)
        return s;
    s = qpk_gguf_writer_split(w, 0, 1, e);
    for (int i = 0; i < 3 && s == QPK_OK; i++) {
        char name[8];
        snprintf(name, sizeof name, "t%d", i);
        s = qpk_gguf_add_tensor(w, name, QPK_GGML_F32, 1, ne, e);
    }
    for (size_t i = 0; i < n_data && s == QPK_OK; i++)
        s = qpk_gguf_write(w, x, sizeof x, e);
    if (s != QPK_OK) {
        qpk_gguf_writer_discard(w);
        return s;
    }
    return qpk_gguf_finish(w, e);
}

static void test_atomic(void)
{
    char dir[4200], out[4300], s1[4300], s2[4300], s3[4300];
    qpk_err e = {0};
    snprintf(dir, sizeof dir, "%s/atomic", tmp);
    mkdir(dir, 0755);
    snprintf(out, sizeof out, "%s/x.gguf", dir);
    snprintf(s1, sizeof s1, "%s/x-00001-of-00003.gguf", dir);
    snprintf(s2, sizeof s2, "%s/x-00002-of-00003.gguf", dir);
    snprintf(s3, sizeof s3, "%s/x-00003-of-00003.gguf", dir);
    /* data missing at finish (two shards written by then): nothing appears */
    CHECK_MSG(write_three(out, 2, &e), QPK_E_INVALID_ARG, e, "GGUF tensor 't2' is missing data");
    CHECKF(count_files(dir) == 0, "%d files left", count_files(dir));
    /* an existing first shard stays as it was */
    write_file(s1, "old", 3);
    CHECK(write_three(out, 2, &e) == QPK_E_INVALID_ARG);
    struct stat sb;
    CHECK(stat(s1, &sb) == 0 && sb.st_size == 3 && count_files(dir) == 1);
    /* a folder where the third shard goes: refused, the first untouched, nothing else there */
    CHECK(mkdir(s3, 0755) == 0);
    CHECK(write_three(out, 3, &e) == QPK_E_IO && strstr(e.msg, s3));
    CHECK(stat(s1, &sb) == 0 && sb.st_size == 3 && count_files(dir) == 2 && access(s2, F_OK) != 0);
    rmdir(s3);
    /* success: the three shards, nothing else (no temporaries) */
    CHECKF(write_three(out, 3, &e) == QPK_OK, "%s", e.msg);
    CHECK(count_files(dir) == 3 && access(out, F_OK) != 0);
    qpk_gguf *g = NULL;
    CHECKF(qpk_gguf_open(&g, s1, &e) == QPK_OK, "%s", e.msg);
    CHECK(g && qpk_gguf_n_tensors(g) == 3 && qpk_gguf_find_tensor(g, "t2")->shard == 2);
    qpk_gguf_close(g);
    /* the converter too: a failing conversion leaves the old first shard */
    char conv[4300], first[4300];
    snprintf(conv, sizeof conv, "%s/y.gguf", dir);
    snprintf(first, sizeof first, "%s/y-00001-of-00005.gguf", dir);
    write_file(first, "old", 3);
    char block[4300];
    snprintf(block, sizeof block, "%s/y-00004-of-00005.gguf", dir);
    CHECK(mkdir(block, 0755) == 0);
    qpk_convert_opts o = {.to = QPK_OUT_GGUF, .dtype = -1, .quant = QPK_TYPE_INT4, .group = 32, .n_threads = 2,
                          .split_max_tensors = 10};
    CHECK(tu_convert(fx, conv, &o, &e) == QPK_E_IO && strstr(e.msg, block));
    CHECK(stat(first, &sb) == 0 && sb.st_size == 3 && count_files(dir) == 5);
    rmdir(block);
    /* and the writer's own argument checks */
    qpk_gguf_writer *w;
    CHECK(qpk_gguf_writer_create(&w, out, &e) == QPK_OK);
    CHECK_MSG(qpk_gguf_writer_split(w, 0, 0, &e), QPK_E_INVALID_ARG, e,
              "a GGUF split needs a size or a tensor count per shard");
    qpk_gguf_writer_discard(w);
    printf("split writes: a failure leaves nothing, existing files untouched\n");
}

int main(void)
{
    const char *dir = fixtures_dir();
    if (!dir)
        return fixtures_missing();
    snprintf(fx, sizeof fx, "%s/qwen-tiny-a", dir);
    snprintf(tmp, sizeof tmp, "/tmp/qpk-test-gguf-split-%d", (int)getpid());
    mkdir(tmp, 0755);
    test_memory();
    test_paths();
    test_atomic();
    test_roundtrip();
    rm_rf(tmp);
    return th_summary("test_gguf_split");
}
