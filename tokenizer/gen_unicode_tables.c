/*
 * gen_unicode_tables: writes tokenizer/unicode_tables.c from the Unicode Character
 * Database, so that the tokenizer's NFC and its regex character classes come from the
 * same release and nobody edits the tables by hand.
 *
 *   gen_unicode_tables [UCD_DIR] > tokenizer/unicode_tables.c      (default /usr/share/unicode)
 *
 * Reads UnicodeData.txt (general category, combining class, canonical decompositions),
 * PropList.txt (White_Space), CompositionExclusions.txt and DerivedNormalizationProps.txt
 * (NFC_QC, and Full_Composition_Exclusion as a cross-check of what we derive). A tool, not
 * part of the library: it may print and exit.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unicode.h"

#define NCP 0x110000u
#define BLOCK 128u /* code points per second-stage block */

static uint8_t g_props[NCP], g_ccc[NCP], g_excluded[NCP], g_fce[NCP];
static int8_t g_decomp_len[NCP];      /* raw canonical mapping length (0: none) */
static uint32_t g_decomp[NCP][4];     /* raw canonical mapping (never longer than 4) */
static char g_version[32] = "unknown";

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "gen_unicode_tables: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static FILE *open_ucd(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f)
        die("cannot open %s", path);
    return f;
}

/* "0041..005A ; Prop" or "0041 ; Prop": the range, and the text after the first ';'. */
static char *parse_range(char *line, uint32_t *lo, uint32_t *hi)
{
    char *hash = strchr(line, '#');
    if (hash)
        *hash = 0;
    char *semi = strchr(line, ';');
    if (!semi)
        return NULL;
    *semi = 0;
    char *dots = strstr(line, "..");
    *lo = (uint32_t)strtoul(line, NULL, 16);
    *hi = dots ? (uint32_t)strtoul(dots + 2, NULL, 16) : *lo;
    if (*lo > *hi || *hi >= NCP)
        die("bad range in '%s'", line);
    char *v = semi + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    return v;
}

/* The first word of s (up to space, ';', tab or end) equals w. */
static int word_is(const char *s, const char *w)
{
    size_t n = strlen(w);
    return strncmp(s, w, n) == 0 && (s[n] == 0 || s[n] == ' ' || s[n] == ';' || s[n] == '\t' ||
                                     s[n] == '\n' || s[n] == '\r');
}

static void read_unicode_data(const char *dir)
{
    FILE *f = open_ucd(dir, "UnicodeData.txt");
    char line[1024];
    uint32_t range_first = 0;
    int in_range = 0;
    while (fgets(line, sizeof line, f)) {
        char *field[15];
        int nf = 0;
        char *p = line;
        field[nf++] = p;
        for (; *p && nf < 15; p++)
            if (*p == ';') {
                *p = 0;
                field[nf++] = p + 1;
            }
        if (nf < 14)
            continue;
        uint32_t cp = (uint32_t)strtoul(field[0], NULL, 16);
        if (cp >= NCP)
            die("code point %X out of range", cp);
        const char *gc = field[2];
        uint8_t props = 0;
        if (gc[0] == 'L' && strchr("ultmo", gc[1]))
            props |= QPK_UC_L;
        if (gc[0] == 'N' && strchr("dlo", gc[1]))
            props |= QPK_UC_N;
        unsigned ccc = (unsigned)atoi(field[3]);
        if (ccc > 254)
            die("combining class %u of %X", ccc, cp);
        size_t nl = strlen(field[1]);
        if (nl > 7 && strcmp(field[1] + nl - 7, ", Last>") == 0) {
            if (!in_range)
                die("range end %X without a start", cp);
            for (uint32_t c = range_first; c <= cp; c++)
                g_props[c] |= props, g_ccc[c] = (uint8_t)ccc;
            in_range = 0;
            continue;
        }
        if (nl > 8 && strcmp(field[1] + nl - 8, ", First>") == 0) {
            range_first = cp;
            in_range = 1;
        }
        g_props[cp] |= props;
        g_ccc[cp] = (uint8_t)ccc;
        const char *d = field[5];
        if (*d && *d != '<') { /* canonical (untagged) decomposition */
            char *end;
            int n = 0;
            for (;;) {
                unsigned long v = strtoul(d, &end, 16);
                if (end == d)
                    break;
                if (n == 4)
                    die("decomposition of %X longer than 4", cp);
                g_decomp[cp][n++] = (uint32_t)v;
                d = end;
            }
            g_decomp_len[cp] = (int8_t)n;
        }
    }
    fclose(f);
}

