/*
 * A Hugging Face model folder: config.json plus one safetensors file or a sharded
 * set with its index, checked against the tensors the config implies.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"
#include "qpk_json.h"

#define MAX_MODEL_FILE (512u << 20)
#define MAX_SHARDS 4096

struct qpk_checkpoint {
    char *dir;
    qpk_config cfg;
    qpk_hfq hfq;          /* a GPTQ/AWQ checkpoint's quantization (method NONE: float) */
    qpk_hfq *schemes;     /* compressed-tensors: each config group's layout, which its linears point to */
    qpk_qlinear *qlin;    /* [(layer + 1) * QPK_ROLE_COUNT_ + role]: its quantized linears (rows 0: float) */
    qpk_safetensors **shards;
    char **shard_names;
    size_t n_shards;
    const qpk_st_tensor **slots; /* [(layer + 1) * QPK_ROLE_COUNT_ + role] */
    const char **ignored;
    size_t n_ignored;
    void **owned; /* what a runtime model needs beyond the mapping: F64 tensors in f32, imported linears */
    size_t n_owned;
    /* Sparse layers' experts, one safetensors tensor each [layer][3][expert] (NULL: none), and
     * the stacked tensors made of them (slots point there), whose bytes are gathered on first use. */
    const qpk_st_tensor **experts;
    struct stacked {
        qpk_st_tensor t;
        char name[QPK_MAX_NAME];
        void *bytes;
    } *stacked; /* [layer][3] */
};

static int expert_kind(qpk_role r) { return r == QPK_ROLE_EXP_GATE ? 0 : r == QPK_ROLE_EXP_UP ? 1 : 2; }

static void logf_(const qpk_callbacks *cb, qpk_log_level lv, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void logf_(const qpk_callbacks *cb, qpk_log_level lv, const char *fmt, ...)
{
    if (!cb || !cb->log)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cb->log(cb->ud, lv, msg);
}

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* ------------------------------------------------------------ small files */

static qpk_status slurp(const char *path, char **data, size_t *len, bool *missing, qpk_err *e)
{
    return qpk_read_whole(path, MAX_MODEL_FILE, data, len, missing, e);
}

/* A git "symlink" checked out as a plain file: one line naming a relative path. */
static bool looks_like_link(const char *s, size_t n)
{
    if (n == 0 || n > 1024 || s[0] == '{' || s[0] == '[' || s[0] == '/')
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 && !(s[i] == '\n' && i == n - 1))
            return false;
    return true;
}

qpk_status qpk_read_model_file(const char *dir, const char *name, char **data, size_t *len,
                               bool *missing, qpk_err *e)
{
    if (missing)
        *missing = false;
    char *path = join(dir, name);
    if (!path)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    qpk_status s = slurp(path, data, len, missing, e);
    free(path);
    if (s != QPK_OK || !looks_like_link(*data, *len))
        return s;
    char *target = strndup(*data, *len - ((*data)[*len - 1] == '\n'));
    char *target_path = target ? join(dir, target) : NULL;
    struct stat sb;
    if (target_path && stat(target_path, &sb) == 0 && S_ISREG(sb.st_mode)) {
        free(*data);
        *data = NULL;
        s = slurp(target_path, data, len, NULL, e);
    }
    free(target);
    free(target_path);
    return s;
}

qpk_status qpk_read_file(const char *path, char **data, size_t *len, qpk_err *e)
{
    return slurp(path, data, len, NULL, e);
}

qpk_status qpk_read_tokens(const char *path, int32_t **ids, size_t *n, qpk_err *e)
{
    char *data;
    size_t len;
    bool missing;
    *ids = NULL, *n = 0;
    QPK_TRY(slurp(path, &data, &len, &missing, e));
    if (len % 4 != 0) {
        free(data);
        return qpk_err_setf(e, QPK_E_CORRUPT, "'%s' is %zu bytes, not a whole number of int32 token ids", path, len);
    }
    /* Little-endian on every machine qpk supports; slurp's buffer is malloc-aligned. */
    *ids = (int32_t *)(void *)data;
    *n = len / 4;
    return QPK_OK;
}

/* --------------------------------------------------------------- shards */

static qpk_status add_shard(qpk_checkpoint *ck, const char *name, qpk_err *e)
{
    if (!*name || strchr(name, '/') || strcmp(name, "..") == 0 || strcmp(name, ".") == 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "shard name '%.200s' is not a plain file name", name);
    if (ck->n_shards == MAX_SHARDS)
        return qpk_err_setf(e, QPK_E_LIMIT, "more than %d shards", MAX_SHARDS);
    qpk_safetensors **sh = realloc(ck->shards, (ck->n_shards + 1) * sizeof *sh);
    if (sh)
        ck->shards = sh;
    char **nm = realloc(ck->shard_names, (ck->n_shards + 1) * sizeof *nm);
    if (nm)
        ck->shard_names = nm;
    char *path = join(ck->dir, name), *copy = strdup(name);
    if (!sh || !nm || !path || !copy) {
        free(path), free(copy);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    /* A shard checked out as a git link (one line naming the real file): followed once. */
    struct stat sb;
    char *text = NULL, *target = NULL;
    size_t len;
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size < 1024 &&
        qpk_read_whole(path, 1024, &text, &len, NULL, NULL) == QPK_OK && looks_like_link(text, len) &&
        (target = strndup(text, len - (text[len - 1] == '\n')))) {
        free(path);
        path = join(ck->dir, target);
    }
    free(text), free(target);
    qpk_status s = path ? qpk_st_open(&ck->shards[ck->n_shards], path, e) : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    free(path);
    if (s != QPK_OK) {
        free(copy);
        return s;
    }
    ck->shard_names[ck->n_shards++] = copy;
    return QPK_OK;
}

