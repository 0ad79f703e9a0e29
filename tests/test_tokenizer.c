/*
 * The Qwen tokenizer: UTF-8 repair and NFC (against the UCD's NormalizationTest.txt when
 * it is installed), the hand-written pre-tokenizer's piece boundaries, BPE and added
 * tokens on a tiny tokenizer built here, every malformed tokenizer.json with its exact
 * error, and on the fixture: eval_public's 52,493 ids from an independent implementation,
 * round trips over calib.txt, and edge cases whose ids were read off the vocabulary and
 * merges by hand (the comments say how).
 */
#include <pthread.h>
#include <stdint.h>

#include "../tokenizer/pretok.h"
#include "../tokenizer/unicode.h"
#include "fixtures.h"
#include "qpk/tokenizer.h"
#include "testhelp.h"
#include "testutil.h"

/* Encodes s (NUL-terminated) and compares with want (n ids). */
static int enc_is(const qpk_tokenizer *t, const char *s, bool special, const int32_t *want, size_t n)
{
    int32_t *ids;
    size_t got;
    qpk_err e = {0};
    if (qpk_tokenizer_encode_alloc(t, s, strlen(s), special, &ids, &got, &e) != QPK_OK) {
        fprintf(stderr, "encode failed: %s\n", e.msg);
        return 0;
    }
    int ok = got == n && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
    if (!ok) {
        fprintf(stderr, "  \"%s\": got", s);
        for (size_t i = 0; i < got; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "; want");
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d", want[i]);
        fputc('\n', stderr);
    }
    free(ids);
    return ok;
}
#define ENC(t, s, special, ...)                                                                    \
    CHECK(enc_is(t, s, special, (const int32_t[]){__VA_ARGS__},                                    \
                 sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t)))
#define ENC_EMPTY(t, s, special) CHECK(enc_is(t, s, special, NULL, 0))

/* decode(ids) as a malloc'd NUL-terminated string (NULL on error). */
static char *decode(const qpk_tokenizer *t, const int32_t *ids, size_t n, bool skip, size_t *len)
{
    qpk_err e = {0};
    if (qpk_tokenizer_decode(t, ids, n, skip, NULL, 0, len, &e) != QPK_OK)
        return NULL;
    char *out = malloc(*len + 1);
    if (qpk_tokenizer_decode(t, ids, n, skip, out, *len + 1, len, &e) != QPK_OK) {
        free(out);
        return NULL;
    }
    return out;
}

/* ------------------------------------------------------------------ UTF-8 */

