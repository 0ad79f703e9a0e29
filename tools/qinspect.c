/* qinspect: print what a .qpk (or a GGUF) holds, and verify it. */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qpk_private.h"
#include "cli.h"

static void usage(void)
{
    printf("Usage: qinspect FILE.qpk|FILE.gguf [options]\n"
           "\n"
           "Prints the header, model config, quantization recipe, provenance, embedded\n"
           "files and tensor table of a .qpk file; of a GGUF file (llama.cpp's format,\n"
           "known by its magic), the header, metadata and tensor infos. Every offset and\n"
           "size is validated when the file is opened.\n"
           "\n"
           "Options:\n"
           "      --verify     .qpk: also recompute every tensor's and embedded file's\n"
           "                   XXH3 and check the tensors against the model config;\n"
           "                   GGUF: check the architecture's keys, tokenizer and every tensor's\n"
           "                   name and shape\n"
           "      --json       print one JSON object instead of text\n"
           "      --no-tensors leave out the tensor table\n"
           "  -h, --help       this help\n"
           "      --version    print the version\n"
           "\n"
           "Exit codes: 0 ok, 2 usage, 3 bad or corrupt file (checksum mismatch included),\n"
           "4 I/O error, 5 internal.\n");
}

static void shape_str(const qpk_tensor *t, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < t->ndim && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, d ? ", %lld" : "%lld", (long long)t->dims[d]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

/* Bits of storage per element of a tensor (scales included for quantized types). */
static double bits_per_weight(const qpk_tensor *t)
{
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++)
        numel *= (uint64_t)t->dims[d];
    return numel ? 8.0 * (double)t->nbytes / (double)numel : 0.0;
}

static qpk_status verify_all(cli *c, const qpk_file *f, qpk_err *e)
{
    qpk_callbacks cb = cli_callbacks(c);
    uint64_t total = 0, done = 0;
    for (size_t i = 0; i < qpk_n_tensors(f); i++)
        total += qpk_tensor_at(f, i)->nbytes;
    for (size_t i = 0; i < qpk_n_tensors(f); i++) {
        if (cb.cancel(cb.ud))
            return qpk_err_setf(e, QPK_E_CANCELLED, "cancelled");
        QPK_TRY(qpk_verify_tensor(f, i, e));
        done += qpk_tensor_at(f, i)->nbytes;
        cb.progress(cb.ud, qpk_tensor_at(f, i)->name, done, total);
    }
    for (size_t i = 0; i < qpk_n_blobs(f); i++) {
        uint64_t size;
        const char *name = qpk_blob_name(f, i, &size);
        void *buf = malloc(size ? (size_t)size : 1);
        if (!buf)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        qpk_status s = qpk_blob_read(f, name, buf, (size_t)size, NULL, e);
        free(buf);
        if (s != QPK_OK)
            return s;
    }
    cli_progress_done(c);
    return qpk_check_model(f, e);
}

/* An embedded file's bytes, malloc'd and NUL-terminated, or NULL. */
static char *blob_text(const qpk_file *f, const char *name, size_t *len)
{
    qpk_err e = {0};
    char *buf = NULL;
    if (qpk_blob_read(f, name, NULL, 0, len, &e) != QPK_OK || !(buf = malloc(*len + 1)) ||
        qpk_blob_read(f, name, buf, *len, len, &e) != QPK_OK) {
        free(buf);
        return NULL;
    }
    buf[*len] = 0;
    return buf;
}

/*
 * The chat template the model carries (what llama.cpp and Ollama chat with): chat_template.jinja,
 * else tokenizer_config.json's chat_template, a string or named templates. Its size and first line.
 */
