/*
 * Encoding and decoding over a loaded tokenizer (load.c builds it): added tokens first,
 * then NFC, the Qwen2 pre-tokenizer and BPE on the text between them; decoding through
 * the byte-level alphabet. Also the read-only accessors exporters use.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "pretok.h"

/* Encoder input limit: after U+FFFD repair and NFC (each at most triples the bytes) every
 * piece still fits the BPE loop's 32-bit positions. */
#define MAX_TEXT (512u * 1024u * 1024u)

/* NFC (when configured), pre-tokenization and BPE of text between added tokens. */
static qpk_status encode_text(const qpk_tokenizer *t, tok_work *w, const char *s, size_t n)
{
    if (n == 0)
        return QPK_OK;
    if (t->nfc && !qpk_nfc(s, n, &w->nfc, &s, &n))
        return QPK_E_NOMEM;
    for (size_t pos = 0; pos < n;) {
        size_t end = qpk_pretok_next(s, n, pos);
        if (!qpk_tok_bpe_piece(t, w, (const unsigned char *)s + pos, end - pos))
            return QPK_E_NOMEM;
        pos = end;
    }
    return QPK_OK;
}

/* The longest added token starting at s (its id and byte length), or -1. */
static int32_t added_at(const qpk_tokenizer *t, const unsigned char *s, size_t n, size_t *len)
{
    int32_t best = -1;
    uint32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = t->trie[node].child;
        while (c && t->trie[c].byte != s[i])
            c = t->trie[c].sibling;
        if (!c)
            break;
        node = c;
        if (t->trie[c].token >= 0)
            best = t->trie[c].token, *len = i + 1;
    }
    return best;
}

/*
 * Added tokens are found as tokenizers' Aho-Corasick LeftmostLongest does: the earliest
 * start wins, then the longest token there; the search resumes after the match. With
 * parse_special false a special token's match is dropped and its text stays ordinary
 * text; the search still resumes after it (encode_special_tokens does just that).
 */
static qpk_status encode_impl(const qpk_tokenizer *t, const char *text, size_t len,
                              bool parse_special, tok_work *w, qpk_err *e)
{
    if (len > MAX_TEXT)
        return qpk_err_setf(e, QPK_E_LIMIT, "text of %zu bytes, past the encoder's limit %u", len,
                            MAX_TEXT);
    if (qpk_utf8_valid_prefix(text, len) != len) {
        w->repaired = malloc(3 * len);
        if (!w->repaired)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        len = qpk_utf8_repair(text, len, w->repaired);
        text = w->repaired;
    }
    const unsigned char *s = (const unsigned char *)text;
    qpk_tok_cache_acquire(t, w);
    qpk_status st = QPK_OK;
    size_t gap = 0, i = 0;
    while (i < len && st == QPK_OK) {
        if (!t->n_added || !(t->added_first[s[i] >> 6] >> (s[i] & 63) & 1)) {
            i++;
            continue;
        }
        size_t mlen = 0;
        int32_t id = added_at(t, s + i, len - i, &mlen);
        if (id < 0) {
            i++;
            continue;
        }
        if (!parse_special && (t->flags[id] & TOK_SPECIAL)) {
            i += mlen;
            continue;
        }
        st = encode_text(t, w, text + gap, i - gap);
        if (st == QPK_OK && !qpk_tok_ids_push(&w->out, id))
            st = QPK_E_NOMEM;
        gap = i = i + mlen;
    }
    if (st == QPK_OK)
        st = encode_text(t, w, text + gap, len - gap);
    qpk_tok_cache_release(t, w);
    if (st == QPK_E_NOMEM)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory while encoding %zu bytes", len);
    return st;
}

qpk_status qpk_tokenizer_encode(const qpk_tokenizer *t, const char *text, size_t len,
                                bool parse_special, int32_t *ids, size_t cap, size_t *n,
                                qpk_err *e)
{
    if (!t || (!text && len) || !n)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "qpk_tokenizer_encode: NULL argument");
    *n = 0;
    tok_work w = {0};
    qpk_status s = encode_impl(t, text, len, parse_special, &w, e);
    if (s == QPK_OK) {
        *n = w.out.n;
        if (ids && cap) {
            memcpy(ids, w.out.v, (w.out.n < cap ? w.out.n : cap) * sizeof *ids);
            if (cap < w.out.n)
                s = qpk_err_setf(e, QPK_E_LIMIT, "buffer of %zu ids, %zu needed", cap, w.out.n);
        }
    }
    qpk_tok_work_free(&w);
    return s;
}

qpk_status qpk_tokenizer_encode_alloc(const qpk_tokenizer *t, const char *text, size_t len,
                                      bool parse_special, int32_t **ids, size_t *n, qpk_err *e)
{
    if (!t || (!text && len) || !ids || !n)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "qpk_tokenizer_encode_alloc: NULL argument");
    *ids = NULL;
    *n = 0;
    tok_work w = {0};
    qpk_status s = encode_impl(t, text, len, parse_special, &w, e);
    if (s == QPK_OK && w.out.n) {
        *n = w.out.n;
        *ids = w.out.v; /* hand the array over (it may be larger than needed) */
        w.out.v = NULL;
    }
    qpk_tok_work_free(&w);
    return s;
}