/* Shards named model-0000i-of-0000N: the index must reference every i in 1..N. */
static qpk_status check_shard_series(const qpk_checkpoint *ck, qpk_err *e)
{
    unsigned total = 0;
    for (size_t i = 0; i < ck->n_shards; i++) {
        unsigned k, n;
        char tail[32];
        if (sscanf(ck->shard_names[i], "model-%5u-of-%5u%31s", &k, &n, tail) != 3 || strcmp(tail, ".safetensors"))
            return QPK_OK; /* not the standard naming: nothing to infer */
        if (total && n != total)
            return qpk_err_setf(e, QPK_E_MISMATCH, "shard names disagree on the shard count (%u vs %u)", total, n);
        total = n;
    }
    for (unsigned k = 1; k <= total; k++) {
        char want[64];
        bool found = false;
        snprintf(want, sizeof want, "model-%05u-of-%05u.safetensors", k, total);
        for (size_t i = 0; i < ck->n_shards && !found; i++)
            found = strcmp(ck->shard_names[i], want) == 0;
        if (!found)
            return qpk_err_setf(e, QPK_E_MISMATCH, "the index lists no tensor of %s", want);
    }
    return QPK_OK;
}

static qpk_status open_index(qpk_checkpoint *ck, const char *text, size_t len, qpk_err *e)
{
    cJSON *root;
    QPK_TRY(qpk_json_parse("model.safetensors.index.json", text, len, &root, e));
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    qpk_status s = QPK_OK;
    const cJSON *it;
    if (!cJSON_IsObject(map)) {
        s = qpk_err_setf(e, QPK_E_CORRUPT, "model.safetensors.index.json: no \"weight_map\" object");
        goto out;
    }
    /* Shards in order of first appearance: deterministic for a given index. */
    cJSON_ArrayForEach(it, map)
    {
        if (!cJSON_IsString(it)) {
            s = qpk_err_setf(e, QPK_E_CORRUPT, "index: weight_map['%.200s'] is not a file name", it->string);
            goto out;
        }
        bool known = false;
        for (size_t i = 0; i < ck->n_shards && !known; i++)
            known = strcmp(ck->shard_names[i], it->valuestring) == 0;
        if (!known && (s = add_shard(ck, it->valuestring, e)) != QPK_OK)
            goto out;
    }
    /* Each mapped tensor must be in its shard; each shard tensor must be mapped there. */
    cJSON_ArrayForEach(it, map)
    {
        for (size_t i = 0; i < ck->n_shards; i++)
            if (strcmp(ck->shard_names[i], it->valuestring) == 0 && !qpk_st_find(ck->shards[i], it->string)) {
                s = qpk_err_setf(e, QPK_E_MISMATCH, "index maps '%.200s' to shard '%.200s', which does not hold it",
                                 it->string, it->valuestring);
                goto out;
            }
    }
    for (size_t i = 0; i < ck->n_shards; i++)
        for (size_t j = 0; j < qpk_st_n_tensors(ck->shards[i]); j++) {
            const char *name = qpk_st_tensor_at(ck->shards[i], j)->name;
            const cJSON *m = cJSON_GetObjectItemCaseSensitive(map, name);
            if (!m) {
                s = qpk_err_setf(e, QPK_E_MISMATCH, "tensor '%.200s' in shard '%.200s' is not in the index", name,
                                 ck->shard_names[i]);
                goto out;
            }
            if (strcmp(m->valuestring, ck->shard_names[i]) != 0) {
                s = qpk_err_setf(e, QPK_E_MISMATCH, "tensor '%.200s' is in shard '%.200s' and also in '%.200s'", name,
                                 ck->shard_names[i], m->valuestring);
                goto out;
            }
        }
    s = check_shard_series(ck, e);
out:
    cJSON_Delete(root);
    return s;
}

/*
 * The weights, with transformers' precedence: model.safetensors when it exists (an index
 * beside it is then ignored, with a warning), else the shards of
 * model.safetensors.index.json.
 */
static qpk_status open_files(qpk_checkpoint *ck, const qpk_callbacks *cb, qpk_err *e)
{
    char *single = join(ck->dir, "model.safetensors"), *index = join(ck->dir, "model.safetensors.index.json");
    struct stat sb;
    bool has_single = single && lstat(single, &sb) == 0, has_index = index && lstat(index, &sb) == 0;
    free(single), free(index);
    if (has_single) {
        if (has_index)
            logf_(cb, QPK_LOG_WARN,
                  "%s has both model.safetensors and model.safetensors.index.json: model.safetensors is read, as "
                  "transformers does, and the index and its shards are ignored", ck->dir);
        return add_shard(ck, "model.safetensors", e);
    }
    char *idx;
    size_t len;
    bool missing;
    qpk_status s = qpk_read_model_file(ck->dir, "model.safetensors.index.json", &idx, &len, &missing, e);
    if (s == QPK_OK) {
        s = open_index(ck, idx, len, e);
        free(idx);
        return s;
    }
    if (!missing)
        return s;
    char *bin = join(ck->dir, "pytorch_model.bin");
    bool has_bin = bin && stat(bin, &sb) == 0;
    free(bin);
    return qpk_err_setf(e, QPK_E_IO, "no model.safetensors or model.safetensors.index.json in '%s'%s", ck->dir,
                        has_bin ? " (pytorch_model.bin is not supported: save the model as safetensors)" : "");
}

/* ------------------------------------------------------------- model check */

static size_t slot(qpk_role role, int layer) { return (size_t)(layer + 1) * QPK_ROLE_COUNT_ + role; }

static bool is_float(qpk_st_dtype d)
{
    return d == QPK_ST_F32 || d == QPK_ST_F16 || d == QPK_ST_BF16 || d == QPK_ST_F64;
}

