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
    bool norm = role == QPK_ROLE_ATTN_NORM || role == QPK_ROLE_FFN_NORM || role == QPK_ROLE_FINAL_NORM ||
                role == QPK_ROLE_Q_NORM || role == QPK_ROLE_K_NORM;
    for (size_t i = 0; i < n; i++)
        v[i] = norm ? 1.0f + 0.1f * gauss(rng) : 0.02f * gauss(rng);
}

/* ------------------------------------------------------------------ files */

static qpk_status write_text(const char *dir, const char *name, const char *text, qpk_err *e)
{
    size_t n = strlen(text);
    char *line = malloc(n + 2);
    if (!line)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    memcpy(line, text, n), line[n] = '\n';
    qpk_status s = qpk_write_text_file(dir, name, line, n + 1, e);
    free(line);
    return s;
}

static qpk_status write_config(const qpk_gen_spec *sp, const char *dir, qpk_err *e)
{
    char *text = qpk_config_to_json(&sp->cfg);
    cJSON *c = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!c)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    cJSON *arch = cJSON_CreateArray();
    cJSON_AddItemToArray(arch, cJSON_CreateString(qpk_arch_class(sp->cfg.arch)));
    cJSON_AddItemToObject(c, "architectures", arch);
    cJSON_ReplaceItemInObject(c, "torch_dtype", cJSON_CreateString(sp->dtype == QPK_ST_F32   ? "float32"
                                                                    : sp->dtype == QPK_ST_F16 ? "float16"
                                                                                              : "bfloat16"));
    if (sp->cfg.arch == QPK_ARCH_QWEN2 && sp->cfg.head_dim * sp->cfg.n_heads == sp->cfg.hidden_size)
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

/* Every tensor's values, streamed into the safetensors set in order. */
static qpk_status write_values(const qpk_gen_spec *sp, qpk_st_set *set, const qpk_st_entry *ts, const qpk_role *roles,
                               size_t n, const qpk_callbacks *cb, uint64_t total, qpk_err *e)
{
    enum { CHUNK = 1 << 16 };
    float *v = malloc(CHUNK * sizeof *v);
    uint8_t *out = malloc(CHUNK * sizeof *v);
    qpk_status s = v && out ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    qpk_type qt = sp->dtype == QPK_ST_F32 ? QPK_TYPE_F32 : sp->dtype == QPK_ST_F16 ? QPK_TYPE_F16 : QPK_TYPE_BF16;
    size_t esize = qpk_st_dtype_size(sp->dtype);
    uint64_t done = 0;
    for (size_t i = 0; s == QPK_OK && i < n; i++) {
        /* The head of a tied model is stored as an exact copy of the embedding. */
        bool copy = roles[i] == QPK_ROLE_LM_HEAD && sp->cfg.tie_word_embeddings;
        uint64_t rng = sp->seed * 0x100000001b3ull + (copy ? 0 : i) * 0x9e3779b97f4a7c15ull;
        uint64_t numel = ts[i].nbytes / esize;
        for (uint64_t k = 0; s == QPK_OK && k < numel; k += CHUNK) {
            size_t m = numel - k < CHUNK ? (size_t)(numel - k) : CHUNK;
            fill(roles[i], &rng, v, m);
            qpk_row_from_f32(qt, v, out, m);
            s = qpk_st_set_write(set, out, m * esize, e);
            done += m * esize;
            if (cb && cb->progress)
                cb->progress(cb->ud, ts[i].name, done, total);
        }
    }
    free(v), free(out);
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
        return qpk_err_prefix(e, s, "generator config");
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return qpk_err_setf(e, QPK_E_IO, "cannot create '%s': %s", dir, strerror(errno));
    /* Hugging Face stores each expert as a tensor of its own: a stacked role is n_experts entries. */
    const size_t n_model = qpk_model_n_tensors(&sp->cfg);
    size_t n = (sp->cfg.tie_word_embeddings && sp->lm_head_when_tied);
    for (size_t i = 0; i < n_model; i++) {
        qpk_role r;
        int l;
        qpk_model_tensor_at(&sp->cfg, i, &r, &l);
        n += qpk_role_is_expert(r) ? (size_t)sp->cfg.n_experts : 1;
    }
    if ((size_t)sp->n_shards > n)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%d shards for %zu tensors", sp->n_shards, n);
    qpk_st_entry *ts = calloc(n, sizeof *ts);
    qpk_role *roles = calloc(n, sizeof *roles);
    if (!ts || !roles) {
        free(ts), free(roles);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    uint64_t total = 0, esize = qpk_st_dtype_size(sp->dtype);
    for (size_t i = 0, m = 0; i < n; i++) {
        qpk_st_entry *t = &ts[i];
        int layer = -1;
        int64_t dims[2];
        if (m < n_model)
            qpk_model_tensor_at(&sp->cfg, m, &roles[i], &layer);
        else
            roles[i] = QPK_ROLE_LM_HEAD;
        t->ndim = qpk_role_shape(&sp->cfg, roles[i], dims);
        if (qpk_role_is_expert(roles[i])) { /* expert x of this role: the x-th of its run of entries */
            int x = 0;
            while (i - (size_t)x > 0 && roles[i - (size_t)x - 1] == roles[i])
                x++;
            qpk_expert_tensor_name(t->name, sizeof t->name, roles[i], layer, x);
            dims[0] /= sp->cfg.n_experts;
            m += x + 1 == sp->cfg.n_experts;
        } else {
            qpk_tensor_name(t->name, sizeof t->name, roles[i], layer);
            m++;
        }
        t->shape[0] = dims[0], t->shape[1] = dims[1];
        t->dtype = sp->dtype;
        t->nbytes = (uint64_t)dims[0] * (uint64_t)(t->ndim == 2 ? dims[1] : 1) * esize;
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
    qpk_st_set *set = NULL;
    if (s == QPK_OK)
        s = qpk_st_set_create(&set, dir, ts, n, e);
    if (s == QPK_OK)
        s = write_values(sp, set, ts, roles, n, cb, total, e);
    if (s == QPK_OK) {
        s = qpk_st_set_finish(set, e);
        set = NULL;
    }
    qpk_st_set_discard(set);
    free(roles);
    free(ts);
    return s;
}
