/*
 * Checkpoint generator, for every architecture of the family. Weights are N(0, 0.02)-like
 * (Irwin-Hall from a counter-free xoshiro stream seeded per tensor), norms near 1, biases
 * small: enough to exercise every code path with realistic magnitudes. Deterministic for a seed.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qpk_json.h"
#include "qpk_private.h"
#include "gen.h"
#include "qpk/quant.h"

typedef struct preset {
    const char *name, *about;
    qpk_arch arch;
    int64_t hidden, layers, heads, kv_heads, inter, vocab;
    int64_t head_dim; /* 0: hidden / heads (Qwen2's configs do not state it) */
    double rope_theta;
    bool tied;
    int64_t max_pos, window_layers; /* 0: 32768 and 21, Qwen1.5's */
    int64_t experts, experts_used, moe_inter, shared_inter;
    bool norm_topk;
    uint64_t mlp_only; /* dense layers among the first 64 */
    double yarn;       /* factor, 0: none */
    int64_t yarn_original;
} preset;

/*
 * The released shapes, each from its model's config.json on the Hugging Face hub (Qwen1.5's
 * dense ones; Qwen1.5/Qwen2 MoE; Qwen2.5-7B-Instruct with the rope_scaling its README tells
 * users to add for long texts; Qwen3 dense and MoE), plus tiny ones for tests and the demo,
 * the tiny-* ones shaped as the shared fixtures' models of each architecture.
 */
