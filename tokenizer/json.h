/*
 * A strict, allocation-free JSON reader for tokenizer.json. cJSON reads the small parts
 * of the file; its vocabulary and merges (300,000 entries, ~11 MB for Qwen) would cost
 * cJSON a million mallocs, so this reader validates the whole document in one pass, finds
 * those two values, and load.c then reads them straight into the tokenizer's tables.
 *
 * Strict as serde_json (what `tokenizers` parses with) is: RFC 8259 grammar, strings of
 * valid UTF-8 without raw control characters, surrogate escapes only in valid pairs.
 * Stricter in one point: "\u0000" is refused (a NUL in a token string is not supported).
 * Nesting is limited to JR_MAX_DEPTH (cJSON, which reads the rest, allows 1000).
 */
#ifndef QPK_TOKENIZER_JSON_H
#define QPK_TOKENIZER_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qpk/format.h"

#define JR_MAX_DEPTH 128

typedef struct jreader {
    const char *base; /* the whole document: messages give offsets from here */
    const char *p, *end;
    qpk_err *e;
    bool failed; /* the first error is kept in e */
} jreader;

/* Skips whitespace; returns the next byte without consuming it (0 at the end). */
static inline char jr_peek(jreader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t'))
        r->p++;
    return r->p < r->end ? *r->p : 0;
}
/* Consumes c after whitespace, or fails naming what was expected. */
bool jr_expect(jreader *r, char c, const char *what);
/* Skips one value of any type, validating it. */
bool jr_skip(jreader *r, int depth);
/*
 * Skips the object or array at r->p by its brackets alone (strings honoured), without
 * validating its contents: for a value that a strict read will go over again. */
bool jr_skip_brackets(jreader *r);
/*
 * Reads a string (after whitespace, at its opening quote) and decodes it into *buf,
 * growing it with realloc (*cap bytes) as needed; *n gets the length. A NUL is written
 * after the string. Offsets into *buf stay valid; pointers may not.
 */
bool jr_string(jreader *r, char **buf, size_t *cap, size_t off, size_t *n);
/* Reads a non-negative integer (no fraction or exponent) no larger than max. */
bool jr_uint(jreader *r, uint64_t max, uint64_t *v, const char *what);

/* Records an error at the current position (first one wins); returns false. */
bool jr_fail(jreader *r, qpk_status s, const char *what);

#endif
