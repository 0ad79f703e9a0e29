/*
 * Checkpoint generator. Weights are N(0, 0.02)-like (Irwin-Hall from a counter-free
 * xoshiro stream seeded per tensor), norms near 1, biases small: enough to exercise
 * every code path with realistic magnitudes. Deterministic for a seed.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qpk_private.h"
#include "gen.h"
#include "qpk/quant.h"

const char *const QPK_GEN_PRESETS[] = {"tiny", "0.5b", "1.8b", "4b", "7b", "14b", "32b", "72b", NULL};

typedef struct preset {
    const char *name;
    int64_t hidden, layers, heads, kv_heads, inter, vocab;
    double rope_theta;
    bool tied;
} preset;

/* The released Qwen1.5 shapes (their config.json files), plus a tiny one for tests and the demo. */
static const preset PRESETS[] = {
    {"tiny", 64, 2, 4, 2, 160, 512, 1e6, true},
    {"0.5b", 1024, 24, 16, 16, 2816, 151936, 1e6, true},
    {"1.8b", 2048, 24, 16, 16, 5504, 151936, 1e6, false},
    {"4b", 2560, 40, 20, 20, 6912, 151936, 5e6, false},
    {"7b", 4096, 32, 32, 32, 11008, 151936, 1e6, false},
    {"14b", 5120, 40, 40, 40, 13696, 152064, 1e6, false},
    {"32b", 5120, 64, 40, 8, 27392, 152064, 1e6, false},
    {"72b", 8192, 80, 64, 64, 24576, 152064, 1e6, false},
};

bool qpk_gen_preset(const char *name, qpk_gen_spec *spec)
{
    for (size_t i = 0; i < sizeof PRESETS / sizeof *PRESETS; i++) {
        const preset *p = &PRESETS[i];
        if (strcmp(p->name, name) != 0)
            continue;
        memset(spec, 0, sizeof *spec);
        qpk_config *c = &spec->cfg;
        c->hidden_size = p->hidden, c->n_layers = p->layers, c->n_heads = p->heads;
        c->n_kv_heads = p->kv_heads, c->intermediate_size = p->inter, c->vocab_size = p->vocab;
        c->head_dim = p->hidden / p->heads;
        c->rope_theta = p->rope_theta, c->rms_norm_eps = 1e-6, c->tie_word_embeddings = p->tied;
        c->max_position_embeddings = 32768, c->sliding_window = 32768, c->max_window_layers = 21;
        strcpy(c->hidden_act, "silu");
        strcpy(c->torch_dtype, "bfloat16");
        c->bos_token_id = p->vocab > 151643 ? 151643 : -1;
        c->n_eos = 1;
        c->eos_token_ids[0] = p->vocab > 151645 ? 151645 : p->vocab - 1;
        spec->dtype = QPK_ST_BF16, spec->n_shards = 1, spec->seed = 1;
        return true;
    }
    return false;
}

/* ------------------------------------------------------------------ values */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Approximately normal: the sum of four 16-bit uniforms, centred and scaled to unit variance. */
static float gauss(uint64_t *s)
{
    uint64_t r = splitmix(s);
    float sum = (float)(r & 0xffff) + (float)((r >> 16) & 0xffff) + (float)((r >> 32) & 0xffff) + (float)(r >> 48);
    return (sum / 65536.0f - 2.0f) * 1.7320508f;
}

static void fill(qpk_role role, uint64_t *rng, float *v, size_t n)
{
    bool norm = role == QPK_ROLE_ATTN_NORM || role == QPK_ROLE_FFN_NORM || role == QPK_ROLE_FINAL_NORM;
    for (size_t i = 0; i < n; i++)
        v[i] = norm ? 1.0f + 0.1f * gauss(rng) : 0.02f * gauss(rng);
}

/* ------------------------------------------------------------------ files */

typedef struct gen_tensor {
    char name[QPK_MAX_NAME];
    qpk_role role;
    int layer, ndim, shard;
    int64_t dims[2];
    uint64_t nbytes, offset; /* offset inside its shard's data area */
} gen_tensor;

static qpk_status write_text(const char *dir, const char *name, const char *text, qpk_err *e)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    qpk_outfile *o;
    QPK_TRY(qpk_outfile_create(&o, path, e));
    qpk_status s = qpk_outfile_write(o, text, strlen(text), e);
    if (s == QPK_OK)
        s = qpk_outfile_write(o, "\n", 1, e);
    if (s != QPK_OK) {
        qpk_outfile_discard(o);
        return s;
    }
    return qpk_outfile_commit(o, e);
}