/*
 * One token through the ByteLevel decoder: its characters back to bytes when every one of
 * them is in the byte-level alphabet, otherwise its UTF-8 text as it is. Writes to out
 * when out is not NULL; returns the byte count.
 */
static size_t decode_token(const char *str, size_t n, char *out)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t chars = 0;
    for (size_t i = 0; i < n; chars++) {
        size_t l;
        if (qpk_tok_char_byte(qpk_utf8_get(s + i, &l)) < 0) {
            if (out)
                memcpy(out, str, n);
            return n;
        }
        i += l;
    }
    if (out)
        for (size_t i = 0, k = 0; i < n; k++) {
            size_t l;
            out[k] = (char)qpk_tok_char_byte(qpk_utf8_get(s + i, &l));
            i += l;
        }
    return chars;
}

qpk_status qpk_tokenizer_decode(const qpk_tokenizer *t, const int32_t *ids, size_t n,
                                bool skip_special, char *out, size_t cap, size_t *len,
                                qpk_err *e)
{
    if (!t || (!ids && n) || !len)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "qpk_tokenizer_decode: NULL argument");
    *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || (uint32_t)id >= t->n_ids || t->str[id].off == NO_STR)
            return qpk_err_setf(e, QPK_E_VALUE, "id %d (position %zu) is not a token", id, i);
        if (!(skip_special && (t->flags[id] & TOK_SPECIAL)))
            total += decode_token(t->pool + t->str[id].off, t->str[id].len, NULL);
    }
    *len = total;
    if (!out || cap == 0)
        return QPK_OK;
    if (cap < total)
        return qpk_err_setf(e, QPK_E_LIMIT, "buffer of %zu bytes, %zu needed", cap, total);
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        if (!(skip_special && (t->flags[ids[i]] & TOK_SPECIAL)))
            o += decode_token(t->pool + t->str[ids[i]].off, t->str[ids[i]].len, out + o);
    if (cap > total)
        out[total] = 0;
    return QPK_OK;
}

/* ---------------------------------------------------------------- accessors */

size_t qpk_tokenizer_n_tokens(const qpk_tokenizer *t)
{
    return t ? t->n_ids : 0;
}

qpk_status qpk_tokenizer_fits(const qpk_tokenizer *t, int64_t vocab, qpk_err *e)
{
    if (vocab < 0 || qpk_tokenizer_n_tokens(t) > (uint64_t)vocab)
        return qpk_err_setf(e, QPK_E_MISMATCH, "the tokenizer has %zu tokens, more than the vocabulary's %lld rows",
                            qpk_tokenizer_n_tokens(t), (long long)vocab);
    return QPK_OK;
}

const char *qpk_tokenizer_token(const qpk_tokenizer *t, int32_t id, size_t *len)
{
    if (len)
        *len = 0;
    if (!t || id < 0 || (uint32_t)id >= t->n_ids || t->str[id].off == NO_STR)
        return NULL;
    if (len)
        *len = t->str[id].len;
    return t->pool + t->str[id].off;
}

qpk_token_kind qpk_tokenizer_token_kind(const qpk_tokenizer *t, int32_t id)
{
    if (!t || id < 0 || (uint32_t)id >= t->n_ids || t->str[id].off == NO_STR)
        return QPK_TOKEN_NONE;
    uint8_t f = t->flags[id];
    return f & TOK_SPECIAL ? QPK_TOKEN_SPECIAL : f & TOK_ADDED ? QPK_TOKEN_ADDED : QPK_TOKEN_NORMAL;
}

size_t qpk_tokenizer_n_merges(const qpk_tokenizer *t)
{
    return t ? t->n_merges : 0;
}

void qpk_tokenizer_merge(const qpk_tokenizer *t, size_t i, const char **a, size_t *alen,
                         const char **b, size_t *blen)
{
    const char *sa = NULL, *sb = NULL;
    size_t la = 0, lb = 0;
    if (t && i < t->n_merges) {
        sa = qpk_tokenizer_token(t, (int32_t)t->merges[i][0], &la);
        sb = qpk_tokenizer_token(t, (int32_t)t->merges[i][1], &lb);
    }
    if (a)
        *a = sa;
    if (alen)
        *alen = la;
    if (b)
        *b = sb;
    if (blen)
        *blen = lb;
}

int32_t qpk_tokenizer_find(const qpk_tokenizer *t, const char *s, size_t len)
{
    if (!t || (!s && len))
        return -1;
    return qpk_tok_map_find(t, s ? s : "", len);
}

const char *qpk_tokenizer_unicode_version(void)
{
    return qpk_uc_version;
}