static const preset PRESETS[] = {
    {.name = "tiny", .about = "Qwen2, 2 layers, GQA 4/2, tied, vocab 512", .hidden = 64, .layers = 2, .heads = 4,
     .kv_heads = 2, .inter = 160, .vocab = 512, .rope_theta = 1e6, .tied = true},
    {.name = "0.5b", .about = "Qwen1.5-0.5B", .hidden = 1024, .layers = 24, .heads = 16, .kv_heads = 16,
     .inter = 2816, .vocab = 151936, .rope_theta = 1e6, .tied = true},
    {.name = "1.8b", .about = "Qwen1.5-1.8B", .hidden = 2048, .layers = 24, .heads = 16, .kv_heads = 16,
     .inter = 5504, .vocab = 151936, .rope_theta = 1e6},
    {.name = "4b", .about = "Qwen1.5-4B", .hidden = 2560, .layers = 40, .heads = 20, .kv_heads = 20, .inter = 6912,
     .vocab = 151936, .rope_theta = 5e6},
    {.name = "7b", .about = "Qwen1.5-7B", .hidden = 4096, .layers = 32, .heads = 32, .kv_heads = 32, .inter = 11008,
     .vocab = 151936, .rope_theta = 1e6},
    {.name = "14b", .about = "Qwen1.5-14B", .hidden = 5120, .layers = 40, .heads = 40, .kv_heads = 40,
     .inter = 13696, .vocab = 152064, .rope_theta = 1e6},
    {.name = "32b", .about = "Qwen1.5-32B (GQA)", .hidden = 5120, .layers = 64, .heads = 40, .kv_heads = 8,
     .inter = 27392, .vocab = 152064, .rope_theta = 1e6},
    {.name = "72b", .about = "Qwen1.5-72B", .hidden = 8192, .layers = 80, .heads = 64, .kv_heads = 64,
     .inter = 24576, .vocab = 152064, .rope_theta = 1e6},
    {.name = "qwen1.5-moe-a2.7b", .about = "Qwen1.5-MoE-A2.7B: 60 experts, top 4, shared one",
     .arch = QPK_ARCH_QWEN2_MOE, .hidden = 2048, .layers = 24, .heads = 16, .kv_heads = 16, .inter = 5632,
     .vocab = 151936, .rope_theta = 1e6, .max_pos = 8192, .experts = 60, .experts_used = 4, .moe_inter = 1408,
     .shared_inter = 5632},
    {.name = "qwen2-57b-a14b", .about = "Qwen2-57B-A14B: 64 experts, top 8, shared one",
     .arch = QPK_ARCH_QWEN2_MOE, .hidden = 3584, .layers = 28, .heads = 28, .kv_heads = 4, .inter = 18944,
     .vocab = 151936, .rope_theta = 1e6, .max_pos = 131072, .window_layers = 28, .experts = 64, .experts_used = 8,
     .moe_inter = 2560, .shared_inter = 20480},
    {.name = "qwen2.5-7b-yarn", .about = "Qwen2.5-7B-Instruct, YaRN x4 over 32768 positions",
     .hidden = 3584, .layers = 28, .heads = 28, .kv_heads = 4, .inter = 18944, .vocab = 152064, .rope_theta = 1e6,
     .window_layers = 28, .yarn = 4, .yarn_original = 32768},
    {.name = "qwen3-0.6b", .about = "Qwen3-0.6B: head_dim 128 > hidden / heads, tied", .arch = QPK_ARCH_QWEN3,
     .hidden = 1024, .layers = 28, .heads = 16, .kv_heads = 8, .inter = 3072, .vocab = 151936, .head_dim = 128,
     .rope_theta = 1e6, .tied = true, .max_pos = 40960, .window_layers = 28},
    {.name = "qwen3-8b", .about = "Qwen3-8B", .arch = QPK_ARCH_QWEN3, .hidden = 4096, .layers = 36, .heads = 32,
     .kv_heads = 8, .inter = 12288, .vocab = 151936, .head_dim = 128, .rope_theta = 1e6, .max_pos = 40960,
     .window_layers = 36},
    {.name = "qwen3-30b-a3b", .about = "Qwen3-30B-A3B: 128 experts, top 8, no shared one",
     .arch = QPK_ARCH_QWEN3_MOE, .hidden = 2048, .layers = 48, .heads = 32, .kv_heads = 4, .inter = 6144,
     .vocab = 151936, .head_dim = 128, .rope_theta = 1e6, .max_pos = 40960, .window_layers = 48, .experts = 128,
     .experts_used = 8, .moe_inter = 768, .norm_topk = true},
    {.name = "tiny-moe", .about = "qwen2_moe: 8 experts, top 4, shared, layer 1 dense",
     .arch = QPK_ARCH_QWEN2_MOE, .hidden = 64, .layers = 3, .heads = 4, .kv_heads = 2, .inter = 128, .vocab = 2048,
     .rope_theta = 1e6, .experts = 8, .experts_used = 4, .moe_inter = 32, .shared_inter = 96, .mlp_only = 1u << 1},
    {.name = "tiny-qwen3", .about = "qwen3: head_dim 32 (x 4 heads != hidden 64), tied",
     .arch = QPK_ARCH_QWEN3, .hidden = 64, .layers = 3, .heads = 4, .kv_heads = 2, .inter = 160, .vocab = 2048,
     .head_dim = 32, .rope_theta = 1e6, .tied = true},
    {.name = "tiny-qwen3-moe", .about = "qwen3_moe: 8 experts, top 2, head_dim 32, tied",
     .arch = QPK_ARCH_QWEN3_MOE, .hidden = 64, .layers = 3, .heads = 4, .kv_heads = 2, .inter = 128, .vocab = 2048,
     .head_dim = 32, .rope_theta = 1e6, .tied = true, .experts = 8, .experts_used = 2, .moe_inter = 48,
     .norm_topk = true},
    {.name = "tiny-yarn", .about = "qwen2: YaRN x4 over 32768 positions, tied", .hidden = 64, .layers = 3,
     .heads = 4, .kv_heads = 2, .inter = 160, .vocab = 2048, .rope_theta = 1e6, .tied = true, .yarn = 4,
     .yarn_original = 32768},
};

static const preset *find_preset(const char *name)
{
    for (size_t i = 0; i < sizeof PRESETS / sizeof *PRESETS; i++)
        if (!strcmp(PRESETS[i].name, name))
            return &PRESETS[i];
    return NULL;
}

const char *qpk_gen_preset_name(size_t i) { return i < sizeof PRESETS / sizeof *PRESETS ? PRESETS[i].name : NULL; }

const char *qpk_gen_preset_about(const char *name)
{
    const preset *p = find_preset(name);
    return p ? p->about : NULL;
}