/* A float tensor of nd dims, or a message in the words of config.json (name: as the file calls it). */
static qpk_status check_float_shape(const qpk_st_tensor *t, const char *name, int nd, const int64_t dims[2],
                                    qpk_err *e)
{
    if (!is_float(t->dtype))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "tensor '%s' has dtype %s; weights must be F32, F16, BF16 or F64",
                            name, qpk_st_dtype_name(t->dtype));
    if (t->ndim != nd || t->shape[0] != dims[0] || (nd == 2 && t->shape[1] != dims[1])) {
        char got[64] = "[", want[64];
        for (int i = 0; i < t->ndim && i < 4; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), i ? ", %lld" : "%lld", (long long)t->shape[i]);
        strcat(got, "]");
        if (nd == 2)
            snprintf(want, sizeof want, "[%lld, %lld]", (long long)dims[0], (long long)dims[1]);
        else
            snprintf(want, sizeof want, "[%lld]", (long long)dims[0]);
        return qpk_err_setf(e, QPK_E_MISMATCH, "tensor '%s' has shape %s; config.json implies %s", name, got, want);
    }
    return QPK_OK;
}

static qpk_status check_tensor(const qpk_checkpoint *ck, const qpk_st_tensor *t, qpk_role role, qpk_err *e)
{
    int64_t dims[2];
    int nd = qpk_role_shape(&ck->cfg, role, dims);
    return check_float_shape(t, t->name, nd, dims, e);
}

/* Element-wise equality of two float tensors of the same shape, whatever their dtypes. */
static bool same_values(const qpk_st_tensor *a, const qpk_st_tensor *b)
{
    if (a->dtype == b->dtype)
        return memcmp(a->data, b->data, (size_t)a->nbytes) == 0;
    enum { CHUNK = 4096 };
    float x[CHUNK], y[CHUNK];
    for (uint64_t i = 0; i < a->numel; i += CHUNK) {
        size_t n = a->numel - i < CHUNK ? (size_t)(a->numel - i) : CHUNK;
        qpk_st_to_f32(a, i, n, x);
        qpk_st_to_f32(b, i, n, y);
        if (memcmp(x, y, n * sizeof *x) != 0)
            return false;
    }
    return true;
}

/* The tensor called name in any shard, or NULL. */
static const qpk_st_tensor *find_any(const qpk_checkpoint *ck, const char *name)
{
    for (size_t i = 0; i < ck->n_shards; i++) {
        const qpk_st_tensor *t = qpk_st_find(ck->shards[i], name);
        if (t)
            return t;
    }
    return NULL;
}

static const char *const QPARTS[5] = {".qweight", ".qzeros", ".scales", ".g_idx", ""};
/* compressed-tensors' names of the same parts, and the weight's shape. */
static const char *const CT_QPARTS[5] = {".weight_packed", ".weight_zero_point", ".weight_scale", ".weight_g_idx",
                                         ".weight_shape"};

/* MLX's: the codes take the float weight's name (as U32); biases where a zero point would be. */
static const char *const MLX_QPARTS[5] = {".weight", ".biases", ".scales", "", ""};

static const char *const *qparts(const qpk_checkpoint *ck)
{
    return ck->hfq.method == QPK_HFQ_CT ? CT_QPARTS : ck->hfq.method == QPK_HFQ_MLX ? MLX_QPARTS : QPARTS;
}

/* Whether name is a part of a quantized linear of this checkpoint (P.qweight, ...). */
static bool is_qpart(const qpk_checkpoint *ck, const char *name)
{
    if (ck->hfq.method == QPK_HFQ_NONE)
        return false;
    const char *const *parts = qparts(ck);
    for (int k = 0; k < 5 && parts[k][0]; k++) {
        size_t n = strlen(name), s = strlen(parts[k]);
        char weight[QPK_MAX_NAME];
        qpk_role role;
        int layer;
        if (n > s && !strcmp(name + n - s, parts[k]) && n - s + 8 < sizeof weight) {
            snprintf(weight, sizeof weight, "%.*s.weight", (int)(n - s), name);
            int expert;
            /* MLX quantizes the embedding and the head too */
            if ((qpk_tensor_role(&ck->cfg, weight, &role, &layer) && qpk_role_is_matrix(role) &&
                 (qpk_role_is_per_layer(role) || ck->hfq.method == QPK_HFQ_MLX)) ||
                qpk_expert_tensor_role(&ck->cfg, weight, &role, &layer, &expert))
                return true;
        }
    }
    return false;
}

/* The GPTQ/AWQ/compressed-tensors parts of the linear called name ("model.layers.3.mlp.up_proj"), each NULL when
 * absent (t[4], the weight's shape, compressed-tensors' only). */
static bool find_parts(const qpk_checkpoint *ck, const char *name, const qpk_st_tensor *t[5])
{
    char part[QPK_MAX_NAME + 24];
    const char *const *parts = qparts(ck);
    for (int k = 0; k < 5; k++) {
        snprintf(part, sizeof part, "%s%s", name, parts[k]);
        t[k] = parts[k][0] ? find_any(ck, part) : NULL;
    }
    return t[0] || t[1] || t[2] || t[3] || t[4];
}

/*
 * The layout the linear called name follows: the checkpoint's (GPTQ/AWQ), or its config
 * group's (compressed-tensors, AutoRound: per-linear schemes); NULL when the config leaves
 * it in float. A linear with its own scheme stored packed that the config leaves in float,
 * or the reverse, is refused naming it.
 */