static void read_white_space(const char *dir)
{
    FILE *f = open_ucd(dir, "PropList.txt");
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        uint32_t lo, hi;
        char *v = parse_range(line, &lo, &hi);
        if (!v || !word_is(v, "White_Space"))
            continue;
        for (uint32_t c = lo; c <= hi; c++)
            g_props[c] |= QPK_UC_WS, n++;
    }
    fclose(f);
    if (n < 20)
        die("PropList.txt: only %d White_Space code points", n);
}

static void read_exclusions(const char *dir)
{
    FILE *f = open_ucd(dir, "CompositionExclusions.txt");
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        char *end;
        unsigned long v = strtoul(line, &end, 16);
        if (end != line && v < NCP)
            g_excluded[v] = 1;
    }
    fclose(f);
}

static void read_norm_props(const char *dir)
{
    FILE *f = open_ucd(dir, "DerivedNormalizationProps.txt");
    char line[1024];
    if (fgets(line, sizeof line, f)) {
        const char *v = strstr(line, "DerivedNormalizationProps-");
        if (v) {
            v += strlen("DerivedNormalizationProps-");
            size_t n = strcspn(v, ".t");
            while (v[n] == '.' && v[n + 1] >= '0' && v[n + 1] <= '9')
                n += 1 + strcspn(v + n + 1, ".t");
            if (n < sizeof g_version)
                memcpy(g_version, v, n), g_version[n] = 0;
        }
    }
    while (fgets(line, sizeof line, f)) {
        uint32_t lo, hi;
        char *v = parse_range(line, &lo, &hi);
        if (!v)
            continue;
        uint8_t qc = 0;
        if (word_is(v, "NFC_QC")) {
            char *val = strchr(v, ';');
            if (!val)
                die("NFC_QC line without a value");
            val++;
            while (*val == ' ')
                val++;
            qc = *val == 'N' ? QPK_UC_QC_NO : *val == 'M' ? QPK_UC_QC_MAYBE : 0;
            for (uint32_t c = lo; c <= hi; c++)
                g_props[c] |= qc;
        } else if (word_is(v, "Full_Composition_Exclusion")) {
            for (uint32_t c = lo; c <= hi; c++)
                g_fce[c] = 1;
        }
    }
    fclose(f);
}

/* Full canonical decomposition of cp (recursive) into out; returns its length. */
static int full_decomp(uint32_t cp, uint32_t *out, int cap)
{
    if (g_decomp_len[cp] == 0) {
        if (cap < 1)
            die("decomposition overflow at %X", cp);
        out[0] = cp;
        return 1;
    }
    int n = 0;
    for (int i = 0; i < g_decomp_len[cp]; i++)
        n += full_decomp(g_decomp[cp][i], out + n, cap - n);
    return n;
}

/* ------------------------------------------------------------------- output */

static void emit_u8(const char *type, const char *name, const uint8_t *v, size_t n)
{
    printf("const %s %s[%zu] = {", type, name, n);
    for (size_t i = 0; i < n; i++)
        printf("%s%u,", i % 24 ? "" : "\n    ", v[i]);
    printf("\n};\n\n");
}

static void emit_u16(const char *name, const uint16_t *v, size_t n)
{
    printf("const uint16_t %s[%zu] = {", name, n);
    for (size_t i = 0; i < n; i++)
        printf("%s%u,", i % 16 ? "" : "\n    ", v[i]);
    printf("\n};\n\n");
}

/*
 * Two-stage table over [0, limit): limit is one past the last block holding a non-zero
 * value (code points at or past it read 0); index[cp / BLOCK] selects a deduplicated block.
 */
static void emit_two_stage(const char *prefix, const uint8_t *val)
{
    uint32_t last = 0;
    for (uint32_t c = 0; c < NCP; c++)
        if (val[c])
            last = c;
    uint32_t nblocks = last / BLOCK + 1;
    uint16_t *index = malloc(nblocks * sizeof *index);
    uint8_t *blocks = malloc((size_t)nblocks * BLOCK);
    uint32_t nuniq = 0;
    for (uint32_t b = 0; b < nblocks; b++) {
        const uint8_t *blk = val + (size_t)b * BLOCK;
        uint32_t u = 0;
        while (u < nuniq && memcmp(blocks + (size_t)u * BLOCK, blk, BLOCK) != 0)
            u++;
        if (u == nuniq) {
            if (nuniq == 65535)
                die("too many blocks");
            memcpy(blocks + (size_t)nuniq++ * BLOCK, blk, BLOCK);
        }
        index[b] = (uint16_t)u;
    }
    char name[64];
    printf("const uint32_t qpk_uc_%s_limit = 0x%X;\n\n", prefix, nblocks * BLOCK);
    snprintf(name, sizeof name, "qpk_uc_%s_index", prefix);
    emit_u16(name, index, nblocks);
    snprintf(name, sizeof name, "qpk_uc_%s_blocks", prefix);
    emit_u8("uint8_t", name, blocks, (size_t)nuniq * BLOCK);
    free(index);
    free(blocks);
}

