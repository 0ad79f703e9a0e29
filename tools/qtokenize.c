/* qtokenize: text to token ids and back with a model's tokenizer (qpk_tokenizer). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "qpk/tokenizer.h"

static void usage(void)
{
    printf("Usage: qtokenize TOKENIZER.json|MODEL.qpk|MODEL_DIR|MODEL.gguf [options] [FILE]\n"
           "\n"
           "Encodes the text of FILE (default: standard input) into token ids with the\n"
           "tokenizer of a model: a tokenizer.json, the one embedded in a .qpk, the\n"
           "tokenizer.json of a Hugging Face model folder, or the one a GGUF's\n"
           "tokenizer.ggml.* keys describe. The ids are those of\n"
           "tokenizers' encode(text, add_special_tokens=False): no BOS or EOS is added.\n"
           "Invalid UTF-8 is read as U+FFFD, as Python's decode(errors=\"replace\") does.\n"
           "\n"
           "Options:\n"
           "      --ids           print the ids on one line, separated by spaces (default)\n"
           "      --lines         print one id per line\n"
           "      --i32           write the ids as little-endian int32 (what qverify\n"
           "                      --tokens and qconvert --calib-tokens read)\n"
           "      --text          print one token per line: its id, a tab, and its text\n"
           "                      (non-printable bytes as \\n, \\t, \\xNN)\n"
           "      --no-special    the strings of special tokens (<|im_start|>, ...) are\n"
           "                      plain text, not their ids\n"
           "      --decode        the reverse: read ids (separated by spaces, newlines or\n"
           "                      commas) and write the text they decode to\n"
           "      --skip-special  with --decode: leave out special tokens\n"
           "  -h, --help          this help\n"
           "      --version       print the version\n"
           "\n"
           "Exit codes: 0 ok, 2 usage, 3 bad input (unsupported tokenizer, an id that is\n"
           "not a token), 4 I/O error, 5 internal.\n");
}

/* Reads a whole stream. */
static char *slurp_stream(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    while (b) {
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (n < cap) {
            if (ferror(f)) {
                free(b);
                return NULL;
            }
            break;
        }
        char *nb = realloc(b, cap *= 2);
        if (!nb)
            free(b);
        b = nb;
    }
    *len = n;
    return b;
}

enum mode { OUT_IDS, OUT_LINES, OUT_TEXT, OUT_I32 };

static void print_escaped(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c == '\r')
            fputs("\\r", stdout);
        else if (c == '\\')
            fputs("\\\\", stdout);
        else if (c < 0x20 || c == 0x7F)
            printf("\\x%02X", c);
        else
            putchar(c);
    }
}

static int encode(cli *c, const qpk_tokenizer *t, const char *in, size_t n, bool special, enum mode m)
{
    int32_t *ids;
    size_t count;
    qpk_err e = {0};
    if (qpk_tokenizer_encode_alloc(t, in, n, special, &ids, &count, &e) != QPK_OK)
        return cli_fail(c, &e);
    if (m == OUT_I32) { /* little-endian int32, what --tokens and --calib-tokens read */
        for (size_t i = 0; i < count; i++) {
            const uint32_t v = (uint32_t)ids[i];
            const unsigned char le[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                                         (unsigned char)(v >> 24)};
            fwrite(le, 1, 4, stdout);
        }
        free(ids);
        return fflush(stdout) == 0 ? QPK_EXIT_OK : QPK_EXIT_IO;
    }
    for (size_t i = 0; i < count; i++)
        printf(m == OUT_LINES ? "%d\n" : i ? " %d" : "%d", ids[i]);
    if (m == OUT_IDS)
        putchar('\n');
    free(ids);
    return QPK_EXIT_OK;
}

static int encode_text_view(cli *c, const qpk_tokenizer *t, const char *in, size_t n, bool special)
{
    int32_t *ids;
    size_t count;
    qpk_err e = {0};
    if (qpk_tokenizer_encode_alloc(t, in, n, special, &ids, &count, &e) != QPK_OK)
        return cli_fail(c, &e);
    char buf[65536 + 1];
    for (size_t i = 0; i < count; i++) {
        size_t len;
        printf("%d\t", ids[i]);
        if (qpk_tokenizer_decode(t, &ids[i], 1, false, buf, sizeof buf, &len, &e) == QPK_OK)
            print_escaped(buf, len);
        putchar('\n');
    }
    free(ids);
    return QPK_EXIT_OK;
}