static qpk_status layout_of(qpk_checkpoint *ck, const char *name, bool packed, bool float_weight,
                            const qpk_hfq **out, qpk_err *e)
{
    *out = &ck->hfq;
    if (!ck->hfq.n_ct)
        return QPK_OK;
    int k;
    QPK_TRY(qpk_hfq_ct_scheme(&ck->hfq, name, &k, e));
    *out = k >= 0 ? &ck->schemes[k] : NULL;
    const bool ar = ck->hfq.autoround;
    if (k < 0 && packed)
        return qpk_err_setf(e, QPK_E_MISMATCH, "%s is stored packed while the config leaves it in float (%s)", name,
                            ar ? "extra_config keeps it float" : qpk_hfq_skips(&ck->hfq, name) ? "it is in ignore"
                                                                                    : "no config group targets it");
    if (k >= 0 && float_weight && ar)
        return qpk_err_setf(e, QPK_E_MISMATCH, "%s is stored in float while the config quantizes it (extra_config does "
                            "not keep it float)", name);
    if (k >= 0 && float_weight)
        return qpk_err_setf(e, QPK_E_MISMATCH, "%s is stored in float while config group %s quantizes it (it is not in "
                            "ignore)", name, ck->hfq.ct[k].name);
    return QPK_OK;
}

/*
 * AutoRound: every module extra_config names is one of the model's (a linear, a router or
 * the embedding or head left float), and those it quantizes are linears qpk imports; an
 * entry for another model, or a pattern, is refused by name rather than ignored.
 */
static qpk_status check_extra_config(const qpk_checkpoint *ck, qpk_err *e)
{
    const qpk_hfq *q = &ck->hfq;
    for (int g = 0; g <= q->n_ct; g++) /* g == n_ct: the modules kept float */
        for (int t = g == 0; t < (g < q->n_ct ? q->ct[g].n_targets : q->n_skip); t++) {
            const char *name = g < q->n_ct ? q->ct[g].targets[t] : q->skip[t];
            char weight[QPK_MAX_NAME + 8];
            qpk_role role;
            int layer, expert;
            snprintf(weight, sizeof weight, "%s.weight", name);
            const bool expert_of = qpk_expert_tensor_role(&ck->cfg, weight, &role, &layer, &expert);
            if (!expert_of && !qpk_tensor_role(&ck->cfg, weight, &role, &layer))
                return qpk_err_setf(e, QPK_E_MISMATCH, "quantization_config: extra_config names %s, which is no "
                                    "module of the model", name);
            if (g < q->n_ct && !expert_of && (!qpk_role_is_matrix(role) || !qpk_role_is_per_layer(role)))
                return qpk_err_setf(e, QPK_E_UNSUPPORTED, "quantization_config: extra_config quantizes %s: qpk reads "
                                    "AutoRound checkpoints whose embedding, head and routers are float", name);
        }
    return QPK_OK;
}

/*
 * A sparse layer's experts of one role, quantized expert by expert as GPTQ/AWQ tools write
 * them (Qwen1.5-MoE-A2.7B-Chat-GPTQ-Int4's layout), as one stacked linear whose rows run
 * through them. All or none: a float expert among quantized ones is refused, as are experts
 * that import as different types or with their own input permutations (act-order), which
 * one stacked matrix cannot carry.
 */
static qpk_status claim_experts(qpk_checkpoint *ck, qpk_role r, int l, qpk_err *e)
{
    const qpk_config *c = &ck->cfg;
    char name[QPK_MAX_NAME];
    const qpk_st_tensor *t[5];
    qpk_expert_tensor_name(name, sizeof name, r, l, 0);
    name[strlen(name) - strlen(".weight")] = 0;
    if (!find_parts(ck, name, t)) {
        char weight[QPK_MAX_NAME + 8];
        const qpk_hfq *lay;
        snprintf(weight, sizeof weight, "%s.weight", name);
        return layout_of(ck, name, false, find_any(ck, weight) != NULL, &lay, e); /* float experts: stack_experts */
    }
    qpk_qlinear *q = &ck->qlin[slot(r, l)];
    int64_t dims[2];
    qpk_role_shape(c, r, dims);
    const int64_t per = dims[0] / c->n_experts;
    if (!(q->parts = calloc((size_t)c->n_experts, sizeof *q->parts)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    q->n_parts = c->n_experts;
    for (int x = 0; x < c->n_experts; x++) {
        qpk_qlinear *p = &q->parts[x];
        qpk_expert_tensor_name(name, sizeof name, r, l, x);
        name[strlen(name) - strlen(".weight")] = 0;
        if (!find_parts(ck, name, t)) {
            char weight[QPK_MAX_NAME + 8];
            snprintf(weight, sizeof weight, "%s.weight", name);
            if (find_any(ck, weight))
                return qpk_err_setf(e, QPK_E_MISMATCH, "%s is float while expert 0 is quantized: a layer's experts are "
                                    "quantized alike", weight);
            return qpk_err_setf(e, QPK_E_MISMATCH, "missing tensor '%s%s' (num_experts is %lld)", name,
                                qparts(ck)[0], (long long)c->n_experts);
        }
        const qpk_hfq *lay;
        QPK_TRY(layout_of(ck, name, true, false, &lay, e));
        *p = (qpk_qlinear){.q = lay, .qweight = t[0], .qzeros = t[1], .scales = t[2], .g_idx = t[3], .shape = t[4],
                           .rows = per, .cols = dims[1]};
        snprintf(p->name, sizeof p->name, "%s", name);
        QPK_TRY(qpk_qlinear_init(p, e));
        if (p->perm)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s takes its input permuted (act-order, desc_act): each expert "
                                "has its own order, which qpk's stacked expert matrix cannot carry", name);
        if (p->type != q->parts[0].type || p->group != q->parts[0].group)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s imports as %s/g%u while expert 0 is %s/g%u: a stacked expert "
                                "matrix has one type", name, qpk_type_name(p->type), p->group,
                                qpk_type_name(q->parts[0].type), q->parts[0].group);
    }
    qpk_tensor_name(name, sizeof name, r, l);
    name[strlen(name) - strlen(".weight")] = 0;
    snprintf(q->name, sizeof q->name, "%s", name);
    q->q = q->parts[0].q, q->qweight = q->parts[0].qweight, q->qzeros = q->parts[0].qzeros;
    q->scales = q->parts[0].scales, q->shape = q->parts[0].shape;
    q->rows = dims[0], q->cols = dims[1], q->type = q->parts[0].type, q->group = q->parts[0].group;
    return QPK_OK;
}

