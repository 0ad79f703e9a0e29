/*
 * NFC over the generated tables (UTF-8 itself is format/utf8.c's). NFC follows UAX #15 to the letter
 * (full canonical decomposition, canonical ordering, canonical composition with
 * blocking); tests/test_tokenizer.c checks it against every NFC column of the UCD's
 * NormalizationTest.txt when that file is installed.
 */
#include "unicode.h"

#include <stdlib.h>
#include <string.h>

/* Hangul syllable arithmetic (Unicode chapter 3.12). */
enum {
    S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7,
    L_COUNT = 19, V_COUNT = 21, T_COUNT = 28,
    N_COUNT = V_COUNT * T_COUNT, S_COUNT = L_COUNT * N_COUNT,
};

/* ------------------------------------------------------------------------ NFC */

void qpk_nfc_buf_free(qpk_nfc_buf *b)
{
    free(b->out);
    free(b->cp);
    memset(b, 0, sizeof *b);
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t c = *cap ? *cap : 256;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return false;
    *p = q;
    *cap = c;
    return true;
}

static bool append(qpk_nfc_buf *b, const char *s, size_t n)
{
    if (n == 0)
        return true;
    if (!grow((void **)&b->out, &b->out_cap, b->out_len + n, 1))
        return false;
    memcpy(b->out + b->out_len, s, n);
    b->out_len += n;
    return true;
}

/* Full canonical decomposition of cp into out (QPK_UC_MAX_DECOMP slots); returns the count. */
static size_t decompose(uint32_t cp, uint32_t *out)
{
    if (cp - S_BASE < S_COUNT) {
        uint32_t si = cp - S_BASE;
        out[0] = L_BASE + si / N_COUNT;
        out[1] = V_BASE + si % N_COUNT / T_COUNT;
        if (si % T_COUNT == 0)
            return 2;
        out[2] = T_BASE + si % T_COUNT;
        return 3;
    }
    if (cp >= 0xC0) { /* nothing below U+00C0 decomposes */
        size_t lo = 0, hi = qpk_uc_n_decomp;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (qpk_uc_decomp_cp[mid] < cp)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < qpk_uc_n_decomp && qpk_uc_decomp_cp[lo] == cp) {
            size_t a = qpk_uc_decomp_start[lo], z = qpk_uc_decomp_start[lo + 1];
            memcpy(out, qpk_uc_decomp_pool + a, (z - a) * sizeof *out);
            return z - a;
        }
    }
    out[0] = cp;
    return 1;
}

