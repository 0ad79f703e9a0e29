/*
 * qpk/tokenizer.h - the Qwen tokenizer (Qwen1.5 / Qwen2 tokenizer.json: byte-level BPE),
 * reimplemented exactly: the ids are those Hugging Face `tokenizers` gives for
 * `encode(text, add_special_tokens=False)`.
 *
 * The pipeline, as in `tokenizers`:
 *   1. added tokens (<|endoftext|>, <|im_start|>, ...) are found in the raw text,
 *      leftmost-longest, and become their ids directly;
 *   2. the text between them is normalized (NFC, or not at all);
 *   3. pre-tokenized by Qwen2's Split regex into pieces (a hand-written matcher with
 *      Oniguruma's semantics: no regex library);
 *   4. each piece's UTF-8 bytes become GPT-2 byte-level symbols and are merged by BPE
 *      (lowest merge rank first, leftmost first among equal ranks).
 *
 * A tokenizer.json is untrusted input: every size, id, merge and flag is checked, and
 * anything qpk does not implement exactly is refused with a message naming it rather
 * than tokenized approximately. Accepted: normalizer NFC or null; pre_tokenizer
 * Sequence[Split(the Qwen2 regex, Isolated, invert false), ByteLevel(add_prefix_space
 * false, use_regex false)]; decoder ByteLevel; model BPE without dropout or
 * byte_fallback, with "a b" or ["a", "b"] merges; added tokens with lstrip, rstrip,
 * single_word and normalized all false. truncation, padding and post_processor are
 * ignored: they never change the ids of an encode without special tokens added (and
 * transformers overrides truncation and padding on every call anyway).
 *
 * A loaded tokenizer is immutable apart from an internal piece cache: any number of
 * threads may encode and decode with one tokenizer at once (one of them at a time uses
 * the cache; the others run uncached, with identical results).
 *
 * Conventions as in qpk/format.h: qpk_status returns, an optional qpk_err, nothing
 * prints or aborts.
 */
#ifndef QPK_TOKENIZER_H
#define QPK_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qpk/format.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qpk_tokenizer qpk_tokenizer;

/* Limits on what a tokenizer.json may ask for (QPK_E_LIMIT past them). */
#define QPK_TOKENIZER_MAX_JSON (1024u * 1024u * 1024u) /* bytes of tokenizer.json */
#define QPK_TOKENIZER_MAX_ID ((1 << 24) - 1)           /* largest token id */
#define QPK_TOKENIZER_MAX_TOKEN 65535                  /* bytes in one token string */

/*
 * Parses tokenizer.json text (len bytes, not NUL-terminated) and builds the tokenizer.
 * Refuses, with a message naming it: invalid JSON; another normalizer, pre-tokenizer,
 * regex, decoder or model type; dropout, byte_fallback, a continuing_subword_prefix or
 * end_of_word_suffix; added-token flags it cannot honour; ids that are negative, past
 * QPK_TOKENIZER_MAX_ID or given twice; a vocabulary missing one of the 256 byte-level
 * symbols; merges naming unknown tokens, whose concatenation is not a token, or repeated;
 * added-token ids other than those `tokenizers` would assign them (it renumbers silently
 * with a warning; we would rather not guess); strings with \u0000 or invalid UTF-8.
 * Statuses: QPK_E_CORRUPT (malformed), QPK_E_UNSUPPORTED (valid but not implemented),
 * QPK_E_LIMIT, QPK_E_NOMEM, QPK_E_INVALID_ARG.
 */
QPK_API qpk_status qpk_tokenizer_load(qpk_tokenizer **out, const char *json, size_t len, qpk_err *e);

QPK_API void qpk_tokenizer_free(qpk_tokenizer *t); /* NULL-safe */

/*
 * Encodes text (len bytes of UTF-8) into ids, as `tokenizers` does for
 * encode(text, add_special_tokens=False): no BOS/EOS is ever added.
 *
 * parse_special: true is the `tokenizers` default: added-token strings in the text become
 * their ids. false is `encode_special_tokens=True` (transformers' split_special_tokens):
 * the strings of *special* added tokens are tokenized as ordinary text, so user text can
 * never forge <|im_start|>; non-special added tokens (special:false, e.g. <tool_call>) are
 * still matched, as in `tokenizers` (and llama.cpp's parse_special).
 *
 * Invalid UTF-8 never fails: each maximal ill-formed subsequence is replaced by U+FFFD
 * first, which is what Python's bytes.decode("utf-8", errors="replace") gives and so what
 * the HF tokenizer sees when such bytes are fed to it.
 *
 * Sizing: *n always gets the number of ids. ids == NULL or cap == 0 only measures (QPK_OK);
 * otherwise cap < *n fills the first cap ids and returns QPK_E_LIMIT. Encoding twice costs
 * twice: qpk_tokenizer_encode_alloc sizes and fills in one pass.
 */
