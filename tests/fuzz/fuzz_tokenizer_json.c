/*
 * libFuzzer target: arbitrary bytes as tokenizer.json. Whatever loads must then encode and
 * decode without trouble, every id it reports must have a string that finds it again, and
 * every merge must name tokens; whatever fails must say why.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qpk/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void exercise(const qpk_tokenizer *t)
{
    static const char *const texts[] = {
        "Hello, my dog's cute!\r\n\n  x", "<s>x<|a|>b<|im_start|>", "ab abc aab 12\xCC\x81\xC3\xA9",
        "\xF0\x9F\x98\x80 \xE4\xBD\xA0\xE5\xA5\xBD\xff", "",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        for (int special = 0; special < 2; special++) {
            int32_t *ids;
            size_t n, len;
            qpk_err e;
            if (qpk_tokenizer_encode_alloc(t, texts[i], strlen(texts[i]), special, &ids, &n, &e) != QPK_OK)
                __builtin_trap();
            for (size_t k = 0; k < n; k++)
                if (qpk_tokenizer_token(t, ids[k], NULL) == NULL)
                    __builtin_trap();
            if (qpk_tokenizer_decode(t, ids, n, special, NULL, 0, &len, &e) != QPK_OK)
                __builtin_trap();
            char *out = malloc(len + 1);
            if (qpk_tokenizer_decode(t, ids, n, special, out, len + 1, &len, &e) != QPK_OK)
                __builtin_trap();
            free(out);
            free(ids);
        }
    }
    size_t n = qpk_tokenizer_n_tokens(t);
    for (size_t id = 0; id < n && id < 4096; id++) {
        size_t len;
        const char *s = qpk_tokenizer_token(t, (int32_t)id, &len);
        qpk_token_kind k = qpk_tokenizer_token_kind(t, (int32_t)id);
        if ((s == NULL) != (k == QPK_TOKEN_NONE) || (s && s[len] != 0))
            __builtin_trap();
        if (s && qpk_tokenizer_find(t, s, len) != (int32_t)id)
            __builtin_trap();
    }
    for (size_t i = 0; i < qpk_tokenizer_n_merges(t) && i < 4096; i++) {
        const char *a, *b;
        size_t al, bl;
        qpk_tokenizer_merge(t, i, &a, &al, &b, &bl);
        if (!a || !b || qpk_tokenizer_find(t, a, al) < 0 || qpk_tokenizer_find(t, b, bl) < 0)
            __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qpk_tokenizer *t = NULL;
    qpk_err e = {0};
    qpk_status s = qpk_tokenizer_load(&t, (const char *)data, size, &e);
    if (s != QPK_OK) {
        if (t != NULL || s >= QPK_STATUS_COUNT || e.status != s || e.msg[0] == 0)
            __builtin_trap();
        return 0;
    }
    exercise(t);
    qpk_tokenizer_free(t);
    return 0;
}
