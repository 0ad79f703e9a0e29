/* qinspect's view of a GGUF file: header, metadata, tensors, and a Qwen2 check. */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model_private.h"
#include "qpk/gguf.h"

#define SHOWN_ELEMS 6  /* array elements printed before "..." */
#define SHOWN_CHARS 72 /* string bytes printed before "..." */

static const char *const VALUE_TYPE[QPK_GGUF_TYPE_COUNT_] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
static const unsigned ELEM_SIZE[QPK_GGUF_TYPE_COUNT_] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

/* Element i of a numeric array, decoded into a scalar value. */
static qpk_gguf_value array_elem(const qpk_gguf_value *a, uint64_t i)
{
    qpk_gguf_value v = {.type = a->elem_type};
    const uint8_t *p = a->elems + i * ELEM_SIZE[a->elem_type];
    uint64_t raw = 0;
    for (unsigned b = 0; b < ELEM_SIZE[a->elem_type]; b++)
        raw |= (uint64_t)p[b] << (8 * b);
    switch (a->elem_type) {
    case QPK_GGUF_I8: v.num.i = (int8_t)raw; break;
    case QPK_GGUF_I16: v.num.i = (int16_t)raw; break;
    case QPK_GGUF_I32: v.num.i = (int32_t)raw; break;
    case QPK_GGUF_I64: v.num.i = (int64_t)raw; break;
    case QPK_GGUF_F32: {
        float f;
        uint32_t b32 = (uint32_t)raw;
        memcpy(&f, &b32, 4);
        v.num.f = f;
        break;
    }
    case QPK_GGUF_F64: memcpy(&v.num.f, &raw, 8); break;
    default: v.num.u = raw; break;
    }
    return v;
}

static void print_string(const char *s, uint64_t len)
{
    putchar('"');
    size_t shown = cli_put_escaped(stdout, s, (size_t)len, SHOWN_CHARS, true);
    printf(shown < len ? "\"..." : "\"");
}

static void print_scalar(const qpk_gguf_value *v)
{
    switch (v->type) {
    case QPK_GGUF_I8: case QPK_GGUF_I16: case QPK_GGUF_I32: case QPK_GGUF_I64:
        printf("%" PRId64, v->num.i);
        break;
    case QPK_GGUF_F32: case QPK_GGUF_F64: printf("%.9g", v->num.f); break;
    case QPK_GGUF_BOOL: printf(v->num.u ? "true" : "false"); break;
    case QPK_GGUF_STRING: print_string(v->str, v->len); break;
    default: printf("%" PRIu64, v->num.u); break;
    }
}

static void print_value(const qpk_gguf *g, const qpk_gguf_value *v)
{
    if (v->type != QPK_GGUF_ARRAY) {
        print_scalar(v);
        return;
    }
    printf("[%s x %" PRIu64 "]", VALUE_TYPE[v->elem_type], v->len);
    for (uint64_t i = 0; i < v->len && i < SHOWN_ELEMS; i++) {
        printf(i ? ", " : " ");
        if (v->elem_type == QPK_GGUF_STRING) {
            uint64_t len;
            const char *s = qpk_gguf_array_string(g, v, i, &len);
            print_string(s, len);
        } else {
            qpk_gguf_value e = array_elem(v, i);
            print_scalar(&e);
        }
    }
    if (v->len > SHOWN_ELEMS)
        printf(", ...");
}

static cJSON *json_scalar(const qpk_gguf_value *v)
{
    switch (v->type) {
    case QPK_GGUF_I8: case QPK_GGUF_I16: case QPK_GGUF_I32: case QPK_GGUF_I64: return cJSON_CreateNumber((double)v->num.i);
    case QPK_GGUF_F32: case QPK_GGUF_F64: return cJSON_CreateNumber(v->num.f);
    case QPK_GGUF_BOOL: return cJSON_CreateBool(v->num.u != 0);
    case QPK_GGUF_STRING: {
        char *s = cli_json_safe(v->str, (size_t)v->len);
        cJSON *j = cJSON_CreateString(s ? s : "");
        free(s);
        return j;
    }
    default: return cJSON_CreateNumber((double)v->num.u);
    }
}

/* Scalars as themselves; arrays as {type, count, head: the first elements}. */
static cJSON *json_value(const qpk_gguf *g, const qpk_gguf_value *v)
{
    if (v->type != QPK_GGUF_ARRAY)
        return json_scalar(v);
    cJSON *o = cJSON_CreateObject(), *head = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "type", VALUE_TYPE[v->elem_type]);
    cJSON_AddNumberToObject(o, "count", (double)v->len);
    for (uint64_t i = 0; i < v->len && i < SHOWN_ELEMS; i++) {
        qpk_gguf_value e = array_elem(v, i);
        if (v->elem_type == QPK_GGUF_STRING) {
            e.type = QPK_GGUF_STRING;
            e.str = qpk_gguf_array_string(g, v, i, &e.len);
        }
        cJSON_AddItemToArray(head, json_scalar(&e));
    }
    cJSON_AddItemToObject(o, "head", head);
    return o;
}

/* ---------------------------------------------------------------- main */

