/* The strict JSON reader of qpk_json.h. */
#include "qpk_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qpk_private.h"

bool qpk_jr_fail(qpk_jreader *r, qpk_status s, const char *what)
{
    if (!r->failed)
        r->status = qpk_err_setf(r->e, s, "%s: %s at byte %td", r->doc ? r->doc : "JSON", what, r->p - r->base);
    r->failed = true;
    r->p = r->end; /* every later read fails fast */
    return false;
}

bool qpk_jr_expect(qpk_jreader *r, char c, const char *what)
{
    if (qpk_jr_peek(r) != c)
        return r->failed ? false : qpk_jr_fail(r, QPK_E_CORRUPT, what);
    r->p++;
    return true;
}

static int hex4(const char *s)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0'
                : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (c | 0x20) - 'a' + 10
                                                         : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/*
 * Decodes the string body s..q (q at the closing quote) into out (NULL: only validate).
 * out needs q - s bytes: no escape decodes to more bytes than it is written with.
 */
static bool body(qpk_jreader *r, const char *s, const char *q, char *out, size_t *n)
{
    size_t o = 0;
    while (s < q) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c < 0x80 && c != '\\') {
            if (out)
                out[o] = (char)c;
            o++, s++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF && q - s >= 2 && (s[1] & 0xC0) == 0x80) {
            if (out) /* two-byte characters: every byte-level symbol past U+00A0 */
                out[o] = (char)c, out[o + 1] = s[1];
            o += 2, s += 2;
            continue;
        }
        if (c >= 0x80) {
            size_t k = qpk_utf8_char(s, (size_t)(q - s));
            if (!k) {
                r->p = s;
                return qpk_jr_fail(r, QPK_E_CORRUPT, "invalid UTF-8 in a string");
            }
            if (out)
                memcpy(out + o, s, k);
            o += k, s += k;
            continue;
        }
        if (c < 0x20) {
            r->p = s;
            return qpk_jr_fail(r, QPK_E_CORRUPT, "raw control character in a string");
        }
        /* an escape; the caller made sure a byte follows the backslash */
        char x = s[1], d;
        switch (x) {
        case '"': case '\\': case '/': d = x; break;
        case 'b': d = '\b'; break;
        case 'f': d = '\f'; break;
        case 'n': d = '\n'; break;
        case 'r': d = '\r'; break;
        case 't': d = '\t'; break;
        case 'u': d = 0; break;
        default:
            r->p = s;
            return qpk_jr_fail(r, QPK_E_CORRUPT, "invalid escape in a string");
        }
        if (x != 'u') {
            if (out)
                out[o] = d;
            o++, s += 2;
            continue;
        }
        int cp = q - s >= 6 ? hex4(s + 2) : -1;
        size_t used = 6;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            int lo = q - s >= 12 && s[6] == '\\' && s[7] == 'u' ? hex4(s + 8) : -1;
            cp = lo >= 0xDC00 && lo <= 0xDFFF ? 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00) : -2;
            used = 12;
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            cp = -2;
        }
        r->p = s;
        if (cp == -1)
            return qpk_jr_fail(r, QPK_E_CORRUPT, "bad \\u escape in a string");
        if (cp == -2)
            return qpk_jr_fail(r, QPK_E_CORRUPT, "unpaired surrogate escape in a string");
        if (cp == 0)
            return qpk_jr_fail(r, QPK_E_UNSUPPORTED, "\\u0000 in a string (NUL is not supported)");
        char tmp[4];
        size_t k = qpk_utf8_put((uint32_t)cp, tmp);
        if (out)
            memcpy(out + o, tmp, k);
        o += k, s += used;
    }
    *n = o;
    return true;
}

/* The closing quote of the string whose body starts at s, or NULL. */
static const char *string_end(const char *s, const char *end)
{
    while (s < end) {
        const char *q = memchr(s, '"', (size_t)(end - s));
        if (!q)
            return NULL;
        size_t bs = 0; /* an even run of backslashes before it leaves it unescaped */
        while (q - bs > s && q[-(ptrdiff_t)bs - 1] == '\\')
            bs++;
        if (bs % 2 == 0)
            return q;
        s = q + 1;
    }
    return NULL;
}