static void emit_decompositions(void)
{
    static uint32_t pool[NCP / 8], buf[32];
    uint32_t n = 0, npool = 0;
    printf("const uint32_t qpk_uc_decomp_cp[] = {");
    for (uint32_t c = 0; c < NCP; c++)
        if (g_decomp_len[c])
            printf("%s0x%X,", n++ % 10 ? "" : "\n    ", c);
    printf("\n};\n\nconst uint16_t qpk_uc_decomp_start[] = {");
    uint32_t i = 0;
    for (uint32_t c = 0; c < NCP; c++) {
        if (!g_decomp_len[c])
            continue;
        int len = full_decomp(c, buf, 32);
        if (len > QPK_UC_MAX_DECOMP)
            die("full decomposition of %X has %d code points", c, len);
        printf("%s%u,", i++ % 16 ? "" : "\n    ", npool);
        memcpy(pool + npool, buf, (size_t)len * sizeof *buf);
        npool += (uint32_t)len;
        if (npool > 65000)
            die("decomposition pool too large");
    }
    printf("%s%u,\n};\n\n", i % 16 ? "" : "\n    ", npool);
    printf("const uint32_t qpk_uc_decomp_pool[] = {");
    for (uint32_t k = 0; k < npool; k++)
        printf("%s0x%X,", k % 10 ? "" : "\n    ", pool[k]);
    printf("\n};\n\nconst uint32_t qpk_uc_n_decomp = %u;\n\n", n);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * Primary composites: a two-code-point canonical mapping that is not a full composition
 * exclusion. We derive the exclusions (the listed ones, singletons, non-starter
 * decompositions) and insist they match the UCD's own Full_Composition_Exclusion.
 */
static void emit_compositions(void)
{
    static uint64_t pairs[NCP / 64];
    uint32_t n = 0;
    for (uint32_t c = 0; c < NCP; c++) {
        if (!g_decomp_len[c])
            continue;
        int derived = g_excluded[c] || g_decomp_len[c] == 1 || g_ccc[c] != 0 ||
                      g_ccc[g_decomp[c][0]] != 0;
        if (derived != g_fce[c])
            die("composition exclusion of %X: derived %d, UCD says %d", c, derived, g_fce[c]);
        if (derived)
            continue;
        if (g_decomp_len[c] != 2)
            die("composite %X maps to %d code points", c, g_decomp_len[c]);
        pairs[n++] = ((uint64_t)g_decomp[c][0] << 42) | ((uint64_t)g_decomp[c][1] << 21) | c;
    }
    qsort(pairs, n, sizeof *pairs, cmp_u64);
    printf("const uint64_t qpk_uc_comp[] = {");
    for (uint32_t i = 0; i < n; i++)
        printf("%s0x%llXull,", i % 4 ? " " : "\n    ", (unsigned long long)pairs[i]);
    printf("\n};\n\nconst uint32_t qpk_uc_n_comp = %u;\n", n);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "/usr/share/unicode";
    if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
        fprintf(stderr, "usage: gen_unicode_tables [UCD_DIR] > unicode_tables.c\n");
        return 2;
    }
    read_unicode_data(dir);
    read_white_space(dir);
    read_exclusions(dir);
    read_norm_props(dir);

    printf("/*\n * GENERATED by tokenizer/gen_unicode_tables.c from the Unicode %s Character\n"
           " * Database: do not edit. See tokenizer/README.md to regenerate.\n */\n",
           g_version);
    printf("#include \"unicode.h\"\n\n");
    printf("const char qpk_uc_version[] = \"%s\";\n\n", g_version);
    emit_two_stage("prop", g_props);
    emit_two_stage("ccc", g_ccc);
    emit_decompositions();
    emit_compositions();
    return ferror(stdout) ? 1 : 0;
}
