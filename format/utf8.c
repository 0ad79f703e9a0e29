/*
 * UTF-8, the one implementation every qpk reader and printer uses: well-formedness as
 * Unicode's Table 3-7 defines it, and repair as Python's decode(errors="replace") does.
 */
#include <stdlib.h>
#include <string.h>

#include "qpk_private.h"

size_t qpk_utf8_put(uint32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/*
 * The well-formed sequences of Table 3-7: for a lead byte, the total length and the
 * range of the second byte (later bytes are always 80..BF). 0 for a byte that cannot
 * start a sequence.
 */
static int utf8_lead(unsigned char b, unsigned char *lo, unsigned char *hi)
{
    *lo = 0x80, *hi = 0xBF;
    if (b < 0x80)
        return 1;
    if (b < 0xC2)
        return 0;
    if (b < 0xE0)
        return 2;
    if (b < 0xF0) {
        if (b == 0xE0)
            *lo = 0xA0;
        if (b == 0xED)
            *hi = 0x9F;
        return 3;
    }
    if (b < 0xF5) {
        if (b == 0xF0)
            *lo = 0x90;
        if (b == 0xF4)
            *hi = 0x8F;
        return 4;
    }
    return 0;
}

/* Bytes of the well-formed prefix of the sequence at s (0: the lead byte alone is bad). */
static size_t utf8_seq(const unsigned char *s, size_t n, int *need)
{
    unsigned char lo, hi;
    *need = utf8_lead(s[0], &lo, &hi);
    if (*need <= 1)
        return (size_t)*need;
    size_t k = 1;
    if (k < n && s[k] >= lo && s[k] <= hi) {
        k++;
        while (k < (size_t)*need && k < n && s[k] >= 0x80 && s[k] <= 0xBF)
            k++;
    }
    return k;
}

size_t qpk_utf8_char(const char *s, size_t n)
{
    int need = 0;
    size_t k = n ? utf8_seq((const unsigned char *)s, n, &need) : 0;
    return need > 0 && k == (size_t)need ? k : 0;
}

size_t qpk_utf8_valid_prefix(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int need;
        size_t k = utf8_seq(s + i, n - i, &need);
        if (need == 0 || k != (size_t)need)
            break;
        i += k;
    }
    return i;
}

size_t qpk_utf8_repair(const char *str, size_t n, char *out)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, o = 0;
    while (i < n) {
        int need;
        size_t k = utf8_seq(s + i, n - i, &need);
        if (need > 0 && k == (size_t)need) {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
            continue;
        }
        /* A bad lead byte, or a truncated sequence: its maximal subpart (at least the lead
         * byte) becomes one U+FFFD, and decoding resumes at the byte that did not fit. */
        o += qpk_utf8_put(0xFFFD, out + o);
        i += k ? k : 1;
    }
    return o;
}


char *qpk_utf8_dup(const char *s)
{
    size_t n = strlen(s);
    char *out = malloc(3 * n + 1);
    if (out)
        out[qpk_utf8_repair(s, n, out)] = 0;
    return out;
}