bool qpk_jr_string(qpk_jreader *r, char **buf, size_t *cap, size_t off, size_t *n)
{
    if (qpk_jr_peek(r) != '"')
        return r->failed ? false : qpk_jr_fail(r, QPK_E_CORRUPT, "expected a string");
    const char *s = r->p + 1, *q = string_end(s, r->end);
    if (!q)
        return qpk_jr_fail(r, QPK_E_CORRUPT, "unterminated string");
    size_t raw = (size_t)(q - s);
    if (buf && off + raw + 1 > *cap) {
        size_t c = *cap ? *cap : 4096;
        while (c < off + raw + 1)
            c *= 2;
        char *b = realloc(*buf, c);
        if (!b)
            return qpk_jr_fail(r, QPK_E_NOMEM, "out of memory");
        *buf = b, *cap = c;
    }
    size_t len = 0;
    if (!body(r, s, q, buf ? *buf + off : NULL, &len))
        return false;
    if (buf)
        (*buf)[off + len] = 0;
    if (n)
        *n = len;
    r->p = q + 1;
    return true;
}

bool qpk_jr_skip_brackets(qpk_jreader *r)
{
    int depth = 0;
    for (const char *p = r->p; p < r->end; p++) {
        char c = *p;
        if (c == '"') {
            p = string_end(p + 1, r->end);
            if (!p)
                break;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if ((c == '}' || c == ']') && --depth == 0) {
            r->p = p + 1;
            return true;
        }
    }
    return qpk_jr_fail(r, QPK_E_CORRUPT, "unterminated object or array");
}

static bool digits(qpk_jreader *r)
{
    const char *s = r->p;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
        r->p++;
    return r->p > s;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool number(qpk_jreader *r)
{
    if (r->p < r->end && *r->p == '-')
        r->p++;
    const char *int_start = r->p;
    if (!digits(r) || (*int_start == '0' && r->p - int_start > 1))
        return qpk_jr_fail(r, QPK_E_CORRUPT, "malformed number");
    if (r->p < r->end && *r->p == '.') {
        r->p++;
        if (!digits(r))
            return qpk_jr_fail(r, QPK_E_CORRUPT, "malformed number");
    }
    if (r->p < r->end && (*r->p | 0x20) == 'e') {
        r->p++;
        if (r->p < r->end && (*r->p == '+' || *r->p == '-'))
            r->p++;
        if (!digits(r))
            return qpk_jr_fail(r, QPK_E_CORRUPT, "malformed number");
    }
    return true;
}

bool qpk_jr_uint(qpk_jreader *r, uint64_t max, uint64_t *v, const char *what)
{
    char c = qpk_jr_peek(r);
    const char *s = r->p;
    if (c != '-' && (c < '0' || c > '9'))
        return r->failed ? false : qpk_jr_fail(r, QPK_E_CORRUPT, what);
    if (!number(r))
        return false;
    uint64_t x = 0;
    bool big = false;
    for (const char *d = s; d < r->p; d++) {
        if (*d < '0' || *d > '9') { /* a sign, a fraction or an exponent */
            r->p = s;
            return qpk_jr_fail(r, QPK_E_CORRUPT, what);
        }
        x = x * 10 + (uint64_t)(*d - '0');
        if (x > max)
            big = true, x = max;
    }
    if (big) {
        r->p = s;
        return qpk_jr_fail(r, QPK_E_LIMIT, what);
    }
    *v = x;
    return true;
}

static bool literal(qpk_jreader *r, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, w, n) != 0)
        return qpk_jr_fail(r, QPK_E_CORRUPT, "unexpected character");
    r->p += n;
    return true;
}

void qpk_jr_free(qpk_jreader *r)
{
    free(r->keys), free(r->kidx);
    r->keys = NULL, r->kidx = NULL;
    r->keys_cap = r->keys_used = r->kidx_cap = r->kidx_used = 0;
}

