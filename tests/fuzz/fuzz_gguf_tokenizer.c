/*
 * libFuzzer target: the GGUF tokenizer validation path. The input is a small text script
 * describing a tokenizer (and any keys); the target writes a GGUF of a tiny, otherwise
 * valid qwen2 model with it, in memory, and runs what opening it as a model runs:
 * qpk_gguf_qwen2 (keys, tokenizer keys, tensors, and the tokenizer loaded by qpk's own
 * tokenizer), then what a conversion does with a file that passed.
 *
 * Script, one command per line ("\xHH" in a text is byte HH):
 *   Y            the 256 byte-level symbols as normal tokens (ids in byte order)
 *   T<t> text    a token of type t (0..9: llama.cpp's 1 normal, 3 control, 4 user, 5 unused)
 *   M a b        a merge (the rest of the line, as it is)
 *   N            no tokenizer.ggml.token_type array
 *   E rows       token_embd rows (default: the number of tokens)
 *   U key n      a u32 key;  I key n  an i32 key;  F key x  an f32 key
 *   S key text   a string key;  B key 0|1  a bool key
 *
 * Checks, besides not crashing or leaking: a file qpk_gguf_qwen2 accepts has a tokenizer
 * that loads and fits its embedding, whose encodings stay inside the vocabulary and
 * decode; without an error struct every call fails with the same status.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qpk/gguf.h"
#include "qpk/tokenizer.h"
#include "model_private.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_TOKENS 4096
#define MAX_MERGES 4096
#define MAX_KEYS 64
#define HIDDEN 8

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
    int oom;
} buf;

static void put(buf *b, const void *p, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q, b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf *b, const char *s, size_t n) { put_u64(b, n), put(b, s, n); }
static void put_cstr(buf *b, const char *s) { put_str(b, s, strlen(s)); }

typedef struct text {
    char *s;
    size_t n;
} text;

typedef struct extra_key {
    char type; /* U I F S B */
    text key, val;
} extra_key;

typedef struct script {
    text tok[MAX_TOKENS];
    int32_t type[MAX_TOKENS];
    size_t n_tok;
    text merge[MAX_MERGES];
    size_t n_merge;
    extra_key key[MAX_KEYS];
    size_t n_key;
    int no_types;
    long rows; /* -1: n_tok */
} script;

/* A copy of [s, s+n) with "\xHH" unescaped. */
static text unescape(const char *s, size_t n)
{
    text t = {malloc(n + 1), 0};
    for (size_t i = 0; t.s && i < n; i++) {
        unsigned v;
        char hex[3] = {0};
        if (s[i] == '\\' && i + 3 < n && s[i + 1] == 'x' && (memcpy(hex, s + i + 2, 2), sscanf(hex, "%2x", &v) == 1)) {
            t.s[t.n++] = (char)v;
            i += 3;
        } else {
            t.s[t.n++] = s[i];
        }
    }
    return t;
}

/* Byte b's byte-level symbol (GPT-2's bytes_to_unicode) as UTF-8. */
static text byte_symbol(int b)
{
    int cp = b, n = 0;
#define PRINTABLE(x) (((x) >= 0x21 && (x) <= 0x7e) || ((x) >= 0xa1 && (x) <= 0xac) || ((x) >= 0xae && (x) <= 0xff))
    if (!PRINTABLE(b)) {
        for (int x = 0; x < b; x++)
            n += !PRINTABLE(x);
        cp = 256 + n;
    }
#undef PRINTABLE
    text t = {malloc(2), 0};
    if (!t.s)
        return t;
    if (cp < 0x80)
        t.s[t.n++] = (char)cp;
    else
        t.s[t.n++] = (char)(0xc0 | cp >> 6), t.s[t.n++] = (char)(0x80 | (cp & 0x3f));
    return t;
}

static void parse_script(script *sc, const char *d, size_t size)
{
    memset(sc, 0, sizeof *sc);
    sc->rows = -1;
    for (size_t at = 0; at < size;) {
        const char *nl = memchr(d + at, '\n', size - at);
        size_t len = nl ? (size_t)(nl - (d + at)) : size - at;
        const char *l = d + at;
        at += len + 1;
        if (len == 0)
            continue;
        if (l[0] == 'Y') {
            for (int b = 0; b < 256 && sc->n_tok < MAX_TOKENS; b++)
                sc->type[sc->n_tok] = 1, sc->tok[sc->n_tok++] = byte_symbol(b);
        } else if (l[0] == 'T' && len >= 3 && l[1] >= '0' && l[1] <= '9' && sc->n_tok < MAX_TOKENS) {
            sc->type[sc->n_tok] = l[1] - '0';
            sc->tok[sc->n_tok++] = unescape(l + 3, len - 3);
        } else if (l[0] == 'M' && len >= 2 && sc->n_merge < MAX_MERGES) {
            sc->merge[sc->n_merge++] = unescape(l + 2, len - 2);
        } else if (l[0] == 'N') {
            sc->no_types = 1;
        } else if (l[0] == 'E' && len >= 3) {
            char num[16] = {0};
            memcpy(num, l + 2, len - 2 < 15 ? len - 2 : 15);
            sc->rows = strtol(num, NULL, 10);
            if (sc->rows < 0 || sc->rows > MAX_TOKENS + 16)
                sc->rows = -1;
        } else if (strchr("UIFSB", l[0]) && len >= 3 && sc->n_key < MAX_KEYS) {
            const char *sp = memchr(l + 2, ' ', len - 2);
            size_t kn = sp ? (size_t)(sp - (l + 2)) : len - 2;
            extra_key *k = &sc->key[sc->n_key++];
            k->type = l[0];
            k->key = unescape(l + 2, kn);
            k->val = sp ? unescape(sp + 1, (size_t)(l + len - sp - 1)) : unescape("", 0);
        }
    }
}

