/*
 * The Qwen2 Split regex, alternative by alternative. Each block below says which part of
 * the pattern it is and how Oniguruma's backtracking resolves it, since that is what
 * decides where a piece ends.
 */
#include "pretok.h"

#include "unicode.h"

const char qpk_pretok_qwen2_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static inline uint32_t at(const unsigned char *s, size_t pos, size_t *len)
{
    return qpk_utf8_get(s + pos, len);
}

/* End of the run of \p{L} starting at pos. */
static size_t letters_end(const unsigned char *s, size_t n, size_t pos)
{
    while (pos < n) {
        size_t l;
        if (s[pos] < 0x80) {
            unsigned char c = (unsigned char)(s[pos] | 0x20);
            if (c < 'a' || c > 'z')
                break;
            pos++;
            continue;
        }
        if (!(qpk_uc_prop(at(s, pos, &l)) & QPK_UC_L))
            break;
        pos += l;
    }
    return pos;
}

static inline int lower_ascii(uint32_t c)
{
    return c < 0x80 ? (int)(c | 0x20) : -1;
}

/*
 * (?i:'s|'t|'re|'ve|'m|'ll|'d). Under (?i) Oniguruma matches a pattern letter by Unicode
 * case folding (CaseFolding.txt, simple and full). Of the characters that fold to one
 * of s t r e v m l d, only U+017F LATIN SMALL LETTER LONG S (-> s) is not ASCII, so "'ſ"
 * is a contraction. Multi-character folds (U+00DF -> ss, U+FB06 -> st, U+1E97 -> t +
 * U+0308) cannot match a single pattern letter, and U+212A KELVIN SIGN folds to k, which
 * no alternative has. Returns the end of the match, or 0.
 */
static size_t contraction(const unsigned char *s, size_t n, size_t pos)
{
    size_t l1, p = pos + 1;
    if (p >= n)
        return 0;
    uint32_t c1 = at(s, p, &l1);
    int a = lower_ascii(c1);
    if (a == 's' || a == 't' || a == 'm' || a == 'd' || c1 == 0x17F)
        return p + l1;
    if ((a == 'r' || a == 'v' || a == 'l') && p + 1 < n) {
        int b = lower_ascii(s[p + 1]);
        if ((a == 'l' && b == 'l') || (a != 'l' && b == 'e'))
            return p + 2;
    }
    return 0;
}

size_t qpk_pretok_next(const char *str, size_t n, size_t pos)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t l0;
    uint32_t c0 = at(s, pos, &l0);
    uint8_t p0 = qpk_uc_prop(c0);
    size_t next = pos + l0;

    if (c0 == '\'') {
        size_t e = contraction(s, n, pos);
        if (e)
            return e;
    }

    /* [^\r\n\p{L}\p{N}]?\p{L}+ : a letter run, optionally led by one character that is
     * neither a newline, a letter nor a number (a space, a tab, punctuation...). When
     * c0 is a letter the optional class cannot take it, so the run starts at c0. */
    if (p0 & QPK_UC_L)
        return letters_end(s, n, pos);
    if (c0 != '\r' && c0 != '\n' && !(p0 & QPK_UC_N) && next < n) {
        size_t l1;
        if (qpk_uc_prop(at(s, next, &l1)) & QPK_UC_L)
            return letters_end(s, n, next);
    }

    /* \p{N} : one number character. */
    if (p0 & QPK_UC_N)
        return next;

    /* " ?[^\s\p{L}\p{N}]+[\r\n]*" : symbols, optionally after one U+0020, then any CR/LF.
     * Without the space the class would have to take the space itself, which it cannot,
     * so the only way in is the run. Nothing after the greedy runs can fail. */
    {
        size_t q = c0 == ' ' ? next : pos, r = q;
        while (r < n) {
            size_t l;
            if (qpk_uc_prop(at(s, r, &l)) & (QPK_UC_WS | QPK_UC_L | QPK_UC_N))
                break;
            r += l;
        }
        if (r > q) {
            while (r < n && (s[r] == '\r' || s[r] == '\n'))
                r++;
            return r;
        }
    }

    /* Only whitespace is left (every other character matched above). Let W be the
     * maximal whitespace run at pos. */
    size_t j = pos, last_nl = (size_t)-1, last_start = pos;
    while (j < n) {
        size_t l;
        uint32_t c = at(s, j, &l);
        if (!(qpk_uc_prop(c) & QPK_UC_WS))
            break;
        if (c == '\r' || c == '\n')
            last_nl = j;
        last_start = j;
        j += l;
    }
    /* \s*[\r\n]+ : \s* first takes all of W and gives characters back until [\r\n]+ can
     * start, i.e. at W's last CR/LF; the run after it is that one character, since no
     * CR/LF follows it inside W and W ends at a non-space. */
    if (last_nl != (size_t)-1)
        return last_nl + 1;
    /* \s+(?!\S) : all of W at the end of the text; otherwise W less its last character,
     * which leaves whitespace (that character) ahead, as the lookahead wants. */
    if (j == n)
        return n;
    if (last_start > pos)
        return last_start;
    /* \s+ : a single whitespace character before a non-space. */
    return next;
}