/* Reads the next key (decoded) onto the reader's key stack. */
static bool push_key(qpk_jreader *r)
{
    size_t n;
    if (!qpk_jr_string(r, &r->keys, &r->keys_cap, r->keys_used, &n))
        return false;
    if (r->kidx_used == r->kidx_cap) {
        size_t cap = r->kidx_cap ? 2 * r->kidx_cap : 64;
        qpk_jkey *k = realloc(r->kidx, cap * sizeof *k);
        if (!k)
            return qpk_jr_fail(r, QPK_E_NOMEM, "out of memory");
        r->kidx = k, r->kidx_cap = cap;
    }
    r->kidx[r->kidx_used++] = (qpk_jkey){r->keys_used, n};
    r->keys_used += n + 1;
    return true;
}

typedef struct key_view {
    const char *s;
    size_t len;
} key_view;

static int cmp_keys(const void *a, const void *b)
{
    const key_view *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* The keys of the object just closed (those above keys0 / kidx0) are distinct; pops them. */
static bool unique_keys(qpk_jreader *r, size_t keys0, size_t kidx0)
{
    size_t n = r->kidx_used - kidx0;
    bool ok = true;
    if (n > 1) {
        key_view small[16], *v = n <= 16 ? small : malloc(n * sizeof *v);
        if (!v)
            return qpk_jr_fail(r, QPK_E_NOMEM, "out of memory");
        for (size_t i = 0; i < n; i++)
            v[i] = (key_view){r->keys + r->kidx[kidx0 + i].off, r->kidx[kidx0 + i].len};
        qsort(v, n, sizeof *v, cmp_keys);
        for (size_t i = 1; i < n && ok; i++)
            if (!cmp_keys(&v[i - 1], &v[i])) {
                char what[128];
                snprintf(what, sizeof what, "key '%.64s' appears twice in one object", v[i].s);
                ok = qpk_jr_fail(r, QPK_E_CORRUPT, what);
            }
        if (v != small)
            free(v);
    }
    r->keys_used = keys0, r->kidx_used = kidx0;
    return ok;
}

bool qpk_jr_skip(qpk_jreader *r, int depth)
{
    char c = qpk_jr_peek(r);
    if (depth > QPK_JSON_MAX_DEPTH)
        return qpk_jr_fail(r, QPK_E_LIMIT, "values nested too deeply");
    switch (c) {
    case '"':
        return qpk_jr_string(r, NULL, NULL, 0, NULL);
    case 't':
        return literal(r, "true");
    case 'f':
        return literal(r, "false");
    case 'n':
        return literal(r, "null");
    case '{':
    case '[': {
        char close = c == '{' ? '}' : ']';
        r->p++;
        if (qpk_jr_peek(r) == close) {
            r->p++;
            return true;
        }
        const size_t keys0 = r->keys_used, kidx0 = r->kidx_used;
        for (;;) {
            if (c == '{' && (!push_key(r) || !qpk_jr_expect(r, ':', "expected ':'")))
                return false;
            if (!qpk_jr_skip(r, depth + 1))
                return false;
            char d = qpk_jr_peek(r);
            if (d != ',' && d != close)
                return r->failed ? false
                                 : qpk_jr_fail(r, QPK_E_CORRUPT,
                                               c == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
            r->p++;
            if (d == close)
                return c == '[' || unique_keys(r, keys0, kidx0);
        }
    }
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return number(r);
        if (r->failed)
            return false;
        return qpk_jr_fail(r, QPK_E_CORRUPT, c ? "unexpected character" : "unexpected end");
    }
}

qpk_status qpk_json_check(const char *doc, const char *s, size_t n, qpk_err *e)
{
    qpk_jreader r = {.base = s, .p = s, .end = s + n, .e = e, .doc = doc};
    bool ok = qpk_jr_skip(&r, 0);
    qpk_jr_free(&r);
    if (!ok)
        return r.status;
    if (qpk_jr_peek(&r) != 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s: bytes after the JSON value (byte %td)", doc ? doc : "JSON",
                            r.p - s);
    return QPK_OK;
}

qpk_status qpk_json_parse(const char *doc, const char *s, size_t n, cJSON **out, qpk_err *e)
{
    *out = NULL;
    QPK_TRY(qpk_json_check(doc, s, n, e));
    if (!(*out = cJSON_ParseWithLength(s, n)))
        return qpk_err_setf(e, QPK_E_NOMEM, "%s: out of memory", doc ? doc : "JSON");
    return QPK_OK;
}