QPK_API qpk_status qpk_tokenizer_encode(const qpk_tokenizer *t, const char *text, size_t len,
                                bool parse_special, int32_t *ids, size_t cap, size_t *n,
                                qpk_err *e);

/* As qpk_tokenizer_encode, into a malloc'd array (*ids; free() it; NULL when *n is 0). */
QPK_API qpk_status qpk_tokenizer_encode_alloc(const qpk_tokenizer *t, const char *text, size_t len,
                                      bool parse_special, int32_t **ids, size_t *n, qpk_err *e);

/*
 * Decodes ids into bytes as `tokenizers`' ByteLevel decoder does, before its final lossy
 * UTF-8 conversion: each token's characters map back to the bytes they stand for; a token
 * with a character outside the byte-level alphabet (an added token with a space, say)
 * contributes its UTF-8 text unchanged, as the decoder does. Added tokens are decoded by
 * the same rule (their printable-ASCII text maps to itself). skip_special drops special
 * added tokens (`skip_special_tokens=True`). The result may be invalid UTF-8 when the ids
 * split a character (HF would show U+FFFD there); concatenating the decodings of
 * consecutive id ranges gives the decoding of the whole.
 *
 * decode(encode(x)) is NFC(x) for valid UTF-8 x without added-token strings.
 *
 * Sizing as for encode, over bytes: *len gets the byte count (not counting a NUL);
 * out == NULL or cap == 0 measures; cap < *len is QPK_E_LIMIT; the output is
 * NUL-terminated when cap > *len. An id with no token is QPK_E_VALUE, naming it.
 */
QPK_API qpk_status qpk_tokenizer_decode(const qpk_tokenizer *t, const int32_t *ids, size_t n,
                                bool skip_special, char *out, size_t cap, size_t *len,
                                qpk_err *e);

/* ------------------------------------------------- the vocabulary, for exporters */

/* 1 + the largest id (vocabulary and added tokens); ids below it may still be holes. */
QPK_API size_t qpk_tokenizer_n_tokens(const qpk_tokenizer *t);
/* QPK_E_MISMATCH unless every id of t has a row in a vocabulary of `vocab` rows (what a model file must hold). */
QPK_API qpk_status qpk_tokenizer_fits(const qpk_tokenizer *t, int64_t vocab, qpk_err *e);

/*
 * The token's string as tokenizer.json spells it: the byte-level form for BPE tokens
 * ("Ġthe" for " the"), the content for added ones. NUL-terminated (it never contains a
 * NUL), owned by t. NULL for an id with no token or out of range.
 */
QPK_API const char *qpk_tokenizer_token(const qpk_tokenizer *t, int32_t id, size_t *len);

typedef enum qpk_token_kind {
    QPK_TOKEN_NONE,    /* no token has this id */
    QPK_TOKEN_NORMAL,  /* a BPE vocabulary token */
    QPK_TOKEN_SPECIAL, /* an added token with special:true (skipped by skip_special) */
    QPK_TOKEN_ADDED    /* an added token with special:false */
} qpk_token_kind;

/* An added token whose content is also a vocabulary token reports its added kind. */
QPK_API qpk_token_kind qpk_tokenizer_token_kind(const qpk_tokenizer *t, int32_t id);

/* Number of merges (lines starting with "#version" in the "a b" form are not merges). */
QPK_API size_t qpk_tokenizer_n_merges(const qpk_tokenizer *t);

/*
 * Merge of rank i (0 = applied first), as its two byte-level strings (NUL-terminated,
 * owned by t). i must be < qpk_tokenizer_n_merges(t); otherwise all four outputs are
 * NULL / 0.
 */
QPK_API void qpk_tokenizer_merge(const qpk_tokenizer *t, size_t i, const char **a, size_t *alen,
                         const char **b, size_t *blen);

/* Id of the token whose string (as qpk_tokenizer_token gives it) is exactly s, or -1. */
QPK_API int32_t qpk_tokenizer_find(const qpk_tokenizer *t, const char *s, size_t len);

/* The Unicode version of the NFC and character-class tables ("15.0.0"). */
QPK_API const char *qpk_tokenizer_unicode_version(void);

#ifdef __cplusplus
}
#endif
#endif /* QPK_TOKENIZER_H */