static char *shard_name(char *buf, size_t cap, int i, int n)
{
    if (n == 1)
        snprintf(buf, cap, "model.safetensors");
    else
        snprintf(buf, cap, "model-%05d-of-%05d.safetensors", i + 1, n);
    return buf;
}

static qpk_status write_config(const qpk_gen_spec *sp, const char *dir, qpk_err *e)
{
    char *text = qpk_config_to_json(&sp->cfg);
    cJSON *c = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!c)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    cJSON *arch = cJSON_CreateArray();
    cJSON_AddItemToArray(arch, cJSON_CreateString("Qwen2ForCausalLM"));
    cJSON_AddItemToObject(c, "architectures", arch);
    cJSON_ReplaceItemInObject(c, "torch_dtype", cJSON_CreateString(sp->dtype == QPK_ST_F32   ? "float32"
                                                                    : sp->dtype == QPK_ST_F16 ? "float16"
                                                                                              : "bfloat16"));
    cJSON_DeleteItemFromObject(c, "head_dim"); /* real Qwen2 configs do not carry it */
    text = cJSON_Print(c);
    cJSON_Delete(c);
    qpk_status s = text ? write_text(dir, "config.json", text, e) : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    free(text);
    if (s != QPK_OK)
        return s;
    char gen[256];
    snprintf(gen, sizeof gen, "{\n  \"bos_token_id\": %lld,\n  \"eos_token_id\": %lld,\n  \"do_sample\": false\n}",
             (long long)sp->cfg.bos_token_id, (long long)sp->cfg.eos_token_ids[0]);
    return write_text(dir, "generation_config.json", gen, e);
}

static const char *dtype_name(qpk_st_dtype d) { return qpk_st_dtype_name(d); }

static qpk_status write_shard(const qpk_gen_spec *sp, const char *dir, gen_tensor *ts, size_t n, int shard,
                              const qpk_callbacks *cb, uint64_t *done, uint64_t total, qpk_err *e)
{
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        if (ts[i].shard != shard)
            continue;
        cJSON *t = cJSON_AddObjectToObject(h, ts[i].name);
        cJSON *shape = cJSON_AddArrayToObject(t, "shape"), *offs = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddStringToObject(t, "dtype", dtype_name(sp->dtype));
        for (int d = 0; d < ts[i].ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)ts[i].dims[d]));
        ts[i].offset = off;
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        off += ts[i].nbytes;
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
    }
    char *json = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    if (!json)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    size_t jl = strlen(json), padded = (jl + 7) & ~(size_t)7; /* pad with spaces to 8 bytes, as safetensors does */
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    char path[4096], name[64];
    snprintf(path, sizeof path, "%s/%s", dir, shard_name(name, sizeof name, shard, sp->n_shards));
    qpk_outfile *o;
    qpk_status s = qpk_outfile_create(&o, path, e);
    if (s == QPK_OK)
        s = qpk_outfile_write(o, len8, 8, e);
    if (s == QPK_OK)
        s = qpk_outfile_write(o, json, jl, e);
    for (size_t i = jl; s == QPK_OK && i < padded; i++)
        s = qpk_outfile_write(o, " ", 1, e);
    free(json);
    enum { CHUNK = 1 << 16 };
    float *v = malloc(CHUNK * sizeof *v);
    uint8_t *out = malloc(CHUNK * sizeof *v);
    if (s == QPK_OK && (!v || !out))
        s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    qpk_type qt = sp->dtype == QPK_ST_F32 ? QPK_TYPE_F32 : sp->dtype == QPK_ST_F16 ? QPK_TYPE_F16 : QPK_TYPE_BF16;
    size_t esize = qpk_st_dtype_size(sp->dtype);
    for (size_t i = 0; s == QPK_OK && i < n; i++) {
        if (ts[i].shard != shard)
            continue;
        /* The head of a tied model is stored as an exact copy of the embedding. */
        bool copy = ts[i].role == QPK_ROLE_LM_HEAD && sp->cfg.tie_word_embeddings;
        uint64_t rng = sp->seed * 0x100000001b3ull + (copy ? 0 : i) * 0x9e3779b97f4a7c15ull;
        uint64_t numel = ts[i].nbytes / esize;
        for (uint64_t k = 0; s == QPK_OK && k < numel; k += CHUNK) {
            size_t m = numel - k < CHUNK ? (size_t)(numel - k) : CHUNK;
            fill(ts[i].role, &rng, v, m);
            qpk_row_from_f32(qt, v, out, m);
            s = qpk_outfile_write(o, out, m * esize, e);
            *done += m * esize;
            if (cb && cb->progress)
                cb->progress(cb->ud, ts[i].name, *done, total);
        }
    }
    free(v);
    free(out);
    if (s != QPK_OK) {
        qpk_outfile_discard(o);
        return s;
    }
    return qpk_outfile_commit(o, e);
}