uint32_t qpk_uc_compose(uint32_t a, uint32_t b)
{
    if (a - L_BASE < L_COUNT && b - V_BASE < V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a - S_BASE < S_COUNT && (a - S_BASE) % T_COUNT == 0 && b - T_BASE - 1 < T_COUNT - 1)
        return a + (b - T_BASE);
    uint64_t key = (uint64_t)a << 42 | (uint64_t)b << 21;
    size_t lo = 0, hi = qpk_uc_n_comp;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (qpk_uc_comp[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < qpk_uc_n_comp && qpk_uc_comp[lo] >> 21 == key >> 21)
        return (uint32_t)(qpk_uc_comp[lo] & 0x1FFFFF);
    return 0;
}

/*
 * Stable sort of a run of non-starters by combining class. Runs are short in real text;
 * a long one (hostile input) gets a counting sort so the cost stays linear.
 */
static void sort_marks(uint32_t *c, size_t n, uint32_t *tmp)
{
    if (n <= 32) {
        for (size_t i = 1; i < n; i++) {
            uint32_t x = c[i];
            uint8_t k = qpk_uc_ccc(x);
            size_t j = i;
            for (; j > 0 && qpk_uc_ccc(c[j - 1]) > k; j--)
                c[j] = c[j - 1];
            c[j] = x;
        }
        return;
    }
    size_t start[257] = {0};
    for (size_t i = 0; i < n; i++)
        start[qpk_uc_ccc(c[i]) + 1]++;
    for (int k = 1; k <= 256; k++)
        start[k] += start[k - 1];
    for (size_t i = 0; i < n; i++)
        tmp[start[qpk_uc_ccc(c[i])]++] = c[i];
    memcpy(c, tmp, n * sizeof *c);
}

/* NFC of one chunk s[0..n) (valid UTF-8), appended to b->out. */
static bool nfc_chunk(const unsigned char *s, size_t n, qpk_nfc_buf *b)
{
    /* n bytes hold at most n code points, each decomposing into at most MAX_DECOMP; the
     * second half of the buffer is the sort's scratch. */
    size_t cap = n * QPK_UC_MAX_DECOMP;
    if (!grow((void **)&b->cp, &b->cp_cap, 2 * cap, sizeof *b->cp))
        return false;
    uint32_t *c = b->cp, *tmp = b->cp + cap;
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        size_t l;
        uint32_t cp = qpk_utf8_get(s + i, &l);
        m += decompose(cp, c + m);
        i += l;
    }
    for (size_t i = 0; i < m;) { /* canonical ordering */
        if (qpk_uc_ccc(c[i]) == 0) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < m && qpk_uc_ccc(c[j]) != 0)
            j++;
        sort_marks(c + i, j - i, tmp);
        i = j;
    }
    /* Canonical composition: c joins the last starter unless something between blocks it
     * (after ordering, the last kept mark has the largest class among them). */
    size_t out = 0, starter = SIZE_MAX;
    uint8_t last_cc = 0;
    for (size_t i = 0; i < m; i++) {
        uint32_t x = c[i];
        uint8_t cc = qpk_uc_ccc(x);
        if (starter != SIZE_MAX && (out - 1 == starter || (last_cc != 0 && last_cc < cc))) {
            uint32_t comp = qpk_uc_compose(c[starter], x);
            if (comp) {
                c[starter] = comp;
                continue;
            }
        }
        if (cc == 0)
            starter = out;
        last_cc = cc;
        c[out++] = x;
    }
    if (!grow((void **)&b->out, &b->out_cap, b->out_len + 4 * out, 1))
        return false;
    for (size_t i = 0; i < out; i++)
        b->out_len += qpk_utf8_put(c[i], b->out + b->out_len);
    return true;
}

bool qpk_nfc(const char *str, size_t n, qpk_nfc_buf *b, const char **res, size_t *res_len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, copied = 0, safe = 0;
    uint8_t last_cc = 0;
    bool changed = false;
    b->out_len = 0;
    while (i < n) {
        if (s[i] < 0x80) { /* ASCII: always a boundary */
            safe = i++;
            last_cc = 0;
            continue;
        }
        size_t l;
        uint32_t cp = qpk_utf8_get(s + i, &l);
        uint8_t qc = qpk_uc_prop(cp) & QPK_UC_QC_MASK, cc = qpk_uc_ccc(cp);
        if (qc == 0 && cc == 0) {
            safe = i;
            last_cc = 0;
            i += l;
            continue;
        }
        if (qc == 0 && last_cc <= cc) {
            last_cc = cc;
            i += l;
            continue;
        }
        /* Quick check failed: normalize from the last boundary to the next one. */
        size_t end = i + l;
        while (end < n) {
            uint32_t x = qpk_utf8_get(s + end, &l);
            if (qpk_uc_ccc(x) == 0 && (qpk_uc_prop(x) & QPK_UC_QC_MASK) == 0)
                break;
            end += l;
        }
        if (!append(b, str + copied, safe - copied) || !nfc_chunk(s + safe, end - safe, b))
            return false;
        changed = true;
        copied = safe = i = end;
        last_cc = 0;
    }
    if (!changed) {
        *res = str;
        *res_len = n;
        return true;
    }
    if (!append(b, str + copied, n - copied))
        return false;
    *res = b->out;
    *res_len = b->out_len;
    return true;
}