static void print_chat_template(const qpk_file *f)
{
    size_t len = 0;
    char *jinja = blob_text(f, "chat_template.jinja", &len), *cfg = jinja ? NULL : blob_text(f, "tokenizer_config.json", &len);
    cJSON *root = cfg ? cJSON_ParseWithLength(cfg, len) : NULL;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "chat_template"), *it;
    const char *text = jinja ? jinja : cJSON_IsString(t) ? t->valuestring : NULL;
    if (text) {
        size_t first = strcspn(text, "\n");
        printf("chat template %zu bytes (%s): %.*s%s\n", strlen(text), jinja ? "chat_template.jinja" : "tokenizer_config.json",
               (int)(first < 60 ? first : 60), text, first > 60 || text[first] ? " ..." : "");
    } else if (cJSON_IsArray(t)) {
        printf("chat template named:");
        cJSON_ArrayForEach(it, t)
        {
            const cJSON *n = cJSON_GetObjectItemCaseSensitive(it, "name"), *s = cJSON_GetObjectItemCaseSensitive(it, "template");
            if (cJSON_IsString(n) && cJSON_IsString(s))
                printf(" %s (%zu bytes)", n->valuestring, strlen(s->valuestring));
        }
        putchar('\n');
    } else {
        printf("chat template none\n");
    }
    cJSON_Delete(root);
    free(jinja), free(cfg);
}