static qpk_status write_index(const qpk_gen_spec *sp, const char *dir, const gen_tensor *ts, size_t n, qpk_err *e)
{
    cJSON *root = cJSON_CreateObject();
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += ts[i].nbytes;
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(root, "metadata"), "total_size", (double)total);
    cJSON *map = cJSON_AddObjectToObject(root, "weight_map");
    char name[64];
    for (size_t i = 0; i < n; i++)
        cJSON_AddStringToObject(map, ts[i].name, shard_name(name, sizeof name, ts[i].shard, sp->n_shards));
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    qpk_status s = text ? write_text(dir, "model.safetensors.index.json", text, e)
                        : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    free(text);
    return s;
}

qpk_status qpk_gen_write(const qpk_gen_spec *sp, const char *dir, const qpk_callbacks *cb, qpk_err *e)
{
    if (sp->n_shards < 1 || sp->n_shards > 9999)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "shard count %d outside 1..9999", sp->n_shards);
    if (sp->dtype != QPK_ST_F32 && sp->dtype != QPK_ST_F16 && sp->dtype != QPK_ST_BF16)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "dtype must be F32, F16 or BF16");
    /* Round-trip the config through the one parser so the generator cannot write what qpk refuses. */
    char *text = qpk_config_to_json(&sp->cfg);
    qpk_config check;
    qpk_status s = text ? qpk_config_parse(&check, text, strlen(text), e) : QPK_E_NOMEM;
    free(text);
    if (s != QPK_OK)
        return qpk_err_prefix(e, "generator config");
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return qpk_err_setf(e, QPK_E_IO, "cannot create '%s': %s", dir, strerror(errno));
    size_t n = qpk_model_n_tensors(&sp->cfg) + (sp->cfg.tie_word_embeddings && sp->lm_head_when_tied);
    if ((size_t)sp->n_shards > n)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%d shards for %zu tensors", sp->n_shards, n);
    gen_tensor *ts = calloc(n, sizeof *ts);
    if (!ts)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    uint64_t total = 0, esize = qpk_st_dtype_size(sp->dtype);
    for (size_t i = 0; i < n; i++) {
        gen_tensor *t = &ts[i];
        if (i < qpk_model_n_tensors(&sp->cfg))
            qpk_model_tensor_at(&sp->cfg, i, &t->role, &t->layer);
        else
            t->role = QPK_ROLE_LM_HEAD, t->layer = -1;
        qpk_tensor_name(t->name, sizeof t->name, t->role, t->layer);
        t->ndim = qpk_role_shape(&sp->cfg, t->role, t->dims);
        t->nbytes = (uint64_t)t->dims[0] * (uint64_t)(t->ndim == 2 ? t->dims[1] : 1) * esize;
        total += t->nbytes;
    }
    /* Contiguous runs of tensors, cut where the running size passes each shard's share. */
    /* No shard is left empty: at most one step per tensor, and the last tensors fill the last shards. */
    uint64_t acc = 0;
    int prev = 0;
    for (size_t i = 0; i < n; i++) {
        int sh = (int)(acc * (uint64_t)sp->n_shards / (total ? total : 1));
        int least = sp->n_shards - (int)(n - i);
        sh = sh > prev + 1 ? prev + 1 : sh;
        ts[i].shard = prev = sh < least ? least : sh < prev ? prev : sh;
        acc += ts[i].nbytes;
    }
    s = write_config(sp, dir, e);
    uint64_t done = 0;
    for (int sh = 0; s == QPK_OK && sh < sp->n_shards; sh++)
        s = write_shard(sp, dir, ts, n, sh, cb, &done, total, e);
    if (s == QPK_OK && sp->n_shards > 1)
        s = write_index(sp, dir, ts, n, e);
    free(ts);
    return s;
}