/*
 * MLX: each module stored with scales is quantized (mlx-lm's rule), under its own override or
 * the model's scheme; an override's float (false) or scheme must match how the module is stored.
 */
static qpk_status claim_mlx(qpk_checkpoint *ck, qpk_err *e)
{
    const qpk_config *c = &ck->cfg;
    if (qpk_config_is_moe(c))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "an MLX %s checkpoint: qpk reads MLX's dense models (mlx-lm stacks "
                            "experts as switch_mlp, which qpk does not read yet)", qpk_arch_name(c->arch));
    if (!(ck->schemes = calloc((size_t)ck->hfq.n_mlx + 1, sizeof *ck->schemes)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    for (int k = 0; k < ck->hfq.n_mlx; k++)
        qpk_mlx_layout(&ck->hfq, k, &ck->schemes[k]);
    for (size_t i = 0; i < qpk_model_n_tensors(c); i++) {
        qpk_role r;
        int l;
        qpk_model_tensor_at(c, i, &r, &l);
        if (!qpk_role_is_matrix(r) || (r == QPK_ROLE_LM_HEAD && c->tie_word_embeddings))
            continue;
        char name[QPK_MAX_NAME];
        qpk_tensor_name(name, sizeof name, r, l);
        name[strlen(name) - strlen(".weight")] = 0;
        const qpk_st_tensor *t[5], *w = ck->slots[slot(r, l)];
        find_parts(ck, name, t);
        int k;
        qpk_mlx_module_scheme(&ck->hfq, name, &k);
        const bool packed = t[1] || t[2] || (w && w->dtype == QPK_ST_U32);
        if (k >= 0 && ck->hfq.mlx[k].bits == 0) {
            if (packed)
                return qpk_err_setf(e, QPK_E_MISMATCH, "%s is stored quantized while config.json's quantization "
                                    "leaves it in float", name);
            continue;
        }
        if (!packed) {
            if (k >= 0 && w)
                return qpk_err_setf(e, QPK_E_MISMATCH, "%s is stored in float while config.json's quantization "
                                    "gives it %d bits", name, ck->hfq.mlx[k].bits);
            continue; /* float (mlx-lm leaves a module whose rows are not whole groups so), or missing */
        }
        qpk_qlinear *q = &ck->qlin[slot(r, l)];
        int64_t dims[2];
        qpk_role_shape(c, r, dims);
        *q = (qpk_qlinear){.q = k >= 0 ? &ck->schemes[k] : &ck->hfq, .qweight = w, .qzeros = t[1], .scales = t[2],
                           .rows = dims[0], .cols = dims[1]};
        snprintf(q->name, sizeof q->name, "%s", name);
        QPK_TRY(qpk_qlinear_init(q, e));
        ck->slots[slot(r, l)] = NULL; /* not a float tensor: the model check asks qpk_checkpoint_qlinear */
    }
    return qpk_mlx_check_used(&ck->hfq, e);
}

/* Each linear of a GPTQ/AWQ checkpoint: quantized (its parts checked and imported), or float where allowed. */
static qpk_status claim_quantized(qpk_checkpoint *ck, qpk_err *e)
{
    const qpk_config *c = &ck->cfg;
    if (ck->hfq.method == QPK_HFQ_NONE)
        return QPK_OK;
    if (ck->hfq.autoround) /* its names first: a pattern is no module, whatever it would match */
        QPK_TRY(check_extra_config(ck, e));
    if (!(ck->qlin = calloc((size_t)(c->n_layers + 1) * QPK_ROLE_COUNT_, sizeof *ck->qlin)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (ck->hfq.method == QPK_HFQ_MLX)
        return claim_mlx(ck, e);
    if (ck->hfq.n_ct) {
        if (!(ck->schemes = calloc((size_t)ck->hfq.n_ct, sizeof *ck->schemes)))
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        for (int k = 0; k < ck->hfq.n_ct; k++)
            qpk_hfq_ct_layout(&ck->hfq, k, &ck->schemes[k]);
    }
    for (int l = 0; l < c->n_layers; l++)
        for (int i = 0; i < QPK_LAYER_ROLES; i++) {
            qpk_role r = qpk_layer_role(i);
            if ((r == QPK_ROLE_ROUTER || r == QPK_ROLE_SHEXP_ROUTER) && ck->hfq.n_ct &&
                qpk_layer_has_role(c, r, l)) { /* float here whatever the config says; ignore may name them */
                char router[QPK_MAX_NAME];
                qpk_tensor_name(router, sizeof router, r, l);
                router[strlen(router) - strlen(".weight")] = 0;
                qpk_hfq_ct_mark_ignored(&ck->hfq, router);
            }
            if (!qpk_role_is_matrix(r) || !qpk_layer_has_role(c, r, l))
                continue;
            if (qpk_role_is_expert(r)) {
                QPK_TRY(claim_experts(ck, r, l, e));
                continue;
            }
            qpk_qlinear *q = &ck->qlin[slot(r, l)];
            char name[QPK_MAX_NAME];
            int64_t dims[2];
            qpk_tensor_name(name, sizeof name, r, l);
            name[strlen(name) - strlen(".weight")] = 0;
            const qpk_st_tensor *t[5];
            const bool any = find_parts(ck, name, t);
            const qpk_st_tensor *fw = ck->slots[slot(r, l)];
            if (any && fw)
                return qpk_err_setf(e, QPK_E_CORRUPT, "%s is stored both quantized and as a float .weight", name);
            const qpk_hfq *lay;
            QPK_TRY(layout_of(ck, name, any, fw != NULL, &lay, e));
            if (ck->hfq.n_ct && !any)
                continue; /* float as the config says, or missing: the model check names it */
            if (!any) {
                if (fw && !qpk_hfq_skips(&ck->hfq, name))
                    return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                                        "%s is stored in float while the checkpoint says %s (and it is not among the "
                                        "modules to not convert): a mixed checkpoint is not supported",
                                        name, ck->hfq.method == QPK_HFQ_GPTQ ? "gptq" : "awq");
                continue; /* a float linear, or a missing one: the model check names it */
            }
            qpk_role_shape(c, r, dims);
            *q = (qpk_qlinear){.q = lay, .qweight = t[0], .qzeros = t[1], .scales = t[2], .g_idx = t[3],
                               .shape = t[4], .rows = dims[0], .cols = dims[1]};
            snprintf(q->name, sizeof q->name, "%s", name);
            QPK_TRY(qpk_qlinear_init(q, e));
        }
    if (ck->hfq.method == QPK_HFQ_CT) {
        qpk_hfq_ct_mark_ignored(&ck->hfq, "model.embed_tokens");
        QPK_TRY(qpk_hfq_ct_check_used(&ck->hfq, e));
    }
    return QPK_OK;
}

/*
 * A tensor missing as a float .weight but present as packed GPTQ/AWQ parts: say why it
 * cannot be read (no quantization_config, or a quantized embedding or head), not that it
 * is missing.
 */
static qpk_status explain_packed(const qpk_checkpoint *ck, qpk_role role, const char *name, qpk_err *e)
{
    char part[QPK_MAX_NAME + 16];
    snprintf(part, sizeof part, "%.*s%s", (int)(strlen(name) - strlen(".weight")), name,
             ck->hfq.method == QPK_HFQ_CT ? ".weight_packed" : ".qweight");
    if (!find_any(ck, part))
        return QPK_OK;
    if (ck->hfq.method == QPK_HFQ_NONE)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s holds packed quantized tensors (%s) but the folder has no "
                            "quantization_config in config.json and no quantize_config.json: their layout is unknown",
                            ck->dir, part);
    return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is quantized (%s): qpk reads GPTQ/AWQ checkpoints whose %s is "
                        "float, as their tools write them by default (the linears of the decoder quantized)",
                        name, part, role == QPK_ROLE_EMBED ? "embedding" : "head");
}

