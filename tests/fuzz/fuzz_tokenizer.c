/*
 * libFuzzer target: arbitrary bytes through encode and decode with the fixture tokenizer
 * (QPK_FIXTURES or the build's fixture path), or a small one built here when the fixtures
 * are absent. The first byte picks parse_special / skip_special; the rest is the text.
 *
 * Checks, besides not crashing: sizing agrees with filling; a second encode (warm piece
 * cache) gives the same ids; and decode(encode(x)) is what a naive reimplementation of
 * the outer pipeline predicts: U+FFFD repair, added tokens found leftmost-longest by brute
 * force, NFC of the text between them.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../tokenizer/unicode.h"
#include "qpk/tokenizer.h"

#ifndef QPK_FIXTURES_DIR
#define QPK_FIXTURES_DIR "../shared/fixtures"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The small tokenizer: the 256 byte symbols (id = byte), a few merges, added tokens. */
static char *small_json(void)
{
    size_t cap = 16384, n = 0;
    char *j = malloc(cap);
    n += (size_t)snprintf(j + n, cap - n,
                          "{\"added_tokens\":[{\"id\":259,\"content\":\"<|a|>\",\"normalized\":false,"
                          "\"special\":true},{\"id\":260,\"content\":\"<|a|>b\",\"normalized\":false,"
                          "\"special\":true},{\"id\":261,\"content\":\"b<|\",\"normalized\":false,"
                          "\"special\":false}],\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":"
                          "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
                          "{\"Regex\":\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?"
                          "\\\\p{L}+|\\\\p{N}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|"
                          "\\\\s+(?!\\\\S)|\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false},"
                          "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]},"
                          "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{");
    for (int b = 0; b < 256; b++) {
        uint32_t cp = b <= 0x20 ? 0x100u + (uint32_t)b
                      : b >= 0x7F && b <= 0xA0 ? 0x121u + (uint32_t)(b - 0x7F)
                      : b == 0xAD             ? 0x143u
                                              : (uint32_t)b;
        j[n++] = '"';
        if (cp == '"' || cp == '\\')
            j[n++] = '\\';
        n += qpk_utf8_put(cp, j + n);
        n += (size_t)snprintf(j + n, cap - n, "\":%d,", b);
    }
    snprintf(j + n, cap - n,
             "\"th\":256,\"the\":257,\"\xC4\xA0the\":258},\"merges\":[\"t h\",\"th e\",\"\xC4\xA0 the\"]}}");
    return j;
}

/* Loaded once for the whole run, with the ids of its added tokens. */
static qpk_tokenizer *g_tok;
static int32_t g_added[1024];
static size_t g_n_added;
static bool g_first[256]; /* bytes that start an added token */

static qpk_tokenizer *tokenizer(void)
{
    if (g_tok)
        return g_tok;
    qpk_tokenizer *t;
    const char *dir = getenv("QPK_FIXTURES");
    char path[4096];
    snprintf(path, sizeof path, "%s/qwen-tiny-a/tokenizer.json", dir ? dir : QPK_FIXTURES_DIR);
    FILE *f = fopen(path, "rb");
    char *json = NULL;
    size_t len = 0;
    if (f) {
        fseek(f, 0, SEEK_END);
        len = (size_t)ftell(f);
        fseek(f, 0, SEEK_SET);
        json = malloc(len);
        if (json && fread(json, 1, len, f) != len)
            free(json), json = NULL;
        fclose(f);
    }
    if (!json) {
        json = small_json();
        len = strlen(json);
    }
    qpk_err e;
    if (qpk_tokenizer_load(&t, json, len, &e) != QPK_OK) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", e.msg);
        __builtin_trap();
    }
    free(json);
    for (size_t id = 0; id < qpk_tokenizer_n_tokens(t) && g_n_added < 1024; id++) {
        qpk_token_kind k = qpk_tokenizer_token_kind(t, (int32_t)id);
        if (k == QPK_TOKEN_SPECIAL || k == QPK_TOKEN_ADDED) {
            g_added[g_n_added++] = (int32_t)id;
            g_first[(unsigned char)qpk_tokenizer_token(t, (int32_t)id, NULL)[0]] = true;
        }
    }
    return g_tok = t;
}