static int decode(cli *c, const qpk_tokenizer *t, char *in, size_t n, bool skip)
{
    size_t count = 0, cap = 1024;
    int32_t *ids = malloc(cap * sizeof *ids);
    qpk_err e = {0};
    for (char *p = in, *end = in + n; ids && p < end;) {
        if (strchr(" \t\r\n,", *p)) {
            p++;
            continue;
        }
        char *q = p;
        while (q < end && !strchr(" \t\r\n,", *q) && *q)
            q++;
        char word[32];
        long long v;
        size_t wl = (size_t)(q - p);
        if (wl >= sizeof word || (memcpy(word, p, wl), word[wl] = 0, !cli_parse_int(word, 0, INT32_MAX, &v))) {
            free(ids);
            qpk_err_setf(&e, QPK_E_VALUE, "'%.*s' is not a token id", (int)(wl < 40 ? wl : 40), p);
            return cli_fail(c, &e);
        }
        if (count == cap) {
            int32_t *nid = realloc(ids, (cap *= 2) * sizeof *ids);
            if (!nid)
                free(ids);
            ids = nid;
            if (!ids)
                break;
        }
        ids[count++] = (int32_t)v;
        p = q;
    }
    if (!ids) {
        qpk_err_setf(&e, QPK_E_NOMEM, "out of memory");
        return cli_fail(c, &e);
    }
    size_t len;
    char *out = NULL;
    qpk_status s = qpk_tokenizer_decode(t, ids, count, skip, NULL, 0, &len, &e);
    if (s == QPK_OK && !(out = malloc(len + 1)))
        s = qpk_err_setf(&e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK)
        s = qpk_tokenizer_decode(t, ids, count, skip, out, len + 1, &len, &e);
    free(ids);
    if (s != QPK_OK) {
        free(out);
        return cli_fail(c, &e);
    }
    fwrite(out, 1, len, stdout);
    free(out);
    return QPK_EXIT_OK;
}

int main(int argc, char **argv)
{
    cli c;
    cli_init(&c, "qtokenize");
    const char *src = NULL, *file = NULL;
    enum mode m = OUT_IDS;
    bool special = true, do_decode = false, skip = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage();
            return QPK_EXIT_OK;
        } else if (strcmp(a, "--version") == 0) {
            printf("qtokenize %s (Unicode %s)\n", QPK_VERSION_STRING, qpk_tokenizer_unicode_version());
            return QPK_EXIT_OK;
        } else if (strcmp(a, "--ids") == 0) {
            m = OUT_IDS;
        } else if (strcmp(a, "--i32") == 0) {
            m = OUT_I32;
        } else if (strcmp(a, "--lines") == 0) {
            m = OUT_LINES;
        } else if (strcmp(a, "--text") == 0) {
            m = OUT_TEXT;
        } else if (strcmp(a, "--no-special") == 0) {
            special = false;
        } else if (strcmp(a, "--decode") == 0) {
            do_decode = true;
        } else if (strcmp(a, "--skip-special") == 0) {
            skip = true;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error(&c, "unknown option '%s'", a);
        } else if (!src) {
            src = a;
        } else if (!file) {
            file = a;
        } else {
            return cli_usage_error(&c, "unexpected argument '%s'", a);
        }
    }
    if (!src)
        return cli_usage_error(&c, "missing TOKENIZER.json, MODEL.qpk or MODEL_DIR");
    if (skip && !do_decode)
        return cli_usage_error(&c, "--skip-special goes with --decode");

    qpk_err e = {0};
    char *json = NULL;
    size_t json_len = 0;
    if (qpk_read_tokenizer_json(src, &json, &json_len, &e) != QPK_OK)
        return cli_fail(&c, &e);
    qpk_tokenizer *t;
    qpk_status s = qpk_tokenizer_load(&t, json, json_len, &e);
    free(json);
    if (s != QPK_OK) {
        qpk_err_prefix(&e, s, "%s", src);
        return cli_fail(&c, &e);
    }
    FILE *in = stdin;
    if (file && strcmp(file, "-") != 0 && !(in = fopen(file, "rb"))) {
        qpk_err_setf(&e, QPK_E_IO, "cannot open '%s': %s", file, strerror(errno));
        qpk_tokenizer_free(t);
        return cli_fail(&c, &e);
    }
    size_t n;
    char *text = slurp_stream(in, &n);
    if (in != stdin)
        fclose(in);
    int rc;
    if (!text) {
        qpk_err_setf(&e, QPK_E_IO, "cannot read '%s'", file ? file : "standard input");
        rc = cli_fail(&c, &e);
    } else if (do_decode) {
        rc = decode(&c, t, text, n, skip);
    } else if (m == OUT_TEXT) {
        rc = encode_text_view(&c, t, text, n, special);
    } else {
        rc = encode(&c, t, text, n, special, m);
    }
    free(text);
    qpk_tokenizer_free(t);
    if (rc == QPK_EXIT_OK && (fflush(stdout) != 0 || ferror(stdout))) {
        qpk_err_setf(&e, QPK_E_IO, "cannot write the output: %s", strerror(errno));
        rc = cli_fail(&c, &e);
    }
    return rc;
}