/*
 * Each sparse layer's experts, checked one by one (present, float, [R, C], one dtype), become
 * one stacked tensor [experts*R, C] in the slot of their role. Its bytes are gathered when
 * first asked for (qpk_checkpoint_tensor) and may be released after use.
 */
static qpk_status stack_experts(qpk_checkpoint *ck, qpk_err *e)
{
    const qpk_config *c = &ck->cfg;
    for (int l = 0; l < c->n_layers; l++) {
        if (!qpk_layer_is_sparse(c, l))
            continue;
        for (int k = 0; k < 3; k++) {
            const qpk_role r = k == 0 ? QPK_ROLE_EXP_GATE : k == 1 ? QPK_ROLE_EXP_UP : QPK_ROLE_EXP_DOWN;
            const qpk_st_tensor **parts = &ck->experts[((size_t)l * 3 + (size_t)k) * (size_t)c->n_experts];
            int64_t dims[2];
            qpk_role_shape(c, r, dims);
            const int64_t rows = dims[0] / c->n_experts;
            char name[QPK_MAX_NAME];
            for (int x = 0; x < c->n_experts; x++) {
                const qpk_st_tensor *t = parts[x];
                qpk_expert_tensor_name(name, sizeof name, r, l, x);
                if (!t) {
                    /* already stacked in the file (qpk's own name), or quantized (claim_experts) */
                    if (x == 0 && (ck->slots[slot(r, l)] || qpk_checkpoint_qlinear(ck, r, l)))
                        break;
                    QPK_TRY(explain_packed(ck, r, name, e));
                    return qpk_err_setf(e, QPK_E_MISMATCH, "missing tensor '%s' (num_experts is %lld)", name,
                                        (long long)c->n_experts);
                }
                const int64_t one[2] = {rows, dims[1]};
                QPK_TRY(check_float_shape(t, name, 2, one, e));
                if (t->dtype != parts[0]->dtype)
                    return qpk_err_setf(e, QPK_E_UNSUPPORTED, "tensor '%s' is %s while expert 0 is %s: one layer's "
                                        "experts share a dtype", name, qpk_st_dtype_name(t->dtype),
                                        qpk_st_dtype_name(parts[0]->dtype));
            }
            if (!parts[0])
                continue;
            if (qpk_checkpoint_qlinear(ck, r, l))
                return qpk_err_setf(e, QPK_E_CORRUPT, "%s is stored both quantized and as a float .weight", name);
            if (ck->slots[slot(r, l)]) {
                qpk_tensor_name(name, sizeof name, r, l);
                return qpk_err_setf(e, QPK_E_CORRUPT, "'%s' is stored both stacked and expert by expert", name);
            }
            struct stacked *st = &ck->stacked[(size_t)l * 3 + (size_t)k];
            qpk_tensor_name(st->name, sizeof st->name, r, l);
            st->t = (qpk_st_tensor){.name = st->name, .dtype = parts[0]->dtype, .ndim = 2, .shape = {dims[0], dims[1]},
                                    .numel = parts[0]->numel * (uint64_t)c->n_experts,
                                    .nbytes = parts[0]->nbytes * (uint64_t)c->n_experts};
            ck->slots[slot(r, l)] = &st->t;
        }
    }
    return QPK_OK;
}