static void free_script(script *sc)
{
    for (size_t i = 0; i < sc->n_tok; i++)
        free(sc->tok[i].s);
    for (size_t i = 0; i < sc->n_merge; i++)
        free(sc->merge[i].s);
    for (size_t i = 0; i < sc->n_key; i++)
        free(sc->key[i].key.s), free(sc->key[i].val.s);
}

static void put_key(buf *b, const char *key, uint32_t type) { put_cstr(b, key), put_u32(b, type); }

static void put_extra(buf *b, const extra_key *k)
{
    char num[32] = {0};
    memcpy(num, k->val.s ? k->val.s : "", k->val.n < 31 ? k->val.n : 31);
    put_str(b, k->key.s ? k->key.s : "", k->key.n);
    switch (k->type) {
    case 'U': put_u32(b, QPK_GGUF_U32), put_u32(b, (uint32_t)strtoul(num, NULL, 10)); break;
    case 'I': put_u32(b, QPK_GGUF_I32), put_u32(b, (uint32_t)(int32_t)strtol(num, NULL, 10)); break;
    case 'F': {
        float f = strtof(num, NULL);
        put_u32(b, QPK_GGUF_F32), put(b, &f, 4);
        break;
    }
    case 'B': put_u32(b, QPK_GGUF_BOOL), put(b, &(uint8_t){num[0] == '1'}, 1); break;
    default: put_u32(b, QPK_GGUF_STRING), put_str(b, k->val.s ? k->val.s : "", k->val.n); break;
    }
}

/* The tiny model: hidden 8, 2 heads of 4, 1 KV head, ffn 8, one layer, all F32 zeros. */
static const struct {
    const char *name;
    int n_dims;
    uint64_t ne0, ne1; /* ne1 0 for token_embd: the rows */
} TENSORS[] = {
    {"token_embd.weight", 2, HIDDEN, 0},      {"output_norm.weight", 1, HIDDEN, 1},
    {"blk.0.attn_norm.weight", 1, HIDDEN, 1}, {"blk.0.attn_q.weight", 2, HIDDEN, 8},
    {"blk.0.attn_q.bias", 1, 8, 1},           {"blk.0.attn_k.weight", 2, HIDDEN, 4},
    {"blk.0.attn_k.bias", 1, 4, 1},           {"blk.0.attn_v.weight", 2, HIDDEN, 4},
    {"blk.0.attn_v.bias", 1, 4, 1},           {"blk.0.attn_output.weight", 2, 8, HIDDEN},
    {"blk.0.ffn_norm.weight", 1, HIDDEN, 1},  {"blk.0.ffn_gate.weight", 2, HIDDEN, 8},
    {"blk.0.ffn_up.weight", 2, HIDDEN, 8},    {"blk.0.ffn_down.weight", 2, 8, HIDDEN},
};
#define N_TENSORS (sizeof TENSORS / sizeof *TENSORS)

