/*
 * bench_tokenizer: single-threaded encode throughput of qpk_tokenizer, cold (a fresh
 * tokenizer per run, so the piece cache starts empty) and warm (the cache filled by a
 * previous run over the same text), the time to load tokenizer.json (parse, validate and
 * build every table), and decode throughput.
 *
 *   bench_tokenizer [TOKENIZER.json [TEXT...]] [-n RUNS]
 *
 * Defaults: the fixture tokenizer with eval_public.txt and calib.txt. Each number is the
 * best of RUNS (default 5). Targets: encode >= 10 MB/s, load < 150 ms.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qpk/tokenizer.h"

#ifndef QPK_FIXTURES_DIR
#define QPK_FIXTURES_DIR "../shared/fixtures"
#endif

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = b ? (size_t)n : 0;
    return b;
}

static qpk_tokenizer *load(const char *json, size_t len)
{
    qpk_tokenizer *t;
    qpk_err e = {0};
    if (qpk_tokenizer_load(&t, json, len, &e) != QPK_OK) {
        fprintf(stderr, "bench_tokenizer: %s\n", e.msg);
        exit(1);
    }
    return t;
}

static double encode_once(const qpk_tokenizer *t, const char *text, size_t len, size_t *n_ids)
{
    int32_t *ids;
    qpk_err e = {0};
    double t0 = now();
    if (qpk_tokenizer_encode_alloc(t, text, len, false, &ids, n_ids, &e) != QPK_OK) {
        fprintf(stderr, "bench_tokenizer: %s\n", e.msg);
        exit(1);
    }
    double dt = now() - t0;
    free(ids);
    return dt;
}

static void bench_text(const char *name, const char *text, size_t len, const char *json,
                       size_t json_len, int runs)
{
    double cold = 1e30, warm = 1e30, dec = 1e30;
    size_t n = 0;
    for (int r = 0; r < runs; r++) {
        qpk_tokenizer *t = load(json, json_len); /* outside the timing */
        double c = encode_once(t, text, len, &n);
        double w = encode_once(t, text, len, &n);
        cold = c < cold ? c : cold;
        warm = w < warm ? w : warm;
        int32_t *ids;
        size_t m, out_len;
        qpk_err e;
        qpk_tokenizer_encode_alloc(t, text, len, false, &ids, &m, &e);
        char *out = malloc(len * 3 + 1);
        double t0 = now();
        qpk_tokenizer_decode(t, ids, m, false, out, len * 3 + 1, &out_len, &e);
        double d = now() - t0;
        dec = d < dec ? d : dec;
        free(out);
        free(ids);
        qpk_tokenizer_free(t);
    }
    double mb = (double)len / 1e6;
    printf("%-18s %9zu bytes %8zu ids | encode cold %7.1f MB/s  warm %7.1f MB/s  (warm/cold %.2fx, "
           "target 10 MB/s: %s) | decode %7.1f MB/s\n",
           name, len, n, mb / cold, mb / warm, cold / warm, mb / cold >= 10 ? "met" : "MISSED",
           mb / dec);
}

int main(int argc, char **argv)
{
    int runs = 5;
    const char *paths[16];
    int np = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            runs = atoi(argv[++i]);
            if (runs < 1)
                runs = 1;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            printf("usage: bench_tokenizer [TOKENIZER.json [TEXT...]] [-n RUNS]\n");
            return 0;
        } else if (np < 16) {
            paths[np++] = argv[i];
        }
    }
    static const char *defaults[] = {QPK_FIXTURES_DIR "/qwen-tiny-a/tokenizer.json",
                                     QPK_FIXTURES_DIR "/text/eval_public.txt",
                                     QPK_FIXTURES_DIR "/text/calib.txt"};
    if (np == 0) {
        for (int i = 0; i < 3; i++)
            paths[np++] = defaults[i];
    }
    size_t json_len;
    char *json = read_file(paths[0], &json_len);
    if (!json) {
        fprintf(stderr, "bench_tokenizer: cannot read %s\n", paths[0]);
        return 1;
    }
    double best = 1e30, sum = 0;
    for (int r = 0; r < runs; r++) {
        double t0 = now();
        qpk_tokenizer *t = load(json, json_len);
        double dt = now() - t0;
        qpk_tokenizer_free(t);
        best = dt < best ? dt : best;
        sum += dt;
    }
    printf("load %s (%zu bytes): best %.1f ms, mean %.1f ms over %d runs (target < 150 ms: %s, "
           "%.2fx of it)\n",
           paths[0], json_len, best * 1e3, sum / runs * 1e3, runs, best < 0.150 ? "met" : "MISSED",
           best / 0.150);
    for (int i = 1; i < np; i++) {
        size_t len;
        char *text = read_file(paths[i], &len);
        if (!text) {
            fprintf(stderr, "bench_tokenizer: cannot read %s\n", paths[i]);
            continue;
        }
        const char *base = strrchr(paths[i], '/');
        bench_text(base ? base + 1 : paths[i], text, len, json, json_len, runs);
        free(text);
    }
    free(json);
    return 0;
}