static qpk_status classify(qpk_checkpoint *ck, const qpk_callbacks *cb, qpk_err *e)
{
    const qpk_config *c = &ck->cfg;
    size_t total = 0;
    for (size_t i = 0; i < ck->n_shards; i++)
        total += qpk_st_n_tensors(ck->shards[i]);
    ck->slots = calloc((size_t)(c->n_layers + 1) * QPK_ROLE_COUNT_, sizeof *ck->slots);
    ck->ignored = calloc(total ? total : 1, sizeof *ck->ignored);
    size_t n_exp = qpk_config_is_moe(c) ? (size_t)c->n_layers * 3 : 0;
    ck->experts = calloc(n_exp * (size_t)c->n_experts + 1, sizeof *ck->experts);
    ck->stacked = calloc(n_exp + 1, sizeof *ck->stacked);
    if (!ck->slots || !ck->ignored || !ck->experts || !ck->stacked)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    const qpk_st_tensor *tied_head = NULL;
    for (size_t i = 0; i < ck->n_shards; i++)
        for (size_t j = 0; j < qpk_st_n_tensors(ck->shards[i]); j++) {
            const qpk_st_tensor *t = qpk_st_tensor_at(ck->shards[i], j);
            qpk_role role;
            int layer, x;
            if (qpk_expert_tensor_role(c, t->name, &role, &layer, &x))
                ck->experts[((size_t)layer * 3 + (size_t)expert_kind(role)) * (size_t)c->n_experts + (size_t)x] = t;
            else if (!qpk_tensor_role(c, t->name, &role, &layer)) {
                if (!is_qpart(ck, t->name))
                    ck->ignored[ck->n_ignored++] = t->name;
            }
            else if (role == QPK_ROLE_LM_HEAD && c->tie_word_embeddings)
                tied_head = t;
            else
                ck->slots[slot(role, layer)] = t;
        }
    QPK_TRY(claim_quantized(ck, e));
    QPK_TRY(stack_experts(ck, e));
    for (size_t i = 0; i < qpk_model_n_tensors(c); i++) {
        qpk_role role;
        int layer;
        char name[QPK_MAX_NAME];
        qpk_model_tensor_at(c, i, &role, &layer);
        const qpk_st_tensor *t = ck->slots[slot(role, layer)];
        if (!t && qpk_checkpoint_qlinear(ck, role, layer))
            continue;
        if (!t) {
            qpk_tensor_name(name, sizeof name, role, layer);
            QPK_TRY(explain_packed(ck, role, name, e));
            return qpk_err_setf(e, QPK_E_MISMATCH, "missing tensor '%s'%s", name,
                                role == QPK_ROLE_LM_HEAD ? " (tie_word_embeddings is false)" : "");
        }
        QPK_TRY(check_tensor(ck, t, role, e));
    }
    if (tied_head) {
        const qpk_st_tensor *emb = ck->slots[slot(QPK_ROLE_EMBED, -1)];
        QPK_TRY(check_tensor(ck, tied_head, QPK_ROLE_LM_HEAD, e));
        if (!same_values(tied_head, emb))
            logf_(cb, QPK_LOG_WARN,
                  "lm_head.weight differs from model.embed_tokens.weight; tie_word_embeddings is true, so it "
                  "is ignored and the head uses the embedding (as transformers does)");
    }
    for (size_t i = 0; i < ck->n_ignored; i++)
        logf_(cb, QPK_LOG_WARN, "unexpected tensor '%s' is not part of a %s model: ignored", ck->ignored[i],
              qpk_arch_name(c->arch));
    return QPK_OK;
}

qpk_status qpk_checkpoint_open(qpk_checkpoint **out, const char *dir, const qpk_callbacks *cb, qpk_err *e)
{
    *out = NULL;
    qpk_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck || !(ck->dir = strdup(dir))) {
        free(ck);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    char *cfg;
    size_t len;
    bool missing;
    qpk_status s = qpk_read_model_file(dir, "config.json", &cfg, &len, &missing, e);
    if (s == QPK_OK) {
        s = qpk_config_parse(&ck->cfg, cfg, len, e);
        if (s != QPK_OK)
            qpk_err_prefix(e, s, "%s/config.json", dir);
        char *qcfg = NULL;
        size_t qlen = 0;
        bool qmissing = false;
        if (s == QPK_OK && (s = qpk_read_model_file(dir, "quantize_config.json", &qcfg, &qlen, &qmissing, e)) != QPK_OK &&
            qmissing)
            s = QPK_OK; /* optional */
        if (s == QPK_OK)
            s = qpk_hfq_parse(cfg, len, qcfg, qlen, &ck->hfq, e);
        free(cfg), free(qcfg);
    } else if (missing) {
        struct stat sb;
        s = qpk_err_setf(e, QPK_E_IO, stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode)
                                          ? "'%s' has no config.json: not a Hugging Face model folder"
                                          : "'%s' is not a folder",
                         dir);
    }
    if (s == QPK_OK)
        s = open_files(ck, cb, e);
    if (s == QPK_OK)
        s = classify(ck, cb, e);
    if (s != QPK_OK) {
        qpk_checkpoint_close(ck);
        return s;
    }
    *out = ck;
    return QPK_OK;
}

void qpk_checkpoint_close(qpk_checkpoint *ck)
{
    if (!ck)
        return;
    for (size_t i = 0; i < ck->n_shards; i++) {
        qpk_st_close(ck->shards[i]);
        free(ck->shard_names[i]);
    }
    free(ck->shards);
    free(ck->shard_names);
    for (size_t i = 0; ck->qlin && i < (size_t)(ck->cfg.n_layers + 1) * QPK_ROLE_COUNT_; i++)
        qpk_qlinear_free(&ck->qlin[i]);
    free(ck->qlin);
    free(ck->schemes);
    qpk_hfq_free(&ck->hfq);
    free(ck->slots);
    free(ck->ignored);
    for (size_t i = 0; ck->stacked && qpk_config_is_moe(&ck->cfg) && i < (size_t)ck->cfg.n_layers * 3; i++)
        free(ck->stacked[i].bytes);
    free(ck->stacked);
    free(ck->experts);
    for (size_t i = 0; i < ck->n_owned; i++)
        free(ck->owned[i]);
    free(ck->owned);
    free(ck->dir);
    free(ck);
}