static void print_text(const char *path, const qpk_gguf *g, uint64_t size, bool tensors, bool verified)
{
    printf("file          ");
    cli_print_msg(stdout, path);
    putchar('\n');
    printf("size          %" PRIu64 " bytes", size);
    if (qpk_gguf_n_shards(g) > 1)
        printf(" in %zu files (a split set)", qpk_gguf_n_shards(g));
    printf("\n");
    printf("format        GGUF v%u, alignment %u\n", qpk_gguf_version(g), qpk_gguf_alignment(g));
    printf("metadata      %zu keys\n", qpk_gguf_n_kv(g));
    for (size_t i = 0; i < qpk_gguf_n_kv(g); i++) {
        qpk_gguf_value v;
        const char *key = qpk_gguf_kv_at(g, i, &v);
        printf("  ");
        size_t n = cli_put_escaped(stdout, key, strlen(key), SIZE_MAX, false);
        printf("%*s ", n < 40 ? (int)(40 - n) : 0, "");
        print_value(g, &v);
        putchar('\n');
    }
    qpk_gguf_value arch;
    if (verified && qpk_gguf_find(g, "general.architecture", &arch)) /* checked: qwen2, qwen2moe, qwen3 or qwen3moe */
        printf("check         %.*s tensors and shapes complete\n", (int)arch.len, arch.str);
    printf("tensors       %zu\n", qpk_gguf_n_tensors(g));
    for (size_t i = 0; tensors && i < qpk_gguf_n_tensors(g); i++) {
        const qpk_gguf_tensor *t = qpk_gguf_tensor_at(g, i);
        char shape[96];
        int n = snprintf(shape, sizeof shape, "[");
        for (int d = 0; d < t->n_dims; d++)
            n += snprintf(shape + n, sizeof shape - (size_t)n, d ? ", %" PRIu64 : "%" PRIu64, t->ne[d]);
        snprintf(shape + n, sizeof shape - (size_t)n, "]");
        printf("  ");
        size_t w = cli_put_escaped(stdout, t->name, strlen(t->name), SIZE_MAX, false);
        printf("%*s %-7s %-16s %12" PRIu64 " bytes at %" PRIu64, w < 32 ? (int)(32 - w) : 0, "",
               qpk_ggml_type_name(t->type), shape, t->nbytes, t->offset);
        if (qpk_gguf_n_shards(g) > 1) /* a split set: the offset is in that file */
            printf(" of shard %u", t->shard + 1);
        printf("\n");
    }
}

static void print_json(const char *path, const qpk_gguf *g, uint64_t size, bool tensors, bool verified)
{
    cJSON *o = cJSON_CreateObject(), *meta = cJSON_CreateObject();
    char *safe_path = cli_json_safe(path, strlen(path));
    cJSON_AddStringToObject(o, "file", safe_path ? safe_path : "");
    free(safe_path);
    cJSON_AddStringToObject(o, "format", "gguf");
    cJSON_AddNumberToObject(o, "size", (double)size);
    cJSON_AddNumberToObject(o, "format_version", qpk_gguf_version(g));
    cJSON_AddNumberToObject(o, "alignment", qpk_gguf_alignment(g));
    if (qpk_gguf_n_shards(g) > 1)
        cJSON_AddNumberToObject(o, "shards", (double)qpk_gguf_n_shards(g));
    for (size_t i = 0; i < qpk_gguf_n_kv(g); i++) {
        qpk_gguf_value v;
        const char *key = qpk_gguf_kv_at(g, i, &v);
        char *safe = cli_json_safe(key, strlen(key));
        cJSON_AddItemToObject(meta, safe ? safe : "", json_value(g, &v));
        free(safe);
    }
    cJSON_AddItemToObject(o, "metadata", meta);
    if (tensors) {
        cJSON *arr = cJSON_AddArrayToObject(o, "tensors");
        for (size_t i = 0; i < qpk_gguf_n_tensors(g); i++) {
            const qpk_gguf_tensor *t = qpk_gguf_tensor_at(g, i);
            cJSON *x = cJSON_CreateObject(), *ne = cJSON_CreateArray();
            for (int d = 0; d < t->n_dims; d++)
                cJSON_AddItemToArray(ne, cJSON_CreateNumber((double)t->ne[d]));
            char *name = cli_json_safe(t->name, strlen(t->name));
            cJSON_AddStringToObject(x, "name", name ? name : "");
            free(name);
            cJSON_AddStringToObject(x, "type", qpk_ggml_type_name(t->type));
            cJSON_AddItemToObject(x, "ne", ne);
            cJSON_AddNumberToObject(x, "offset", (double)t->offset);
            if (qpk_gguf_n_shards(g) > 1)
                cJSON_AddNumberToObject(x, "shard", t->shard + 1);
            cJSON_AddNumberToObject(x, "bytes", (double)t->nbytes);
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

int inspect_gguf(cli *c, const char *path, bool json, bool tensors, bool verify)
{
    qpk_gguf *g;
    qpk_err e = {0};
    if (qpk_gguf_open(&g, path, &e) != QPK_OK)
        return cli_fail(c, &e);
    qpk_config cfg;
    qpk_status s;
    if (verify && (s = qpk_gguf_qwen2(g, &cfg, &e)) != QPK_OK) {
        qpk_gguf_close(g);
        qpk_err_prefix(&e, s, "%s", path);
        return cli_fail(c, &e);
    }
    uint64_t size = qpk_gguf_file_size(g);
    if (json)
        print_json(path, g, size, tensors, verify);
    else
        print_text(path, g, size, tensors, verify);
    qpk_gguf_close(g);
    return 0;
}