static void test_utf8_repair(void)
{
    /* Expected strings are what Python's bytes.decode("utf-8", "replace") returns. */
    static const struct {
        const char *in;
        size_t n;
        const char *out;
    } cases[] = {
        {"a\xff" "b", 3, "a\xEF\xBF\xBD" "b"},
        {"\xE0\x80" "abc", 5, "\xEF\xBF\xBD\xEF\xBF\xBD" "abc"},      /* E0 needs A0..BF next */
        {"\xF0\x9F\x98", 3, "\xEF\xBF\xBD"},                        /* truncated: one subpart */
        {"\xED\xA0\x80x", 4, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDx"}, /* surrogate: 3 */
        {"\xC0\xAF", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},                /* overlong */
        {"\xF4\x90\x80\x80", 4, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* > U+10FFFF */
        {"\xE2\x82x", 3, "\xEF\xBF\xBDx"},
        {"caf\xC3", 4, "caf\xEF\xBF\xBD"},
        {"\xF0\x9F\x98\x80", 4, "\xF0\x9F\x98\x80"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[64];
        size_t n = qpk_utf8_repair(cases[i].in, cases[i].n, out);
        CHECKF(n == strlen(cases[i].out) && memcmp(out, cases[i].out, n) == 0, "repair case %zu", i);
        CHECK(qpk_utf8_valid_prefix(out, n) == n);
    }
    CHECK(qpk_utf8_valid_prefix("ab\xC3", 3) == 2);
}

/* ------------------------------------------------------------------- NFC */

static int nfc_is(const char *in, const char *want)
{
    qpk_nfc_buf b = {0};
    const char *r;
    size_t n;
    int ok = qpk_nfc(in, strlen(in), &b, &r, &n) && n == strlen(want) && memcmp(r, want, n) == 0;
    qpk_nfc_buf_free(&b);
    return ok;
}

static void test_nfc_basic(void)
{
    CHECK(nfc_is("e\xCC\x81", "\xC3\xA9"));                 /* e + U+0301 -> U+00E9 */
    CHECK(nfc_is("\xC3\xA9", "\xC3\xA9"));
    CHECK(nfc_is("\xE2\x84\xAB", "\xC3\x85"));              /* U+212B ANGSTROM SIGN: singleton */
    CHECK(nfc_is("A\xCC\x8A", "\xC3\x85"));
    CHECK(nfc_is("\xE0\xA5\x98", "\xE0\xA4\x95\xE0\xA4\xBC")); /* U+0958: composition exclusion */
    /* Hangul: L V T jamo compose algorithmically to U+AC01, and LV + T too. */
    CHECK(nfc_is("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", "\xEA\xB0\x81"));
    CHECK(nfc_is("\xEA\xB0\x80\xE1\x86\xA8", "\xEA\xB0\x81"));
    /* Ordering: a + U+0301 (230) + U+0316 (220) -> U+00E1 U+0316 (the 220 mark does not block). */
    CHECK(nfc_is("a\xCC\x81\xCC\x96", "\xC3\xA1\xCC\x96"));
    /* Blocked: a + U+0301 + U+0301: only the first composes. */
    CHECK(nfc_is("a\xCC\x81\xCC\x81", "\xC3\xA1\xCC\x81"));
    CHECK(nfc_is("", ""));
    CHECK(nfc_is("plain ASCII", "plain ASCII"));
    /* A long run of marks in the wrong order takes the counting sort. */
    char in[1 + 2 * 200 * 2 + 1], want[sizeof in];
    size_t k = 0, w = 0;
    in[k++] = 'x';
    want[w++] = 'x';
    for (int i = 0; i < 200; i++)
        memcpy(in + k, "\xCC\x81\xCC\x96", 4), k += 4; /* 230, 220, 230, 220, ... */
    for (int i = 0; i < 200; i++)
        memcpy(want + w, "\xCC\x96", 2), w += 2;
    for (int i = 0; i < 200; i++)
        memcpy(want + w, "\xCC\x81", 2), w += 2;
    in[k] = want[w] = 0;
    CHECK(nfc_is(in, want));
    CHECK(qpk_uc_compose('e', 0x301) == 0xE9 && qpk_uc_compose('e', 'e') == 0);
}

static size_t parse_cps(const char *f, char *out)
{
    size_t n = 0;
    for (char *end;; f = end) {
        unsigned long v = strtoul(f, &end, 16);
        if (end == f)
            break;
        n += qpk_utf8_put((uint32_t)v, out + n);
    }
    out[n] = 0;
    return n;
}

/*
 * Every NFC column of every line of NormalizationTest.txt (c2 == NFC(c1..c3), c4 ==
 * NFC(c4..c5)), and part 1's rule that a code point not listed there is its own NFC.
 */
static void test_nfc_conformance(void)
{
    const char *path = "/usr/share/unicode/NormalizationTest.txt.bz2";
    struct stat sb;
    if (stat(path, &sb) != 0) {
        printf("  (NormalizationTest: %s not installed, skipped; Debian package unicode-data)\n", path);
        return;
    }
    char cmd[512];
    snprintf(cmd, sizeof cmd, "bzcat %s 2>/dev/null", path);
    FILE *f = popen(cmd, "r");
    if (!f) {
        printf("  (NormalizationTest: cannot run bzcat, skipped)\n");
        return;
    }
    static uint8_t listed[0x110000];
    char line[2048], c[5][256], version[32] = "";
    int part = -1, lines = 0, bad = 0;
    qpk_nfc_buf b = {0};
    /* All c1 joined by '|' (which composes with nothing), to normalize in one call: many
     * quick-check failures and chunks in one text, against the c2 joined the same way. */
    size_t jcap = 1 << 22, jn = 0, wn = 0;
    char *joined = malloc(jcap), *wanted = malloc(jcap);
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') {
            const char *v = strstr(line, "NormalizationTest-");
            if (v && !version[0])
                sscanf(v + strlen("NormalizationTest-"), "%31[0-9.]", version);
            size_t vl = strlen(version);
            if (vl && version[vl - 1] == '.') /* "15.0.0.txt" */
                version[vl - 1] = 0;
            continue;
        }
        if (line[0] == '@') {
            part = atoi(line + 5);
            continue;
        }
        char *field = line;
        int nf = 0;
        for (; nf < 5; nf++) {
            char *semi = strchr(field, ';');
            if (!semi)
                break;
            *semi = 0;
            parse_cps(field, c[nf]);
            field = semi + 1;
        }
        if (nf < 5)
            continue;
        if (part == 1) {
            size_t l;
            listed[qpk_utf8_get((const unsigned char *)c[0], &l)] = 1;
        }
        size_t l0 = strlen(c[0]), l1 = strlen(c[1]);
        if (joined && wanted && jn + l0 + 1 < jcap && wn + l1 + 1 < jcap) {
            memcpy(joined + jn, c[0], l0), jn += l0, joined[jn++] = '|';
            memcpy(wanted + wn, c[1], l1), wn += l1, wanted[wn++] = '|';
        }
        static const int from[5] = {0, 1, 2, 3, 4}, to[5] = {1, 1, 1, 3, 3};
        for (int k = 0; k < 5; k++) {
            const char *r;
            size_t n;
            const char *want = c[to[k]];
            if (!qpk_nfc(c[from[k]], strlen(c[from[k]]), &b, &r, &n) || n != strlen(want) ||
                memcmp(r, want, n) != 0) {
                if (bad++ < 5)
                    fprintf(stderr, "NormalizationTest line %d: NFC(c%d) != c%d\n", lines, from[k] + 1,
                            to[k] + 1);
            }
        }
        lines++;
    }
    pclose(f);
    if (lines == 0 || strcmp(version, qpk_uc_version) != 0) {
        if (lines == 0)
            printf("  (NormalizationTest: nothing read, skipped)\n");
        else
            printf("  (NormalizationTest %s vs tables %s: versions differ, skipped)\n", version,
                   qpk_uc_version);
        qpk_nfc_buf_free(&b);
        free(joined);
        free(wanted);
        return;
    }
    const char *jres;
    size_t jres_n;
    CHECK(joined && wanted && qpk_nfc(joined, jn, &b, &jres, &jres_n) && jres_n == wn &&
          memcmp(jres, wanted, wn) == 0);
    free(joined);
    free(wanted);
    int bad_single = 0;
    for (uint32_t cp = 0; cp < 0x110000; cp++) {
        if (listed[cp] || (cp >= 0xD800 && cp <= 0xDFFF))
            continue;
        char s[5];
        size_t n = qpk_utf8_put(cp, s), m;
        const char *r;
        if (!qpk_nfc(s, n, &b, &r, &m) || m != n || memcmp(r, s, n) != 0)
            bad_single++;
    }
    qpk_nfc_buf_free(&b);
    CHECKF(bad == 0, "%d NFC mismatches over %d lines of NormalizationTest %s", bad, lines, version);
    CHECKF(bad_single == 0, "%d unlisted code points change under NFC", bad_single);
    CHECK(lines > 15000);
    printf("  NormalizationTest %s: %d lines, all NFC columns, and every unlisted code point\n",
           version, lines);
}

/* ------------------------------------------------------------ pre-tokenizer */

/* Pieces of s must be exactly want[] (NULL-terminated). */
static int pieces_are(const char *s, const char *const *want)
{
    size_t n = strlen(s), pos = 0, k = 0;
    int ok = 1;
    while (pos < n) {
        size_t end = qpk_pretok_next(s, n, pos);
        if (end <= pos || end > n || !want[k] || strlen(want[k]) != end - pos ||
            memcmp(want[k], s + pos, end - pos) != 0) {
            fprintf(stderr, "  \"%s\": piece %zu is \"%.*s\"\n", s, k, (int)(end - pos), s + pos);
            ok = 0;
            break;
        }
        k++;
        pos = end;
    }
    return ok && want[k] == NULL;
}
#define PIECES(s, ...) CHECK(pieces_are(s, (const char *const[]){__VA_ARGS__, NULL}))

/* Each expectation follows from the regex by hand; the comment names the deciding rule. */
static void test_pretok(void)
{
    PIECES("Hello world", "Hello", " world"); /* " world": optional non-letter + letters */
    PIECES("don't", "don", "'t");
    PIECES("DON'T", "DON", "'T");             /* (?i) */
    PIECES("I'LL go", "I", "'LL", " go");
    PIECES("we'Ve", "we", "'Ve");
    PIECES("it's'S", "it", "'s", "'S");
    PIECES("'sound", "'s", "ound");           /* contractions win before the letter run */
    PIECES("it'\xC5\xBF", "it", "'\xC5\xBF"); /* U+017F folds to s under (?i) */
    PIECES(" 's", " '", "s");                 /* at the space, " ?[^\s\p{L}\p{N}]+" takes "'" */
    PIECES("''s", "''", "s");
    PIECES("'x", "'x");
    PIECES("12345", "1", "2", "3", "4", "5"); /* \p{N}: one digit each */
    PIECES("3.14", "3", ".", "1", "4");
    PIECES("x\xC2\xB2\xE2\x85\xAB", "x", "\xC2\xB2", "\xE2\x85\xAB"); /* No, Nl are \p{N} */
    PIECES("a,b", "a", ",b");                 /* punctuation may lead a letter run */
    PIECES("...!!! ??", "...!!!", " ??");
    PIECES("foo...\n\nbar", "foo", "...\n\n", "bar"); /* symbols take the CR/LF after them */
    PIECES("a  b", "a", " ", " b");           /* \s+(?!\S) gives one space back */
    PIECES("a   \n\n  b", "a", "   \n\n", " ", " b"); /* \s*[\r\n]+ ends at the last newline */
    PIECES("\r\n", "\r\n");
    PIECES("x\r\ny", "x", "\r\n", "y");
    PIECES("x \r\n y", "x", " \r\n", " y");
    PIECES("\n \n", "\n \n");
    PIECES("\tfoo", "\tfoo");
    PIECES("\t\tfoo", "\t", "\tfoo");
    PIECES(" lead", " lead");
    PIECES("trail   ", "trail", "   ");        /* at the end \s+(?!\S) takes all */
    PIECES("  both  ", " ", " both", "  ");
    PIECES("x \x31", "x", " ", "1");           /* a lone space before a digit: \s+ */
    PIECES("\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96", "\xE4\xBD\xA0\xE5\xA5\xBD",
           "\xEF\xBC\x8C\xE4\xB8\x96"); /* 你好，世 */
    PIECES("\xF0\x9F\x98\x80\xF0\x9F\x91\x8D ok", "\xF0\x9F\x98\x80\xF0\x9F\x91\x8D", " ok");
    PIECES("a\xE3\x80\x80" "b", "a", "\xE3\x80\x80" "b"); /* U+3000 is \s, not \r\n: leads */
    PIECES("x\xC2\xA0\xC2\xA0y", "x", "\xC2\xA0", "\xC2\xA0y");
    PIECES("\xE2\x80\xA8\n", "\xE2\x80\xA8\n"); /* U+2028 is \s */
    PIECES("a\x1c" "b", "a", "\x1c" "b");      /* U+001C is not White_Space */
    PIECES(" \xCC\x81", " \xCC\x81");           /* a mark is neither letter nor space */
}

/* ------------------------------------------------------------ tiny tokenizer */

/*
 * A tokenizer small enough to reason about completely: ids 0..255 are the byte-level
 * symbols in byte order (so a byte's id is its value), then
 *   256 "ab" = a+b (rank 0), 257 "abc" = ab+c (rank 1), 258 "Ġa" = Ġ+a (rank 2),
 *   259 "aa" = a+a (rank 3), 260 "ba" (no merge makes it), and added tokens
 *   261 "<s>" special, 262 "<s>x" special, 263 "x<s" not special.
 * `extra` is spliced into the model object; `merges` overrides the merges list.
 */
static char *tiny_json(const char *model_extra, const char *merges, const char *added)
{
    size_t cap = 64 * 1024, n = 0;
    char *j = malloc(cap);
    n += (size_t)snprintf(j + n, cap - n,
                          "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":%s,"
                          "\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":{\"type\":\"Sequence\","
                          "\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"",
                          added ? added
                                : "[{\"id\":261,\"content\":\"<s>\",\"single_word\":false,\"lstrip\":false,"
                                  "\"rstrip\":false,\"normalized\":false,\"special\":true},"
                                  "{\"id\":262,\"content\":\"<s>x\",\"single_word\":false,\"lstrip\":false,"
                                  "\"rstrip\":false,\"normalized\":false,\"special\":true},"
                                  "{\"id\":263,\"content\":\"x<s\",\"single_word\":false,\"lstrip\":false,"
                                  "\"rstrip\":false,\"normalized\":false,\"special\":false}]");
    for (const char *p = qpk_pretok_qwen2_pattern; *p; p++) { /* JSON-escape the backslashes */
        if (*p == '\\')
            j[n++] = '\\';
        j[n++] = *p;
    }
    n += (size_t)snprintf(j + n, cap - n,
                          "\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\","
                          "\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false}]},"
                          "\"post_processor\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
                          "\"trim_offsets\":false,\"use_regex\":false},\"decoder\":{\"type\":\"ByteLevel\","
                          "\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false},"
                          "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,"
                          "\"continuing_subword_prefix\":\"\",\"end_of_word_suffix\":\"\",\"fuse_unk\":false,"
                          "\"byte_fallback\":false%s,\"vocab\":{",
                          model_extra ? model_extra : "");
    for (int b = 0; b < 256; b++) {
        char sym[4];
        uint32_t cp = b <= 0x20 ? 0x100u + (uint32_t)b
                      : b >= 0x7F && b <= 0xA0 ? 0x121u + (uint32_t)(b - 0x7F)
                      : b == 0xAD             ? 0x143u
                                              : (uint32_t)b;
        size_t l = qpk_utf8_put(cp, sym);
        j[n++] = '"';
        if (cp == '"' || cp == '\\')
            j[n++] = '\\';
        memcpy(j + n, sym, l);
        n += l;
        n += (size_t)snprintf(j + n, cap - n, "\":%d,", b);
    }
    n += (size_t)snprintf(j + n, cap - n,
                          "\"ab\":256,\"abc\":257,\"\xC4\xA0" "a\":258,\"aa\":259,\"ba\":260},\"merges\":%s}}",
                          merges ? merges
                                 : "[[\"a\",\"b\"],[\"ab\",\"c\"],[\"\xC4\xA0\",\"a\"],[\"a\",\"a\"]]");
    return j;
}

static qpk_tokenizer *tiny(const char *model_extra, const char *merges)
{
    char *j = tiny_json(model_extra, merges, NULL);
    qpk_tokenizer *t = NULL;
    qpk_err e = {0};
    if (qpk_tokenizer_load(&t, j, strlen(j), &e) != QPK_OK)
        fprintf(stderr, "tiny tokenizer: %s\n", e.msg);
    free(j);
    return t;
}

static void test_tiny(void)
{
    qpk_tokenizer *t = tiny(NULL, NULL);
    CHECK(t != NULL);
    if (!t)
        return;
    ENC(t, "abc", true, 257);          /* a b c -> ab c (rank 0) -> abc (rank 1) */
    ENC(t, "aaa", true, 259, 'a');     /* equal ranks: the leftmost pair merges first */
    ENC(t, " ab", true, ' ', 256);     /* (a,b) rank 0 before (Ġ,a) rank 2: Ġ + ab */
    ENC(t, " aab", true, 258, 256);    /* ab first, then Ġa */
    ENC(t, "ba", true, 'b', 'a');      /* "ba" is a token, but no merge reaches it */
    ENC_EMPTY(t, "", true);
    /* Added tokens: leftmost, then longest; the search resumes after each match. */
    ENC(t, "<s>x<s>", true, 262, 261);
    ENC(t, "x<s>", true, 263, '>');
    ENC(t, "<s>", true, 261);
    /* parse_special false: special matches become text, and the search still resumes after
     * them, so "x<s" (not special) inside the dropped "<s>x" is not seen. Plain pieces:
     * "<s" ">x" "<s" ">" (a symbol may lead a letter run). */
    ENC(t, "<s>x<s>", false, '<', 's', '>', 'x', '<', 's', '>');
    ENC(t, "x<s>", false, 263, '>');
    /* NFC happens between added tokens only: U+0338 after "<s>" stays uncomposed, while
     * ">" + U+0338 in plain text becomes U+226F. */
    ENC(t, "<s>\xCC\xB8", true, 261, 0xCC, 0xB8);
    ENC(t, ">\xCC\xB8", true, 0xE2, 0x89, 0xAF);
    CHECK(qpk_tokenizer_n_tokens(t) == 264);
    CHECK(qpk_tokenizer_n_merges(t) == 4);
    CHECK(qpk_tokenizer_token_kind(t, 261) == QPK_TOKEN_SPECIAL);
    CHECK(qpk_tokenizer_token_kind(t, 263) == QPK_TOKEN_ADDED);
    CHECK(qpk_tokenizer_token_kind(t, 260) == QPK_TOKEN_NORMAL);
    CHECK(qpk_tokenizer_token_kind(t, 264) == QPK_TOKEN_NONE && qpk_tokenizer_token_kind(t, -1) == QPK_TOKEN_NONE);
    const char *a, *b;
    size_t al, bl;
    qpk_tokenizer_merge(t, 2, &a, &al, &b, &bl);
    CHECK(a && strcmp(a, "\xC4\xA0") == 0 && al == 2 && strcmp(b, "a") == 0 && bl == 1);
    qpk_tokenizer_merge(t, 4, &a, &al, &b, &bl);
    CHECK(a == NULL && b == NULL && al == 0 && bl == 0);
    CHECK(qpk_tokenizer_find(t, "\xC4\xA0" "a", 3) == 258 && qpk_tokenizer_find(t, "<s>x", 4) == 262);
    CHECK(qpk_tokenizer_find(t, "zz", 2) == -1);
    size_t len;
    CHECK(qpk_tokenizer_token(t, 300, &len) == NULL && len == 0);

    /* Decoding: byte-level symbols back to bytes; specials kept or skipped. */
    int32_t ids[] = {261, 258, 256, 263, 0xE2, 0x89};
    char *s = decode(t, ids, 6, false, &len);
    CHECK(s && len == 12 && memcmp(s, "<s> aabx<s\xE2\x89", 12) == 0 && s[12] == 0);
    free(s);
    s = decode(t, ids, 6, true, &len);
    CHECK(s && len == 9 && memcmp(s, " aabx<s\xE2\x89", 9) == 0);
    free(s);
    /* Sizing conventions. */
    char small[4];
    qpk_err e = {0};
    CHECK_ERR(qpk_tokenizer_decode(t, ids, 6, false, small, sizeof small, &len, &e), QPK_E_LIMIT, e,
              "buffer of 4 bytes, 12 needed");
    CHECK(len == 12);
    char exact[4];
    CHECK(qpk_tokenizer_decode(t, ids + 1, 2, false, exact, 4, &len, &e) == QPK_OK && len == 4 &&
          memcmp(exact, " aab", 4) == 0); /* fits without its NUL */
    int32_t bad[] = {5, 264};
    CHECK_ERR(qpk_tokenizer_decode(t, bad, 2, false, NULL, 0, &len, &e), QPK_E_VALUE, e,
              "id 264 (position 1) is not a token");
    bad[1] = -3;
    CHECK_ERR(qpk_tokenizer_decode(t, bad, 2, false, NULL, 0, &len, &e), QPK_E_VALUE, e, "id -3");
    size_t n;
    int32_t out[2];
    CHECK(qpk_tokenizer_encode(t, "abc abc", 7, true, NULL, 0, &n, &e) == QPK_OK && n == 3);
    CHECK_ERR(qpk_tokenizer_encode(t, "abc abc", 7, true, out, 2, &n, &e), QPK_E_LIMIT, e,
              "buffer of 2 ids, 3 needed");
    CHECK(n == 3 && out[0] == 257 && out[1] == ' ');
    int32_t *v;
    CHECK(qpk_tokenizer_encode_alloc(t, "", 0, true, &v, &n, &e) == QPK_OK && v == NULL && n == 0);
    /* Invalid UTF-8 is repaired to U+FFFD (EF BF BD) before anything else. */
    ENC(t, "a\xFF" "b", true, 'a', 0xEF, 0xBF, 0xBD, 'b');
    qpk_tokenizer_free(t);

    /* ignore_merges: a piece that is a token is that token, merges or not. */
    t = tiny(",\"ignore_merges\":true", NULL);
    CHECK(t != NULL);
    if (t) {
        ENC(t, "ba", true, 260);
        ENC(t, "aab", true, 'a', 256); /* not a token: merges as usual */
        qpk_tokenizer_free(t);
    }
    /* The "a b" merge form (Qwen1.5) with a "#version" line gives the same ranks. */
    t = tiny(NULL, "[\"#version: 0.2\",\"a b\",\"ab c\",\"\xC4\xA0 a\",\"a a\"]");
    CHECK(t != NULL);
    if (t) {
        CHECK(qpk_tokenizer_n_merges(t) == 4);
        ENC(t, " aab", true, 258, 256);
        ENC(t, "aaa", true, 259, 'a');
        qpk_tokenizer_free(t);
    }
    qpk_tokenizer_free(NULL);
}

/* ---------------------------------------------------------- malformed files */

/* The error contract: a load that failed with an e (status with_e) fails alike without one, leaving no tokenizer. */
static bool fails_alike(const char *json, size_t len, qpk_status with_e)
{
    qpk_tokenizer *t = (qpk_tokenizer *)1;
    qpk_status s = qpk_tokenizer_load(&t, json, len, NULL);
    if (s == QPK_OK)
        qpk_tokenizer_free(t);
    return s != QPK_OK && s == with_e && t == NULL;
}

/* The tiny tokenizer with the first occurrence of `from` replaced by `to`. */
static char *edit(const char *from, const char *to)
{
    char *j = tiny_json(NULL, NULL, NULL);
    char *at = strstr(j, from);
    if (!at) {
        fprintf(stderr, "edit: '%s' not found\n", from);
        return j;
    }
    size_t fl = strlen(from), tl = strlen(to), n = strlen(j);
    char *out = malloc(n - fl + tl + 1);
    memcpy(out, j, (size_t)(at - j));
    memcpy(out + (at - j), to, tl);
    memcpy(out + (at - j) + tl, at + fl, n - (size_t)(at - j) - fl + 1);
    free(j);
    return out;
}

static void test_malformed(void)
{
    size_t null_e = 0;
    static const struct {
        const char *from, *to;
        qpk_status want;
        const char *msg;
    } cases[] = {
        {"{\"version\"", "{\"version\" 1", QPK_E_CORRUPT, "tokenizer.json: expected ':' at byte 11"},
        {"\"merges\":[", "\"merges\":[,", QPK_E_CORRUPT, "tokenizer.json: a merge is neither \"a b\" nor [\"a\", \"b\"] at byte"},
        {"\"vocab\":{", "\"vocab\":{,", QPK_E_CORRUPT, "tokenizer.json: expected a string at byte"},
        {"\"ba\":260}", "\"ba\":260,}", QPK_E_CORRUPT, "tokenizer.json: expected a string at byte"},
        {"\"ba\":260}", "\"ba\":260", QPK_E_CORRUPT, "tokenizer.json: expected ',' or '}' at byte"},
        {"\"truncation\":null", "\"truncation\":nul", QPK_E_CORRUPT, "tokenizer.json: unexpected character at byte"},
        {"\"1.0\"", "\"2.0\"", QPK_E_UNSUPPORTED, "tokenizer.json version '2.0' (expected \"1.0\")"},
        {"\"type\":\"BPE\"", "\"type\":\"Unigram\"", QPK_E_UNSUPPORTED,
         "model type 'Unigram' is not supported (qpk implements byte-level BPE)"},
        {"\"type\":\"BPE\"", "\"type\":\"WordPiece\"", QPK_E_UNSUPPORTED, "model type 'WordPiece' is not supported"},
        {"\"NFC\"", "\"NFKC\"", QPK_E_UNSUPPORTED, "normalizer 'NFKC' is not supported (qpk implements NFC or none)"},
        {"\"Regex\":\"(?i:", "\"Regex\":\"(?i:'x|", QPK_E_UNSUPPORTED, "pre_tokenizer Split regex '(?i:'x|'s"},
        {"\"Regex\":", "\"String\":\" \",\"R\":", QPK_E_UNSUPPORTED, "pre_tokenizer Split on the string ' '"},
        {"\"Isolated\"", "\"Removed\"", QPK_E_UNSUPPORTED, "pre_tokenizer Split behavior 'Removed' is not supported"},
        {"\"invert\":false", "\"invert\":true", QPK_E_UNSUPPORTED, "Split with invert: true"},
        {"\"add_prefix_space\":false", "\"add_prefix_space\":true", QPK_E_UNSUPPORTED,
         "ByteLevel with add_prefix_space: true"},
        {"\"use_regex\":false}]", "\"use_regex\":true}]", QPK_E_UNSUPPORTED, "use_regex: true (the GPT-2 regex)"},
        {"{\"type\":\"Sequence\"", "{\"type\":\"ByteLevel\"", QPK_E_UNSUPPORTED, "pre_tokenizer 'ByteLevel' is not supported"},
        {"\"decoder\":{\"type\":\"ByteLevel\"", "\"decoder\":{\"type\":\"WordPiece\"", QPK_E_UNSUPPORTED,
         "decoder 'WordPiece' is not supported (qpk implements ByteLevel)"},
        {"\"decoder\":{", "\"decoder\":null,\"x\":{", QPK_E_UNSUPPORTED, "no decoder"},
        {"\"byte_fallback\":false", "\"byte_fallback\":true", QPK_E_UNSUPPORTED, "BPE byte_fallback: true is not supported"},
        {"\"dropout\":null", "\"dropout\":0.1", QPK_E_UNSUPPORTED, "BPE dropout is not supported"},
        {"\"continuing_subword_prefix\":\"\"", "\"continuing_subword_prefix\":\"##\"", QPK_E_UNSUPPORTED,
         "BPE continuing_subword_prefix '##' is not supported"},
        {"[\"ab\",\"c\"]", "[\"ab\",\"zz\"]", QPK_E_CORRUPT, "merge 1 ('ab', 'zz'): 'zz' is not in the vocabulary"},
        {"[\"a\",\"a\"]", "[\"c\",\"c\"]", QPK_E_CORRUPT, "merge 3 ('c', 'c'): 'cc' is not in the vocabulary"},
        {"[\"a\",\"a\"]", "[\"a\",\"b\"]", QPK_E_CORRUPT, "merges 0 and 3 are both ('a', 'b')"},
        {"[[\"a\",\"b\"],", "[\"a b\",", QPK_E_CORRUPT, "merge is not a string like the first"},
        {"[[\"a\",\"b\"],", "[[\"a\",\"b\",\"c\"],", QPK_E_CORRUPT, "merge is not a pair of strings"},
        {"\"aa\":259", "\"aa\":7", QPK_E_CORRUPT, "vocab: id 7 is given to both"},
        {"\"aa\":259", "\"ab\":259", QPK_E_CORRUPT, "vocab: token 'ab' appears twice"},
        {"\"aa\":259", "\"aa\":16777216", QPK_E_LIMIT, "vocab token 'aa': tokenizer.json: id not an integer in [0, 16777215]"},
        {"\"aa\":259", "\"aa\":-1", QPK_E_CORRUPT, "vocab token 'aa': tokenizer.json: id not an integer"},
        {"\"aa\":259", "\"aa\":2.5", QPK_E_CORRUPT, "id not an integer"},
        {"\"!\":33,", "", QPK_E_UNSUPPORTED, "the vocabulary lacks the byte-level symbol '!' of byte 0x21"},
        {"\"lstrip\":false", "\"lstrip\":true", QPK_E_UNSUPPORTED, "added token '<s>' (id 261) has lstrip: true"},
        {"\"rstrip\":false", "\"rstrip\":true", QPK_E_UNSUPPORTED, "has rstrip: true"},
        {"\"single_word\":false", "\"single_word\":true", QPK_E_UNSUPPORTED, "has single_word: true"},
        {"\"normalized\":false,", "", QPK_E_UNSUPPORTED, "normalized: true (the default when absent)"},
        {"\"id\":262", "\"id\":300", QPK_E_UNSUPPORTED,
         "added token '<s>x' has id 300, but tokenizers would give it id 262"},
        {"\"content\":\"<s>x\"", "\"content\":\"<s>\"", QPK_E_CORRUPT, "added token '<s>' is listed twice"},
        {"\"content\":\"<s>\"", "\"content\":\"\"", QPK_E_CORRUPT, "added token 0 has empty content"},
        {"\"content\":\"<s>\"", "\"content\":\"a\\u0000\"", QPK_E_UNSUPPORTED, "\\u0000 in a string"},
        {"\"content\":\"<s>\"", "\"content\":\"\\ud800\"", QPK_E_CORRUPT, "unpaired surrogate escape"},
        {"\"content\":\"<s>\"", "\"content\":\"\\q\"", QPK_E_CORRUPT, "invalid escape in a string"},
        {"\"content\":\"<s>\"", "\"content\":\"\xC3\x28\"", QPK_E_CORRUPT, "invalid UTF-8 in a string"},
        {"\"content\":\"<s>\"", "\"content\":\"a\tb\"", QPK_E_CORRUPT, "raw control character in a string"},
        {"\"normalizer\":", "\"normalizer\":{},\"normalizer\":", QPK_E_CORRUPT, "tokenizer.json: key 'normalizer' appears twice"},
        {"\"vocab\":{", "\"vocab\":{},\"vocab\":{", QPK_E_CORRUPT, "tokenizer.json: model: key 'vocab' given twice at byte"},
        {"\"model\":{", "\"model\":7,\"x\":{", QPK_E_CORRUPT, "tokenizer.json has no 'model' object"},
        {"\"vocab\":{", "\"vocab\":[],\"v\":{", QPK_E_CORRUPT, "model has no 'vocab' object"},
        {"\"merges\":[", "\"merges\":{},\"m\":[", QPK_E_CORRUPT, "model has no 'merges' list"},
        {"\"truncation\":null", "\"truncation\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
         QPK_E_LIMIT, "values nested too deeply"},
        {"\"added_tokens\":[", "\"added_tokens\":{\"a\":1},\"x\":[", QPK_E_CORRUPT, "'added_tokens' is not a list"},
        {"\"post_processor\":{", "\"post_processor\":{\"x\":1},\"p\":{", QPK_E_CORRUPT, "post_processor has no \"type\" string"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *j = edit(cases[i].from, cases[i].to);
        qpk_tokenizer *t = (qpk_tokenizer *)1;
        qpk_err e = {0};
        qpk_status s = qpk_tokenizer_load(&t, j, strlen(j), &e);
        CHECKF(s == cases[i].want && strstr(e.msg, cases[i].msg) && t == NULL,
               "case %zu: status %d (want %d), \"%s\" (want \"%s\")", i, (int)s, (int)cases[i].want,
               e.msg, cases[i].msg);
        CHECKF(fails_alike(j, strlen(j), s), "case %zu with e == NULL", i);
        null_e++;
        free(j);
    }
    /* Whole-file defects. */
    static const struct {
        const char *json;
        qpk_status want;
        const char *msg;
    } whole[] = {
        {"", QPK_E_CORRUPT, "unexpected end"},
        {"[1,2]", QPK_E_CORRUPT, "tokenizer.json is not a JSON object"},
        {"{} x", QPK_E_CORRUPT, "bytes after its JSON value (byte 3)"},
        {"{\"a\":01}", QPK_E_CORRUPT, "malformed number"},
        {"{\"a\":\"x", QPK_E_CORRUPT, "unterminated string"},
        {"{}", QPK_E_UNSUPPORTED, "no pre_tokenizer"},
    };
    qpk_tokenizer *t;
    qpk_err e = {0};
    for (size_t i = 0; i < sizeof whole / sizeof *whole; i++) {
        qpk_status s = qpk_tokenizer_load(&t, whole[i].json, strlen(whole[i].json), &e);
        CHECK_ERR(s, whole[i].want, e, whole[i].msg);
        CHECKF(fails_alike(whole[i].json, strlen(whole[i].json), s), "'%s' with e == NULL", whole[i].json);
        null_e++;
    }
    CHECK_ERR(qpk_tokenizer_load(NULL, "{}", 2, &e), QPK_E_INVALID_ARG, e, "NULL");
    CHECK(qpk_tokenizer_load(NULL, "{}", 2, NULL) == QPK_E_INVALID_ARG);
    char *j = tiny_json(NULL, NULL, NULL);
    CHECK(qpk_tokenizer_load(&t, j, strlen(j) - 1, &e) == QPK_E_CORRUPT); /* cut short */
    CHECK(fails_alike(j, strlen(j) - 1, QPK_E_CORRUPT));
    null_e += 2;
    free(j);
    j = tiny_json(NULL, "[]", "[]");
    CHECK(qpk_tokenizer_load(&t, j, strlen(j), &e) == QPK_OK);
    qpk_tokenizer_free(t);
    free(j);
    /* Vocabulary holes: added ids count on from the number of entries (261 here), so a
     * hole is fine, but an added id may not land on a vocabulary token. */
    j = edit("\"ba\":260", "\"ba\":500");
    CHECK(qpk_tokenizer_load(&t, j, strlen(j), &e) == QPK_OK);
    CHECK(qpk_tokenizer_n_tokens(t) == 501 && qpk_tokenizer_token(t, 260, NULL) == NULL &&
          qpk_tokenizer_token_kind(t, 260) == QPK_TOKEN_NONE && qpk_tokenizer_find(t, "ba", 2) == 500);
    qpk_tokenizer_free(t);
    free(j);
    j = edit("\"ba\":260", "\"ba\":261");
    CHECK_ERR(qpk_tokenizer_load(&t, j, strlen(j), &e), QPK_E_CORRUPT, e,
              "added token '<s>' takes id 261 of vocabulary token 'ba'");
    CHECK(fails_alike(j, strlen(j), QPK_E_CORRUPT));
    null_e++;
    free(j);
    printf("%zu malformed tokenizer.json inputs replayed with e == NULL\n", null_e);
}

/* ----------------------------------------------------------------- fixture */

static const qpk_tokenizer *g_fixture; /* read-only across the threads below */

static void test_fixture_ids(const qpk_tokenizer *t, const char *dir)
{
    char path[4096];
    size_t tl, rl;
    snprintf(path, sizeof path, "%s/text/eval_public.txt", dir);
    char *text = slurp(path, &tl);
    snprintf(path, sizeof path, "%s/tokens/eval_public.i32", dir);
    int32_t *ref = (int32_t *)slurp(path, &rl);
    CHECK(text && ref);
    if (!text || !ref) {
        free(text), free(ref);
        return;
    }
    rl /= 4;
    int32_t *ids;
    size_t n;
    qpk_err e = {0};
    CHECK(qpk_tokenizer_encode_alloc(t, text, tl, false, &ids, &n, &e) == QPK_OK);
    size_t i = 0;
    while (i < n && i < rl && ids[i] == ref[i])
        i++;
    CHECKF(n == rl && i == n, "eval_public: %zu ids (reference %zu), first mismatch at %zu", n, rl, i);
    if (i < n && i < rl) {
        for (size_t k = i >= 4 ? i - 4 : 0; k < i + 4 && k < n && k < rl; k++) {
            size_t la, lb;
            const char *a = qpk_tokenizer_token(t, ids[k], &la), *b = qpk_tokenizer_token(t, ref[k], &lb);
            fprintf(stderr, "  %s[%zu] %d '%s' / reference %d '%s'\n", k == i ? ">" : " ", k, ids[k],
                    a ? a : "?", ref[k], b ? b : "?");
        }
    } else {
        printf("  eval_public: all %zu ids equal the reference\n", n);
    }
    size_t len;
    char *back = decode(t, ids, n, false, &len);
    CHECK(back && len == tl && memcmp(back, text, tl) == 0); /* eval_public is NFC already */
    free(back);
    free(ids);
    /* The parity prompt: the first 16 ids as the fixture README lists them. */
    static const int32_t parity[16] = {16, 18, 13, 3555, 4695, 1939, 31899, 419,
                                       21514, 702, 4658, 48580, 697, 2734, 304, 1667};
    CHECK(memcmp(ref, parity, sizeof parity) == 0);
    free(text);
    free(ref);
}

/* decode(encode(x)) == NFC(x) over calib.txt (3.9 MB), whole and line by line. */
static void test_fixture_roundtrip(const qpk_tokenizer *t, const char *dir)
{
    char path[4096];
    size_t tl;
    snprintf(path, sizeof path, "%s/text/calib.txt", dir);
    char *text = slurp(path, &tl);
    CHECK(text != NULL);
    if (!text)
        return;
    qpk_nfc_buf b = {0};
    const char *norm;
    size_t nl;
    CHECK(qpk_nfc(text, tl, &b, &norm, &nl));
    int32_t *ids;
    size_t n, len;
    qpk_err e = {0};
    CHECK(qpk_tokenizer_encode_alloc(t, text, tl, false, &ids, &n, &e) == QPK_OK);
    char *back = decode(t, ids, n, false, &len);
    CHECK(back && len == nl && memcmp(back, norm, nl) == 0);
    printf("  calib.txt: %zu bytes -> %zu ids -> the same bytes\n", tl, n);
    free(back);
    free(ids);
    /* Line by line too, with parse_special. */
    size_t lines = 0, bad = 0;
    for (char *p = text, *end = text + tl; p < end && lines < 2000; lines++) {
        char *nlp = memchr(p, '\n', (size_t)(end - p));
        size_t ll = nlp ? (size_t)(nlp - p + 1) : (size_t)(end - p);
        CHECK(qpk_tokenizer_encode_alloc(t, p, ll, true, &ids, &n, &e) == QPK_OK);
        back = decode(t, ids, n, false, &len);
        const char *r;
        size_t rn;
        qpk_nfc(p, ll, &b, &r, &rn);
        if (!back || len != rn || memcmp(back, r, rn) != 0)
            bad++;
        free(back);
        free(ids);
        p += ll;
    }
    CHECKF(bad == 0, "%zu of %zu lines do not round-trip", bad, lines);
    qpk_nfc_buf_free(&b);
    free(text);
}

/* Ids read off the fixture's vocabulary and merges; each comment gives the reasoning. */
static void test_fixture_edges(const qpk_tokenizer *t)
{
    /* The README's example, from an independent implementation. */
    ENC(t, "Hello, my dog is cute", true, 9707, 11, 847, 5562, 374, 18838);
    ENC_EMPTY(t, "", true);
    /* Spaces: merges (Ġ,Ġ) rank 0 and (ĠĠ,Ġ) make ĠĠ 256 and ĠĠĠ 262; a lone Ġ is 220. */
    ENC(t, " ", true, 220);
    ENC(t, "  ", true, 256);
    ENC(t, "   ", true, 262);
    ENC(t, "trail   ", true, 77875, 262);      /* "trail" + all three spaces at the end */
    ENC(t, "trail ", true, 77875, 220);
    ENC(t, " lead", true, 2990);                /* Ġlead */
    ENC(t, "  both  ", true, 220, 2176, 256);   /* Ġ | Ġboth | ĠĠ */
    /* Newlines: Ċ 198, ĊĊ 271, ĊĊĊ 1406, čĊ 319, čĊčĊ 871; ĠĠĊ 2303, ĠĠĠĊĊ 33933. */
    ENC(t, "\n", true, 198);
    ENC(t, "\n\n", true, 271);
    ENC(t, "\n\n\n", true, 1406);
    ENC(t, "a\n\nb", true, 64, 271, 65);
    ENC(t, "a  \n  b", true, 64, 2303, 220, 293); /* "  \n" | " " | " b" (Ġb 293) */
    ENC(t, "   \n\n  b", true, 33933, 220, 293);
    ENC(t, "\r\n", true, 319);
    ENC(t, "a\r\nb", true, 64, 319, 65);
    ENC(t, "a\r\n\r\nb", true, 64, 871, 65);
    /* Tabs: ĉ 197; "\tfoo" is one piece but no merge joins ĉ and foo (7975); ĉb 2233 is. */
    ENC(t, "\tfoo", true, 197, 7975);
    ENC(t, "\t\tfoo", true, 197, 197, 7975);
    ENC(t, "a\tb", true, 64, 2233);
    /* Contractions, both cases: 's 594, 'S 13272, 't 944, 'T 17323, 'll 3278, 'm 2776, 'M 27603,
     * 're 2299, 'RE 94153, 've 3003, 'd 4172, 'D 27705; "'LL" and "'VE" are not tokens: ' 6 +
     * LL 4086 / VE 4491. */
    ENC(t, "it's", true, 275, 594);
    ENC(t, "IT'S", true, 952, 13272);
    ENC(t, "don't", true, 15007, 944);
    ENC(t, "DON'T", true, 84641, 17323);
    ENC(t, "I'll", true, 40, 3278);
    ENC(t, "I'LL", true, 40, 6, 4086);
    ENC(t, "we've", true, 896, 3003);
    ENC(t, "WE'VE", true, 12457, 6, 4491);
    ENC(t, "you're", true, 9330, 2299);
    ENC(t, "YOU'RE", true, 56389, 94153);
    ENC(t, "I'm", true, 40, 2776);
    ENC(t, "I'M", true, 40, 27603);
    ENC(t, "he'd", true, 383, 4172);
    ENC(t, "HE'D", true, 1799, 27705);
    ENC(t, "'sound", true, 594, 795);
    ENC(t, "it'\xC5\xBF", true, 275, 6, 144815); /* 'ſ is a piece; ſ (Å¿ 144815) after ' 6 */
    /* Digits: one piece each; '0' is 15, '1'..'9' are 16..24. */
    ENC(t, "1234567890", true, 16, 17, 18, 19, 20, 21, 22, 23, 24, 15);
    ENC(t, "3.14159", true, 18, 13, 16, 19, 16, 20, 24);
    ENC(t, "x=1000000", true, 87, 28, 16, 15, 15, 15, 15, 15, 15);
    /* Punctuation runs: "..." 1112, "!!!" 12069, "???" 33015, ",b" 8402, "...ĊĊ" 2146. */
    ENC(t, "...", true, 1112);
    ENC(t, "!!!???", true, 12069, 33015);
    ENC(t, "a,b", true, 64, 8402);
    ENC(t, "foo...\n\nbar", true, 7975, 2146, 2257);
    ENC(t, "(\"hello\")", true, 445, 14990, 899);
    /* CJK: 你好 108386, 世界 99489, ， 3837, 。 1773 (their UTF-8 bytes, merged). */
    ENC(t, "\xE4\xBD\xA0\xE5\xA5\xBD\xE4\xB8\x96\xE7\x95\x8C", true, 108386, 99489);
    ENC(t, "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C\xE3\x80\x82", true, 108386,
        3837, 99489, 1773);
    /* 4-byte UTF-8: 😀 141334, 👍 144349, 🤗 144834 are whole tokens; Ġok 5394. */
    ENC(t, "\xF0\x9F\x98\x80", true, 141334);
    ENC(t, "\xF0\x9F\x98\x80\xF0\x9F\x91\x8D ok", true, 141334, 144349, 5394);
    ENC(t, "\xF0\x9F\xA4\x97", true, 144834);
    /* NFC: e + U+0301 is é (Ã© 963); "cafe\u0301" = "café": ca 924 + fÃ© 58858; Å
     * three ways (U+00C5, A + U+030A, U+212B ANGSTROM SIGN) is Ãħ 144044. */
    ENC(t, "e\xCC\x81", true, 963);
    ENC(t, "\xC3\xA9", true, 963);
    ENC(t, "cafe\xCC\x81", true, 924, 58858);
    ENC(t, "\xC3\x85", true, 144044);
    ENC(t, "A\xCC\x8A", true, 144044);
    ENC(t, "\xE2\x84\xAB", true, 144044);
    ENC(t, "\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", true, 126317); /* jamo -> 각 (ê°ģ) */
    ENC(t, " \xCC\x81", true, 220, 53839);                         /* Ġ | Ìģ: one piece */
    /* Other spaces: NBSP (Âł 4102) leads "x"; U+3000 (ãĢĢ 22441) leads "b" in one piece but
     * no merge joins them; U+2028 is âĢ 378 + ¨ 101. */
    ENC(t, "\xC2\xA0x", true, 4102, 87);
    ENC(t, "a\xE3\x80\x80" "b", true, 64, 22441, 65);
    ENC(t, "\xE2\x80\xA8", true, 378, 101);
    /* Special tokens: with parse_special they are their ids; without, <|endoftext|> is
     * text: "<|" "endoftext" "|>" -> < 27 | 91, endo 8691 ft 723 ext 427, | 91 > 29. */
    ENC(t, "x<|endoftext|>y", true, 87, 151643, 88);
    ENC(t, "x<|endoftext|>y", false, 87, 27, 91, 8691, 723, 427, 91, 29, 88);
    ENC(t, "<|im_start|>user\nHi<|im_end|>", true, 151644, 872, 198, 13048, 151645);
    ENC(t, "<|im_start|>user\nHi<|im_end|>", false, 27, 91, 318, 4906, 91, 29, 872, 198, 13048,
        27, 91, 318, 6213, 91, 29);
    /* <tool_call> is special:false: matched either way, as tokenizers does. */
    ENC(t, "<tool_call>", true, 151657);
    ENC(t, "<tool_call>", false, 151657);
    /* U+0338 after an added token is normalized on its own: Ì 136 + ¸ 116; after ">" in
     * text it composes to U+226F (âī 58994 + ¯ 107). */
    ENC(t, "<tool_call>\xCC\xB8", true, 151657, 136, 116);
    ENC(t, ">\xCC\xB8", true, 58994, 107);
    /* Invalid UTF-8: what Python's decode(errors="replace") gives, then tokenized:
     * � is ï¿½ 5691, �� 9973, ��� 57332; abc 13683, caf 68796. */
    ENC(t, "a\xFF" "b", true, 64, 5691, 65);
    ENC(t, "\xE0\x80" "abc", true, 9973, 13683);
    ENC(t, "\xF0\x9F\x98", true, 5691);
    ENC(t, "\xED\xA0\x80x", true, 57332, 87);
    ENC(t, "caf\xC3", true, 68796, 5691);

    /* The vocabulary as exporters see it. */
    size_t len;
    const char *s = qpk_tokenizer_token(t, 9707, &len);
    CHECK(s && len == 5 && strcmp(s, "Hello") == 0);
    s = qpk_tokenizer_token(t, 151643, &len);
    CHECK(s && strcmp(s, "<|endoftext|>") == 0);
    CHECK(qpk_tokenizer_n_tokens(t) == 151669);
    CHECK(qpk_tokenizer_n_merges(t) == 151387);
    CHECK(qpk_tokenizer_token_kind(t, 151643) == QPK_TOKEN_SPECIAL);
    CHECK(qpk_tokenizer_token_kind(t, 151657) == QPK_TOKEN_ADDED);
    CHECK(qpk_tokenizer_token_kind(t, 9707) == QPK_TOKEN_NORMAL);
    CHECK(qpk_tokenizer_token_kind(t, 151669) == QPK_TOKEN_NONE);
    const char *a, *b;
    size_t al, bl;
    qpk_tokenizer_merge(t, 0, &a, &al, &b, &bl);
    CHECK(a && strcmp(a, "\xC4\xA0") == 0 && strcmp(b, "\xC4\xA0") == 0); /* the first merge: Ġ Ġ */
    CHECK(qpk_tokenizer_find(t, "\xC4\xA0", 2) == 220);
    CHECK(qpk_tokenizer_find(t, "<|im_end|>", 10) == 151645);
    /* Decoding skips specials on request; tokens decode to their bytes. */
    int32_t ids[] = {151644, 872, 198, 13048, 151645, 151657};
    char *txt = decode(t, ids, 6, true, &len);
    CHECK(txt && strcmp(txt, "user\nHi<tool_call>") == 0);
    free(txt);
    txt = decode(t, ids, 6, false, &len);
    CHECK(txt && strcmp(txt, "<|im_start|>user\nHi<|im_end|><tool_call>") == 0);
    free(txt);
    /* A character split across ids decodes to its bytes (concatenation works). */
    int32_t half[] = {378};
    txt = decode(t, half, 1, false, &len);
    CHECK(txt && len == 2 && memcmp(txt, "\xE2\x80", 2) == 0);
    free(txt);
}

/* Concurrent encodes of one tokenizer agree with each other (one gets the cache). */
static void *encode_thread(void *arg)
{
    const char *text = arg;
    int32_t *ids;
    size_t n;
    qpk_err e;
    uintptr_t sum = 0;
    for (int r = 0; r < 3; r++) {
        if (qpk_tokenizer_encode_alloc(g_fixture, text, strlen(text), true, &ids, &n, &e) != QPK_OK)
            return NULL;
        uintptr_t s = n;
        for (size_t i = 0; i < n; i++)
            s = s * 31 + (uintptr_t)ids[i];
        if (r > 0 && s != sum)
            return NULL;
        sum = s;
        free(ids);
    }
    return (void *)(sum | 1);
}

static void test_threads(const qpk_tokenizer *t, const char *dir)
{
    char path[4096];
    size_t tl;
    snprintf(path, sizeof path, "%s/text/eval_public.txt", dir);
    char *text = slurp(path, &tl);
    if (!text)
        return;
    g_fixture = t;
    pthread_t th[4];
    void *res[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, encode_thread, text);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], &res[i]);
    CHECK(res[0] != NULL && res[0] == res[1] && res[1] == res[2] && res[2] == res[3]);
    free(text);
}

int main(void)
{
    test_utf8_repair();
    test_nfc_basic();
    test_nfc_conformance();
    test_pretok();
    test_tiny();
    test_malformed();

    const char *dir = fixtures_dir();
    if (!dir) {
        th_summary("test_tokenizer (without fixtures)");
        return th_failed ? 1 : fixtures_missing();
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/qwen-tiny-a/tokenizer.json", dir);
    size_t jl;
    char *json = slurp(path, &jl);
    CHECK(json != NULL);
    qpk_tokenizer *t = NULL;
    qpk_err e = {0};
    if (json)
        CHECKF(qpk_tokenizer_load(&t, json, jl, &e) == QPK_OK, "%s", e.msg);
    free(json);
    if (t) {
        test_fixture_ids(t, dir);
        test_fixture_roundtrip(t, dir);
        test_fixture_edges(t);
        test_threads(t, dir);
    }
    qpk_tokenizer_free(t);
    return th_summary("test_tokenizer");
}