const qpk_config *qpk_checkpoint_config(const qpk_checkpoint *ck) { return &ck->cfg; }

/* The stacked tensor of (role, layer) made by stack_experts, or NULL. */
static struct stacked *stacked_of(const qpk_checkpoint *ck, qpk_role role, int layer)
{
    if (!qpk_role_is_expert(role) || !qpk_layer_is_sparse(&ck->cfg, layer))
        return NULL;
    struct stacked *st = &ck->stacked[(size_t)layer * 3 + (size_t)expert_kind(role)];
    return st->t.name ? st : NULL;
}

const qpk_st_tensor *qpk_checkpoint_tensor(const qpk_checkpoint *ck, qpk_role role, int layer)
{
    const qpk_st_tensor *t = qpk_checkpoint_tensor_meta(ck, role, layer);
    struct stacked *st = t ? stacked_of(ck, role, layer) : NULL;
    if (st && !st->bytes) { /* gathered on first use: a cache, not a change of the checkpoint */
        const qpk_st_tensor *const *parts =
            &ck->experts[((size_t)layer * 3 + (size_t)expert_kind(role)) * (size_t)ck->cfg.n_experts];
        uint8_t *b = malloc((size_t)st->t.nbytes ? (size_t)st->t.nbytes : 1);
        if (!b)
            return NULL;
        for (int64_t x = 0; x < ck->cfg.n_experts; x++)
            memcpy(b + (size_t)x * (size_t)parts[x]->nbytes, parts[x]->data, (size_t)parts[x]->nbytes);
        st->bytes = b;
        st->t.data = b;
    }
    return t;
}

const qpk_st_tensor *qpk_checkpoint_tensor_meta(const qpk_checkpoint *ck, qpk_role role, int layer)
{
    if (role == QPK_ROLE_LM_HEAD && ck->cfg.tie_word_embeddings)
        role = QPK_ROLE_EMBED;
    if (!qpk_role_is_per_layer(role))
        layer = -1;
    else if (layer < 0 || layer >= ck->cfg.n_layers)
        return NULL;
    return ck->slots[slot(role, layer)];
}

void qpk_checkpoint_release(qpk_checkpoint *ck, qpk_role role, int layer)
{
    struct stacked *st = stacked_of(ck, role, layer);
    if (st) {
        free(st->bytes);
        st->bytes = NULL, st->t.data = NULL;
    }
}

const qpk_qlinear *qpk_checkpoint_qlinear(const qpk_checkpoint *ck, qpk_role role, int layer)
{
    if (role == QPK_ROLE_LM_HEAD && ck->cfg.tie_word_embeddings)
        role = QPK_ROLE_EMBED;
    if (!qpk_role_is_per_layer(role))
        layer = -1; /* MLX's quantized embedding and head */
    else if (layer < 0 || layer >= ck->cfg.n_layers)
        return NULL;
    if (!ck->qlin)
        return NULL;
    const qpk_qlinear *q = &ck->qlin[slot(role, layer)];
    return q->qweight ? q : NULL;
}

const qpk_hfq *qpk_checkpoint_hfq(const qpk_checkpoint *ck) { return &ck->hfq; }

size_t qpk_checkpoint_n_files(const qpk_checkpoint *ck) { return ck->n_shards; }

const char *qpk_checkpoint_file(const qpk_checkpoint *ck, size_t i, uint64_t *size)
{
    if (i >= ck->n_shards)
        return NULL;
    if (size)
        *size = qpk_st_file_size(ck->shards[i]);
    return ck->shard_names[i];
}

size_t qpk_checkpoint_n_ignored(const qpk_checkpoint *ck) { return ck->n_ignored; }
const char *qpk_checkpoint_ignored(const qpk_checkpoint *ck, size_t i)
{
    return i < ck->n_ignored ? ck->ignored[i] : NULL;
}

/* ------------------------------------------------------------ tensors as matrices */

/* A copy the checkpoint keeps for a matrix view (freed with it). */
static void *keep(qpk_checkpoint *ck, size_t bytes)
{
    void **owned = realloc(ck->owned, (ck->n_owned + 1) * sizeof *owned);
    if (owned)
        ck->owned = owned;
    void *p = owned ? malloc(bytes ? bytes : 1) : NULL;
    if (p)
        ck->owned[ck->n_owned++] = p;
    return p;
}

qpk_status qpk_checkpoint_matrix(qpk_checkpoint *ck, qpk_role role, int layer, qpk_matrix *w, qpk_err *e)
{
    const qpk_qlinear *q = qpk_checkpoint_qlinear(ck, role, layer);
    if (q) { /* imported into qpk blocks: the runtime computes with exactly these weights */
        size_t bytes = qpk_type_row_bytes(q->type, q->group, q->cols) * (size_t)q->rows;
        uint8_t *data = keep(ck, bytes);
        if (!data)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory importing '%s'", q->name);
        QPK_TRY(qpk_qlinear_rows(q, 0, q->rows, data, e));
        *w = (qpk_matrix){q->type, q->group, q->rows, q->cols, data, q->perm};
        return QPK_OK;
    }
    const qpk_st_tensor *t = qpk_checkpoint_tensor(ck, role, layer);
    if (!t)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory gathering the experts of layer %d", layer);
    const void *data = t->data;
    qpk_type type = qpk_st_keep_type(t->dtype);
    if (t->dtype == QPK_ST_F64) {
        float *copy = keep(ck, (size_t)t->numel * sizeof *copy);
        if (!copy)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory converting '%s' from F64", t->name);
        qpk_st_to_f32(t, 0, (size_t)t->numel, copy);
        data = copy;
    }
    *w = (qpk_matrix){type, 0, t->ndim == 2 ? t->shape[0] : 1, t->shape[t->ndim - 1], data};
    return QPK_OK;
}