static void print_text(const char *path, const qpk_file *f, const cJSON *meta, bool tensors, bool verified)
{
    const qpk_config *c = qpk_file_config(f);
    printf("file          ");
    cli_print_msg(stdout, path);
    putchar('\n');
    printf("size          %" PRIu64 " bytes\n", qpk_file_size(f));
    printf("format        qpk v%u, alignment %u\n", qpk_file_version(f), qpk_file_alignment(f));
    printf("model         %s: vocab %lld, hidden %lld, intermediate %lld, layers %lld\n", qpk_arch_name(c->arch),
           (long long)c->vocab_size, (long long)c->hidden_size, (long long)c->intermediate_size,
           (long long)c->n_layers);
    printf("attention     %lld heads, %lld kv heads, head_dim %lld, rope_theta %g, max positions %lld%s%s\n",
           (long long)c->n_heads, (long long)c->n_kv_heads, (long long)c->head_dim, c->rope_theta,
           (long long)c->max_position_embeddings, c->arch == QPK_ARCH_QWEN3 || c->arch == QPK_ARCH_QWEN3_MOE ?
           "; q/k norms" : "", c->attention_bias ? "; biases on q/k/v/o" : "");
    if (c->yarn.factor != 0)
        printf("rope scaling  yarn: factor %g over %lld original positions, beta_fast %g, beta_slow %g, "
               "attention factor %g\n", c->yarn.factor, (long long)c->yarn.original_max_position_embeddings,
               c->yarn.beta_fast, c->yarn.beta_slow, c->yarn.attention_factor);
    if (qpk_config_is_moe(c)) {
        int sparse = 0;
        for (int l = 0; l < c->n_layers; l++)
            sparse += qpk_layer_is_sparse(c, l);
        printf("experts       %lld, %lld per token%s, %lld wide each", (long long)c->n_experts,
               (long long)c->n_experts_used, c->norm_topk_prob ? " (weights renormalized)" : "",
               (long long)c->moe_intermediate_size);
        if (c->shared_expert_intermediate_size)
            printf("; shared expert %lld wide", (long long)c->shared_expert_intermediate_size);
        printf("; %d of %lld layers sparse\n", sparse, (long long)c->n_layers);
    }
    printf("norms         rms_norm_eps %g; embeddings %s\n", c->rms_norm_eps,
           c->tie_word_embeddings ? "tied (one tensor serves the head)" : "untied");
    if (c->bos_token_id >= 0)
        printf("tokens        bos %lld, eos", (long long)c->bos_token_id);
    else
        printf("tokens        bos none, eos");
    for (int i = 0; i < c->n_eos; i++)
        printf(" %lld", (long long)c->eos_token_ids[i]);
    printf("%s\n", c->n_eos ? "" : " none");
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(meta, "quantization");
    char *qs = q && !cJSON_IsNull(q) ? cJSON_PrintUnformatted(q) : NULL;
    printf("quantization  ");
    cli_print_msg(stdout, qs ? qs : "none");
    putchar('\n');
    free(qs);
    const cJSON *prov = cJSON_GetObjectItemCaseSensitive(meta, "provenance");
    const cJSON *tool = cJSON_GetObjectItemCaseSensitive(prov, "tool");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(prov, "version");
    const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(prov, "command");
    if (cJSON_IsString(tool) && cJSON_IsString(ver)) {
        printf("written by    ");
        cli_print_msg(stdout, tool->valuestring);
        putchar(' ');
        cli_print_msg(stdout, ver->valuestring);
        if (cJSON_IsString(cmd)) {
            printf(": ");
            cli_print_msg(stdout, cmd->valuestring);
        }
        putchar('\n');
    }
    /* The certificate of a conversion from a quantized source: what was carried bit for bit. */
    const cJSON *cert = cJSON_GetObjectItemCaseSensitive(prov, "certificate");
    const cJSON *exact = cJSON_GetObjectItemCaseSensitive(cert, "exact"), *changed = cJSON_GetObjectItemCaseSensitive(cert, "changed");
    if (cJSON_IsNumber(exact) && cJSON_IsNumber(changed)) {
        printf("certificate   %.0f of %.0f matrices carried exactly from the quantized source", exact->valuedouble,
               exact->valuedouble + changed->valuedouble);
        const cJSON *t, *list = cJSON_GetObjectItemCaseSensitive(cert, "tensors");
        cJSON_ArrayForEach(t, list)
        {
            const cJSON *how = cJSON_GetObjectItemCaseSensitive(t, "how");
            const cJSON *max = cJSON_GetObjectItemCaseSensitive(t, "max_abs_change");
            const cJSON *rel = cJSON_GetObjectItemCaseSensitive(t, "rel_frobenius");
            if (!cJSON_IsString(how) || !cJSON_IsNumber(max))
                continue;
            printf("\n              ");
            cli_print_msg(stdout, t->string);
            printf(": ");
            cli_print_msg(stdout, how->valuestring);
            printf(", max |dw| %.3g", max->valuedouble);
            if (cJSON_IsNumber(rel))
                printf(", relative Frobenius error %.3g", rel->valuedouble);
        }
        putchar('\n');
    }
    printf("embedded      %zu file(s)", qpk_n_blobs(f));
    for (size_t i = 0; i < qpk_n_blobs(f); i++) {
        uint64_t size;
        const char *name = qpk_blob_name(f, i, &size);
        printf("%s %s (%" PRIu64 " bytes)", i ? "," : ":", name, size);
    }
    printf("\n");
    print_chat_template(f);
    uint64_t per_type[QPK_TYPE_COUNT_] = {0}, bytes = 0;
    for (size_t i = 0; i < qpk_n_tensors(f); i++) {
        const qpk_tensor *t = qpk_tensor_at(f, i);
        per_type[t->type] += t->nbytes;
        bytes += t->nbytes;
    }
    printf("tensors       %zu, %" PRIu64 " bytes:", qpk_n_tensors(f), bytes);
    for (uint32_t t = 0; t < QPK_TYPE_COUNT_; t++)
        if (per_type[t])
            printf(" %s %" PRIu64, qpk_type_name(t), per_type[t]);
    printf("\n");
    if (verified)
        printf("verified      all tensor and file checksums match; tensors match the config\n");
    if (!tensors)
        return;
    printf("\n%-4s %-52s %-10s %6s %-16s %12s %12s\n", "#", "name", "type", "bpw", "shape", "bytes", "offset");
    for (size_t i = 0; i < qpk_n_tensors(f); i++) {
        const qpk_tensor *t = qpk_tensor_at(f, i);
        char shape[96], type[32];
        shape_str(t, shape, sizeof shape);
        if (t->group_size)
            snprintf(type, sizeof type, "%s/g%u", qpk_type_name(t->type), t->group_size);
        else
            snprintf(type, sizeof type, "%s", qpk_type_name(t->type));
        printf("%-4zu %-52s %-10s %6.2f %-16s %12" PRIu64 " %12" PRIu64 "\n", i, t->name, type, bits_per_weight(t),
               shape, t->nbytes, t->offset);
    }
}

