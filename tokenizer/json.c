/* The strict JSON reader of json.h. */
#include "json.h"

#include <stdlib.h>
#include <string.h>

#include "unicode.h"

bool jr_fail(jreader *r, qpk_status s, const char *what)
{
    if (!r->failed)
        qpk_err_setf(r->e, s, "tokenizer.json: %s at byte %td", what, r->p - r->base);
    r->failed = true;
    r->p = r->end; /* every later read fails fast */
    return false;
}

bool jr_expect(jreader *r, char c, const char *what)
{
    if (jr_peek(r) != c)
        return r->failed ? false : jr_fail(r, QPK_E_CORRUPT, what);
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
static bool body(jreader *r, const char *s, const char *q, char *out, size_t *n)
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
                return jr_fail(r, QPK_E_CORRUPT, "invalid UTF-8 in a string");
            }
            if (out)
                memcpy(out + o, s, k);
            o += k, s += k;
            continue;
        }
        if (c < 0x20) {
            r->p = s;
            return jr_fail(r, QPK_E_CORRUPT, "raw control character in a string");
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
            return jr_fail(r, QPK_E_CORRUPT, "invalid escape in a string");
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
            return jr_fail(r, QPK_E_CORRUPT, "bad \\u escape in a string");
        if (cp == -2)
            return jr_fail(r, QPK_E_CORRUPT, "unpaired surrogate escape in a string");
        if (cp == 0)
            return jr_fail(r, QPK_E_UNSUPPORTED, "\\u0000 in a string (NUL is not supported)");
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

bool jr_string(jreader *r, char **buf, size_t *cap, size_t off, size_t *n)
{
    if (jr_peek(r) != '"')
        return r->failed ? false : jr_fail(r, QPK_E_CORRUPT, "expected a string");
    const char *s = r->p + 1, *q = string_end(s, r->end);
    if (!q)
        return jr_fail(r, QPK_E_CORRUPT, "unterminated string");
    size_t raw = (size_t)(q - s);
    if (buf && off + raw + 1 > *cap) {
        size_t c = *cap ? *cap : 4096;
        while (c < off + raw + 1)
            c *= 2;
        char *b = realloc(*buf, c);
        if (!b)
            return jr_fail(r, QPK_E_NOMEM, "out of memory");
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

bool jr_skip_brackets(jreader *r)
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
    return jr_fail(r, QPK_E_CORRUPT, "unterminated object or array");
}

static bool digits(jreader *r)
{
    const char *s = r->p;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
        r->p++;
    return r->p > s;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool number(jreader *r)
{
    if (r->p < r->end && *r->p == '-')
        r->p++;
    const char *int_start = r->p;
    if (!digits(r) || (*int_start == '0' && r->p - int_start > 1))
        return jr_fail(r, QPK_E_CORRUPT, "malformed number");
    if (r->p < r->end && *r->p == '.') {
        r->p++;
        if (!digits(r))
            return jr_fail(r, QPK_E_CORRUPT, "malformed number");
    }
    if (r->p < r->end && (*r->p | 0x20) == 'e') {
        r->p++;
        if (r->p < r->end && (*r->p == '+' || *r->p == '-'))
            r->p++;
        if (!digits(r))
            return jr_fail(r, QPK_E_CORRUPT, "malformed number");
    }
    return true;
}

bool jr_uint(jreader *r, uint64_t max, uint64_t *v, const char *what)
{
    char c = jr_peek(r);
    const char *s = r->p;
    if (c != '-' && (c < '0' || c > '9'))
        return r->failed ? false : jr_fail(r, QPK_E_CORRUPT, what);
    if (!number(r))
        return false;
    uint64_t x = 0;
    bool big = false;
    for (const char *d = s; d < r->p; d++) {
        if (*d < '0' || *d > '9') { /* a sign, a fraction or an exponent */
            r->p = s;
            return jr_fail(r, QPK_E_CORRUPT, what);
        }
        x = x * 10 + (uint64_t)(*d - '0');
        if (x > max)
            big = true, x = max;
    }
    if (big) {
        r->p = s;
        return jr_fail(r, QPK_E_LIMIT, what);
    }
    *v = x;
    return true;
}

static bool literal(jreader *r, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, w, n) != 0)
        return jr_fail(r, QPK_E_CORRUPT, "unexpected character");
    r->p += n;
    return true;
}

bool jr_skip(jreader *r, int depth)
{
    char c = jr_peek(r);
    if (depth > JR_MAX_DEPTH)
        return jr_fail(r, QPK_E_LIMIT, "values nested too deeply");
    switch (c) {
    case '"':
        return jr_string(r, NULL, NULL, 0, NULL);
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
        if (jr_peek(r) == close) {
            r->p++;
            return true;
        }
        for (;;) {
            if (c == '{' && (!jr_string(r, NULL, NULL, 0, NULL) || !jr_expect(r, ':', "expected ':'")))
                return false;
            if (!jr_skip(r, depth + 1))
                return false;
            char d = jr_peek(r);
            if (d != ',' && d != close)
                return r->failed ? false
                                 : jr_fail(r, QPK_E_CORRUPT,
                                           c == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
            r->p++;
            if (d == close)
                return true;
        }
    }
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return number(r);
        if (r->failed)
            return false;
        return jr_fail(r, QPK_E_CORRUPT, c ? "unexpected character" : "unexpected end");
    }
}