bool qpk_gen_preset(const char *name, qpk_gen_spec *spec)
{
    const preset *p = find_preset(name);
    if (!p)
        return false;
    memset(spec, 0, sizeof *spec);
    qpk_config *c = &spec->cfg;
    c->arch = p->arch;
    c->hidden_size = p->hidden, c->n_layers = p->layers, c->n_heads = p->heads;
    c->n_kv_heads = p->kv_heads, c->intermediate_size = p->inter, c->vocab_size = p->vocab;
    c->head_dim = p->head_dim ? p->head_dim : p->hidden / p->heads;
    c->rope_theta = p->rope_theta, c->rms_norm_eps = 1e-6, c->tie_word_embeddings = p->tied;
    c->max_position_embeddings = p->max_pos ? p->max_pos : 32768;
    c->sliding_window = 32768, c->max_window_layers = p->window_layers ? p->window_layers : 21;
    c->n_experts = p->experts, c->n_experts_used = p->experts_used, c->moe_intermediate_size = p->moe_inter;
    c->shared_expert_intermediate_size = p->shared_inter, c->norm_topk_prob = p->norm_topk;
    c->decoder_sparse_step = qpk_config_is_moe(c) ? 1 : 0;
    c->mlp_only_layers[0] = p->mlp_only;
    strcpy(c->hidden_act, "silu");
    strcpy(c->torch_dtype, "bfloat16");
    c->bos_token_id = p->vocab > 151643 ? 151643 : -1;
    c->n_eos = 1;
    c->eos_token_ids[0] = p->vocab > 151645 ? 151645 : p->vocab - 1;
    spec->dtype = QPK_ST_BF16, spec->n_shards = 1, spec->seed = 1;
    /* The table's yarn presets are valid configs: only a lack of memory fails here. */
    return p->yarn == 0 || qpk_gen_set_yarn(c, p->yarn, p->yarn_original, NULL) == QPK_OK;
}

qpk_status qpk_gen_set_yarn(qpk_config *c, double factor, int64_t original, qpk_err *e)
{
    /* Through the one parser, the home of yarn's defaults (betas, attention factor from the factor); the rest of
     * the config as its normalized text gives it, which reads back as exactly it. */
    qpk_config plain = *c;
    memset(&plain.yarn, 0, sizeof plain.yarn);
    char *text = qpk_config_to_json(&plain), *full = NULL;
    size_t n = text ? strlen(text) : 0, cap = n + 160;
    if (text && (full = malloc(cap)) != NULL) {
        int k = snprintf(full, cap, "%.*s,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":%.17g", (int)n - 1, text,
                         factor);
        if (original > 0)
            k += snprintf(full + k, cap - (size_t)k, ",\"original_max_position_embeddings\":%lld", (long long)original);
        snprintf(full + k, cap - (size_t)k, "}}");
    }
    free(text);
    if (!full)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    qpk_config with;
    qpk_status s = qpk_config_parse(&with, full, strlen(full), e);
    free(full);
    if (s == QPK_OK)
        *c = with;
    return s;
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
    cJSON *c = qpk_config_cjson(&sp->cfg);
    if (!c)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    cJSON *arch = cJSON_CreateArray();
    cJSON_AddItemToArray(arch, cJSON_CreateString(qpk_arch_class(sp->cfg.arch)));
    cJSON_AddItemToObject(c, "architectures", arch);
    cJSON_ReplaceItemInObject(c, "torch_dtype", cJSON_CreateString(sp->dtype == QPK_ST_F32   ? "float32"
                                                                    : sp->dtype == QPK_ST_F16 ? "float16"
                                                                                              : "bfloat16"));
    const qpk_config *cf = &sp->cfg;
    if ((cf->arch == QPK_ARCH_QWEN2 || cf->arch == QPK_ARCH_QWEN2_MOE) && cf->head_dim * cf->n_heads == cf->hidden_size)
        cJSON_DeleteItemFromObject(c, "head_dim"); /* real Qwen2 and Qwen2-MoE configs do not carry it */
    if (cf->yarn.factor != 0) {
        /* The three keys Qwen's READMEs tell users to add, when the parser reads the same yarn from them. */
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "type", "yarn");
        cJSON_AddNumberToObject(r, "factor", cf->yarn.factor);
        cJSON_AddNumberToObject(r, "original_max_position_embeddings",
                                (double)cf->yarn.original_max_position_embeddings);
        cJSON *full = cJSON_DetachItemFromObject(c, "rope_scaling");
        cJSON_AddItemToObject(c, "rope_scaling", r);
        char *brief = cJSON_PrintUnformatted(c);
        qpk_config back;
        if (!brief || qpk_config_parse(&back, brief, strlen(brief), NULL) != QPK_OK ||
            memcmp(&back.yarn, &cf->yarn, sizeof back.yarn) != 0) {
            cJSON_DeleteItemFromObject(c, "rope_scaling");
            cJSON_AddItemToObject(c, "rope_scaling", full);
            full = NULL;
        }
        cJSON_Delete(full);
        free(brief);
    }
    char *text = cJSON_Print(c);
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
    if (sp->config_only)
        return write_config(sp, dir, e);
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