static void print_json(const char *path, const qpk_file *f, cJSON *meta, bool tensors, bool verified)
{
    cJSON *o = cJSON_CreateObject();
    char *safe_path = cli_json_safe(path, strlen(path));
    cJSON_AddStringToObject(o, "file", safe_path ? safe_path : "");
    free(safe_path);
    cJSON_AddNumberToObject(o, "size", (double)qpk_file_size(f));
    cJSON_AddNumberToObject(o, "format_version", qpk_file_version(f));
    cJSON_AddNumberToObject(o, "alignment", qpk_file_alignment(f));
    cJSON_AddItemReferenceToObject(o, "metadata", meta);
    cJSON *files = cJSON_AddArrayToObject(o, "embedded_files");
    for (size_t i = 0; i < qpk_n_blobs(f); i++) {
        uint64_t size;
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "name", qpk_blob_name(f, i, &size));
        cJSON_AddNumberToObject(b, "size", (double)size);
        cJSON_AddItemToArray(files, b);
    }
    if (tensors) {
        cJSON *arr = cJSON_AddArrayToObject(o, "tensors");
        for (size_t i = 0; i < qpk_n_tensors(f); i++) {
            const qpk_tensor *t = qpk_tensor_at(f, i);
            cJSON *x = cJSON_CreateObject(), *shape = cJSON_CreateArray();
            char hex[17];
            snprintf(hex, sizeof hex, "%016" PRIx64, t->xxh3);
            for (int d = 0; d < t->ndim; d++)
                cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->dims[d]));
            cJSON_AddStringToObject(x, "name", t->name);
            cJSON_AddStringToObject(x, "type", qpk_type_name(t->type));
            cJSON_AddNumberToObject(x, "group_size", t->group_size);
            cJSON_AddItemToObject(x, "shape", shape);
            cJSON_AddNumberToObject(x, "offset", (double)t->offset);
            cJSON_AddNumberToObject(x, "bytes", (double)t->nbytes);
            cJSON_AddNumberToObject(x, "bits_per_weight", bits_per_weight(t));
            cJSON_AddStringToObject(x, "xxh3", hex);
            cJSON_AddItemToArray(arr, x);
        }
    }
    cJSON_AddBoolToObject(o, "verified", verified);
    char *s = cJSON_Print(o);
    if (s)
        printf("%s\n", s);
    free(s);
    cJSON_Delete(o);
}

int main(int argc, char **argv)
{
    cli c;
    cli_init(&c, "qinspect");
    const char *path = NULL;
    bool verify = false, json = false, tensors = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("qinspect %s\n", QPK_VERSION_STRING);
            return 0;
        } else if (!strcmp(a, "--verify")) {
            verify = true;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--no-tensors")) {
            tensors = false;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error(&c, "unknown option '%s'", a);
        } else if (!path) {
            path = a;
        } else {
            return cli_usage_error(&c, "unexpected argument '%s'", a);
        }
    }
    if (!path)
        return cli_usage_error(&c, "missing FILE.qpk");
    qpk_err e = {0};
    qpk_input_kind kind;
    if (qpk_identify(path, &kind, &e) != QPK_OK)
        return cli_fail(&c, &e);
    if (kind == QPK_INPUT_GGUF)
        return inspect_gguf(&c, path, json, tensors, verify);
    if (kind != QPK_INPUT_QPK) {
        qpk_err_setf(&e, QPK_E_UNSUPPORTED, "'%s' is %s, neither a .qpk nor a GGUF file%s", path,
                     qpk_input_kind_name(kind), kind == QPK_INPUT_OTHER ? " (bad magic)" : "");
        return cli_fail(&c, &e);
    }
    qpk_file *f;
    if (qpk_open(&f, path, NULL, &e) != QPK_OK)
        return cli_fail(&c, &e);
    if (verify && verify_all(&c, f, &e) != QPK_OK) {
        qpk_close(f);
        return cli_fail(&c, &e);
    }
    size_t len;
    const char *m = qpk_metadata(f, &len);
    cJSON *meta = cJSON_ParseWithLength(m, len); /* validated at open */
    if (json)
        print_json(path, f, meta, tensors, verify);
    else
        print_text(path, f, meta, tensors, verify);
    cJSON_Delete(meta);
    qpk_close(f);
    return 0;
}