static void build(buf *b, const script *sc)
{
    const uint64_t n_kv = 12 + (sc->no_types ? 0 : 1) + sc->n_key;
    const uint64_t rows = sc->rows >= 0 ? (uint64_t)sc->rows : sc->n_tok;
    put(b, "GGUF", 4), put_u32(b, 3), put_u64(b, N_TENSORS), put_u64(b, n_kv);
    put_key(b, "general.architecture", QPK_GGUF_STRING), put_cstr(b, "qwen2");
    static const struct {
        const char *key;
        uint32_t v;
    } U[] = {{"qwen2.block_count", 1},       {"qwen2.context_length", 64},       {"qwen2.embedding_length", HIDDEN},
             {"qwen2.feed_forward_length", 8}, {"qwen2.attention.head_count", 2}, {"qwen2.attention.head_count_kv", 1}};
    for (size_t i = 0; i < sizeof U / sizeof *U; i++)
        put_key(b, U[i].key, QPK_GGUF_U32), put_u32(b, U[i].v);
    const float eps = 1e-6f;
    put_key(b, "qwen2.attention.layer_norm_rms_epsilon", QPK_GGUF_F32), put(b, &eps, 4);
    put_key(b, "tokenizer.ggml.model", QPK_GGUF_STRING), put_cstr(b, "gpt2");
    put_key(b, "tokenizer.ggml.pre", QPK_GGUF_STRING), put_cstr(b, "qwen2");
    put_key(b, "tokenizer.ggml.tokens", QPK_GGUF_ARRAY), put_u32(b, QPK_GGUF_STRING), put_u64(b, sc->n_tok);
    for (size_t i = 0; i < sc->n_tok; i++)
        put_str(b, sc->tok[i].s ? sc->tok[i].s : "", sc->tok[i].n);
    if (!sc->no_types) {
        put_key(b, "tokenizer.ggml.token_type", QPK_GGUF_ARRAY), put_u32(b, QPK_GGUF_I32), put_u64(b, sc->n_tok);
        for (size_t i = 0; i < sc->n_tok; i++)
            put_u32(b, (uint32_t)sc->type[i]);
    }
    put_key(b, "tokenizer.ggml.merges", QPK_GGUF_ARRAY), put_u32(b, QPK_GGUF_STRING), put_u64(b, sc->n_merge);
    for (size_t i = 0; i < sc->n_merge; i++)
        put_str(b, sc->merge[i].s ? sc->merge[i].s : "", sc->merge[i].n);
    for (size_t i = 0; i < sc->n_key; i++)
        put_extra(b, &sc->key[i]);
    uint64_t off = 0;
    for (size_t i = 0; i < N_TENSORS; i++) {
        const uint64_t ne1 = TENSORS[i].ne1 ? TENSORS[i].ne1 : rows;
        put_cstr(b, TENSORS[i].name), put_u32(b, (uint32_t)TENSORS[i].n_dims), put_u64(b, TENSORS[i].ne0);
        if (TENSORS[i].n_dims == 2)
            put_u64(b, ne1);
        put_u32(b, QPK_GGML_F32), put_u64(b, off);
        off += (TENSORS[i].ne0 * ne1 * 4 + 31) / 32 * 32;
    }
    static const uint8_t zeros[32];
    put(b, zeros, (32 - b->n % 32) % 32);
    for (uint64_t i = 0; i < off / 32; i++)
        put(b, zeros, 32);
}

/* What a file that passed must allow: its tokenizer loads, fits, encodes inside the vocabulary and decodes. */
static void check_passed(const qpk_gguf *g, const qpk_config *cfg)
{
    char *json = NULL, *tcfg;
    size_t len;
    qpk_tokenizer *tok = NULL;
    qpk_err e;
    if (qpk_gguf_tokenizer_json(g, &json, &len, &e) != QPK_OK || qpk_tokenizer_load(&tok, json, len, &e) != QPK_OK ||
        qpk_tokenizer_fits(tok, cfg->vocab_size, &e) != QPK_OK) {
        fprintf(stderr, "a GGUF that passed has a tokenizer qpk cannot load: %s\n", e.msg);
        __builtin_trap();
    }
    static const char TEXT[] = "ab c<|endoftext|> x\n\xc3\xa9 12";
    int32_t *ids = NULL;
    size_t n = 0, out_len;
    if (qpk_tokenizer_encode_alloc(tok, TEXT, sizeof TEXT - 1, true, &ids, &n, &e) == QPK_OK) {
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= cfg->vocab_size)
                __builtin_trap();
        if (qpk_tokenizer_decode(tok, ids, n, false, NULL, 0, &out_len, &e) != QPK_OK)
            __builtin_trap();
    }
    free(ids);
    qpk_tokenizer_free(tok);
    free(json);
    free(tcfg = qpk_gguf_tokenizer_config(g));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    script *sc = malloc(sizeof *sc);
    if (!sc)
        return 0;
    parse_script(sc, (const char *)data, size);
    buf b = {0};
    build(&b, sc);
    free_script(sc);
    free(sc);
    const char *dump = getenv("QPK_FUZZ_DUMP"); /* the GGUF written, for seeding fuzz_gguf */
    FILE *f = dump && !b.oom ? fopen(dump, "wb") : NULL;
    if (f)
        fwrite(b.p, 1, b.n, f), fclose(f);
    qpk_gguf *g = NULL;
    qpk_err e;
    if (b.oom)
        ;
    else if (qpk_gguf_open_memory(&g, b.p, b.n, &e) != QPK_OK && getenv("QPK_FUZZ_VERBOSE"))
        fprintf(stderr, "%s\n", e.msg);
    else if (g) {
        qpk_config cfg;
        const qpk_status s = qpk_gguf_qwen2(g, &cfg, &e);
        if (qpk_gguf_qwen2(g, &cfg, NULL) != s) /* the same outcome without an error struct */
            __builtin_trap();
        if (getenv("QPK_FUZZ_VERBOSE")) /* what each input came to, for writing seeds */
            fprintf(stderr, "%s\n", s == QPK_OK ? "passed" : e.msg);
        if (s == QPK_OK)
            check_passed(g, &cfg);
    }
    qpk_gguf_close(g);
    free(b.p);
    return 0;
}