/* The longest added token at s (its id), by brute force over all of them. */
static int32_t added_at(const qpk_tokenizer *t, const char *s, size_t n, size_t *len)
{
    int32_t best = -1;
    *len = 0;
    if (!g_first[(unsigned char)s[0]])
        return -1;
    for (size_t i = 0; i < g_n_added; i++) {
        size_t l;
        const char *c = qpk_tokenizer_token(t, g_added[i], &l);
        if (l <= n && l > *len && memcmp(c, s, l) == 0)
            best = g_added[i], *len = l;
    }
    return best;
}

static void append(char **buf, size_t *n, const char *s, size_t l)
{
    memcpy(*buf + *n, s, l);
    *n += l;
}

/* decode(encode(text)) as the pipeline's definition gives it. */
static char *expected(const qpk_tokenizer *t, const char *text, size_t len, bool special, bool skip,
                      size_t *out_len)
{
    char *fixed = malloc(3 * len + 1);
    len = qpk_utf8_repair(text, len, fixed);
    char *out = malloc(3 * len + 1); /* NFC at most triples; added tokens keep their length */
    size_t o = 0, gap = 0, i = 0;
    qpk_nfc_buf b = {0};
    const char *r;
    size_t rn;
    while (i <= len) {
        size_t ml = 0;
        int32_t id = i < len ? added_at(t, fixed + i, len - i, &ml) : -1;
        if (i < len && (id < 0 || (!special && qpk_tokenizer_token_kind(t, id) == QPK_TOKEN_SPECIAL))) {
            i += id < 0 ? 1 : ml;
            continue;
        }
        if (!qpk_nfc(fixed + gap, i - gap, &b, &r, &rn))
            __builtin_trap();
        append(&out, &o, r, rn);
        if (i == len)
            break;
        size_t cl;
        const char *c = qpk_tokenizer_token(t, id, &cl);
        /* the fixture's added tokens are printable ASCII: they decode to themselves */
        if (!(skip && qpk_tokenizer_token_kind(t, id) == QPK_TOKEN_SPECIAL))
            append(&out, &o, c, cl);
        gap = i = i + ml;
    }
    qpk_nfc_buf_free(&b);
    free(fixed);
    *out_len = o;
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4096)
        return 0;
    const qpk_tokenizer *t = tokenizer();
    bool special = data[0] & 1, skip = data[0] & 2;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    int32_t *ids, *again;
    size_t n, n2, measured;
    qpk_err e;
    if (qpk_tokenizer_encode_alloc(t, text, len, special, &ids, &n, &e) != QPK_OK ||
        qpk_tokenizer_encode(t, text, len, special, NULL, 0, &measured, &e) != QPK_OK || measured != n)
        __builtin_trap();
    again = malloc((n ? n : 1) * sizeof *again);
    if (qpk_tokenizer_encode(t, text, len, special, again, n ? n : 1, &n2, &e) != QPK_OK || n2 != n ||
        (n && memcmp(ids, again, n * sizeof *ids) != 0))
        __builtin_trap();
    free(again);

    size_t dl, wl;
    if (qpk_tokenizer_decode(t, ids, n, skip, NULL, 0, &dl, &e) != QPK_OK)
        __builtin_trap();
    char *dec = malloc(dl + 1);
    if (qpk_tokenizer_decode(t, ids, n, skip, dec, dl + 1, &dl, &e) != QPK_OK || dec[dl] != 0)
        __builtin_trap();
    char *want = expected(t, text, len, special, skip, &wl);
    if (wl != dl || memcmp(want, dec, dl) != 0)
        __builtin_trap();
    free(want);
    free(dec);
    free(ids);
    return 0;
}
