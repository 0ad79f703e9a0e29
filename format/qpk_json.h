/*
 * The strict JSON reader behind every JSON qpk reads (config.json, safetensors headers,
 * the index, tokenizer files, quantize configs, .qpk metadata). Strict as serde_json
 * (what `tokenizers` and safetensors parse with) is: RFC 8259 grammar, strings of valid
 * UTF-8 without raw control characters, surrogate escapes only in valid pairs. Stricter
 * in two points, both where parsers disagree: a key given twice in one object is refused
 * (cJSON keeps the first, Python and serde the last), and so is "\u0000" (C strings end
 * there: cJSON would silently truncate). Nesting is limited to QPK_JSON_MAX_DEPTH.
 *
 * qpk_json_parse validates a document and hands it to cJSON; the tokenizer also reads
 * its 11 MB vocabulary and merges straight from the text with the qpk_jr_ functions
 * (cJSON would cost a million mallocs there).
 */
#ifndef QPK_JSON_H
#define QPK_JSON_H

#include <cjson/cJSON.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qpk/format.h"

#define QPK_JSON_MAX_DEPTH 128

typedef struct qpk_jkey {
    size_t off, len; /* a decoded key in the reader's key buffer */
} qpk_jkey;

typedef struct qpk_jreader {
    const char *base; /* the whole document: messages give offsets from here */
    const char *p, *end;
    qpk_err *e;
    bool failed;       /* the first error is kept in e */
    qpk_status status; /* and its status here, for callers whose e may be NULL */
    const char *doc;   /* the document's name in messages ("JSON" when NULL) */
    /* The keys of the objects being skipped, for the duplicate check (qpk_jr_free releases them). */
    char *keys;
    size_t keys_cap, keys_used;
    qpk_jkey *kidx;
    size_t kidx_cap, kidx_used;
} qpk_jreader;

void qpk_jr_free(qpk_jreader *r);

/* Skips whitespace; returns the next byte without consuming it (0 at the end). */
static inline char qpk_jr_peek(qpk_jreader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t'))
        r->p++;
    return r->p < r->end ? *r->p : 0;
}
/* Consumes c after whitespace, or fails naming what was expected. */
bool qpk_jr_expect(qpk_jreader *r, char c, const char *what);
/* Skips one value of any type, validating it (keys of every object included). */
bool qpk_jr_skip(qpk_jreader *r, int depth);
/*
 * Skips the object or array at r->p by its brackets alone (strings honoured), without
 * validating its contents: for a value that a strict read will go over again. */
bool qpk_jr_skip_brackets(qpk_jreader *r);
/*
 * Reads a string (after whitespace, at its opening quote) and decodes it into *buf,
 * growing it with realloc (*cap bytes) as needed; *n gets the length. A NUL is written
 * after the string. Offsets into *buf stay valid; pointers may not.
 */
bool qpk_jr_string(qpk_jreader *r, char **buf, size_t *cap, size_t off, size_t *n);
/* Reads a non-negative integer (no fraction or exponent) no larger than max. */
bool qpk_jr_uint(qpk_jreader *r, uint64_t max, uint64_t *v, const char *what);

/* Records an error at the current position (first one wins); returns false. */
bool qpk_jr_fail(qpk_jreader *r, qpk_status s, const char *what);

/* Checks that s[0..n) is one strict JSON value with nothing but whitespace after it. doc names it in messages. */
qpk_status qpk_json_check(const char *doc, const char *s, size_t n, qpk_err *e);
/* qpk_config_to_json's object as a tree, for documents that embed it: its real numbers are
 * raw items, printed as the shortest text that reads back exactly (cJSON's own printing
 * may drop a last bit). NULL on OOM. */
cJSON *qpk_config_cjson(const qpk_config *c);
/* qpk_json_check, then cJSON's tree of it (*out; cJSON_Delete it). */
qpk_status qpk_json_parse(const char *doc, const char *s, size_t n, cJSON **out, qpk_err *e);

#endif
