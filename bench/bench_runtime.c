/*
 * Whole-model benchmark of the runtime, with the machine's limits measured in the
 * same run: prefill tokens/s (prompts of 128 and 512 tokens, logits of the last
 * one, as llama-bench does) against the f32 FMA peak, and decode tokens/s against
 * the memory-bandwidth floor (weight bytes read per token / streaming bandwidth) and
 * against the ceiling the gemv kernels alone set on this machine (kernel_seconds).
 *
 * Usage: bench_runtime MODEL [threads] [--scalar | --decode-only | --prefill-only | --tables A,B]
 *   MODEL: a .qpk or an HF folder (e.g. from `qgen DIR --preset 0.5b`).
 *   --decode-only: 256 decode tokens and nothing else, for a profiler (perf record):
 *   where one token's time goes, op by op. Decode is also timed without the head
 *   (no logits asked for), which splits the head from the layers.
 *   --prefill-only: the two prompts, 8 times each rather than 3, and no decode (the same use).
 *   --tables A,B: decode with kernel table A against table B side by side, token by token
 *   (two contexts on one pool, each token to one then the other, the order alternating),
 *   so that both see the same machine: this VM's neighbours move a whole run by 10-25%,
 *   far more than a kernel change. Also checks that both give the same logits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limits.h"
#include "qpk/verify.h"

/*
 * FLOPs of the layers' weight matrices per token (attention scores and the head excluded):
 * a sparse layer counts its router, the experts a token is routed to and the shared expert.
 */
static double layer_flops_per_token(const qpk_config *c)
{
    double H = (double)c->hidden_size, I = (double)c->intermediate_size, M = (double)c->moe_intermediate_size;
    double q = (double)(c->n_heads * c->head_dim), kv = (double)(c->n_kv_heads * c->head_dim);
    double f = 0;
    for (int l = 0; l < c->n_layers; l++)
        f += 2 * (H * q * 2 + H * kv * 2) +
             (qpk_layer_is_sparse(c, l) ? 2 * H * (double)c->n_experts + 6 * H * M * (double)c->n_experts_used +
                                              6 * H * (double)c->shared_expert_intermediate_size
                                        : 6 * H * I);
    return f;
}

/*
 * Decode with tables a and b, token by token on one pool: 4 passes of 16 prompt tokens and
 * 256 decoded ones (logits of each), every token's time to its table. Returns 0 when both
 * gave the same logits throughout.
 */
static int decode_ab(qpk_model *m, qpk_pool *pool, const int32_t *tok, const char *a, const char *b)
{
    const qpk_config *c = qpk_model_config(m);
    const char *names[2] = {a, b};
    qpk_err e = {0};
    qpk_context *ctx[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        qpk_context_opts o = {.n_ctx = 1024, .n_batch = 512, .pool = pool, .kernels = names[i]};
        if (qpk_context_create(&ctx[i], m, &o, &e) != QPK_OK) {
            fprintf(stderr, "%s\n", e.msg);
            qpk_context_free(ctx[0]);
            return 1;
        }
    }
    const int prompt = 16, n = 256, passes = 4; /* tok holds prompt + n tokens and more */
    float *logits[2] = {malloc((size_t)c->vocab_size * 4), malloc((size_t)c->vocab_size * 4)};
    double t[2] = {0, 0};
    bool same = true;
    qpk_status s = QPK_OK;
    for (int pass = 0; pass < passes && s == QPK_OK; pass++) {
        for (int i = 0; i < 2 && s == QPK_OK; i++) {
            qpk_context_reset(ctx[i]);
            s = qpk_eval(ctx[i], tok, prompt, logits[i], 1, &e);
        }
        for (int j = 0; j < n && s == QPK_OK; j++) {
            for (int r = 0; r < 2 && s == QPK_OK; r++) {
                const int i = (j + pass + r) % 2;
                double t0 = bench_now();
                s = qpk_eval(ctx[i], tok + prompt + j, 1, logits[i], 1, &e);
                t[i] += bench_now() - t0;
            }
            same &= !memcmp(logits[0], logits[1], (size_t)c->vocab_size * 4);
        }
    }
    if (s != QPK_OK)
        fprintf(stderr, "%s\n", e.msg);
    const double tps[2] = {passes * n / t[0], passes * n / t[1]};
    if (s == QPK_OK)
        printf("decode tg%d x %d, token by token: %s %.1f tokens/s, %s %.1f tokens/s, %s/%s %.3f; logits %s\n",
               n, passes, a, tps[0], b, tps[1], b, a, tps[1] / tps[0], same ? "identical" : "DIFFER");
    free(logits[0]), free(logits[1]);
    qpk_context_free(ctx[0]), qpk_context_free(ctx[1]);
    return same && s == QPK_OK ? 0 : 1;
}

/*
 * The decode rate the kernels alone allow on this machine: each matrix a token reads, as one
 * thread's gemv over a slice of its rows small enough to stay in L2 (best of many calls),
 * scaled to all the rows a token reads and shared evenly by the threads (each on a core of its
 * own: SMT siblings share one core's pipes, and for them the ceiling is too high). No memory
 * traffic and no other op counts, so where this ceiling is below the bandwidth floor, decode is
 * bound by the kernels' instructions here and no prefetching or threading can bring it there.
 */
#define SLICE_BYTES (192 << 10)

typedef struct {
    uint32_t type, group;
    int64_t cols;
    double seconds_per_row;
} kernel_rate;

typedef struct {
    const qpk_kernels *k;
    kernel_rate rates[32]; /* the kinds of matrix measured so far */
    int n_rates;
    double layers, head; /* one thread's seconds per token */
} kernel_sum;

/* One thread's seconds per row of w's kind (type, group, width), measured once per kind. */
static double row_seconds(kernel_sum *s, const qpk_matrix *w)
{
    for (int i = 0; i < s->n_rates; i++)
        if (s->rates[i].type == w->type && s->rates[i].group == w->group_size && s->rates[i].cols == w->cols)
            return s->rates[i].seconds_per_row;
    int64_t r = (int64_t)(SLICE_BYTES / qpk_matrix_row_bytes(w));
    r = r < 4 ? 4 : r > w->rows ? w->rows : r;
    float *x = malloc((size_t)w->cols * sizeof *x), *y = malloc((size_t)r * sizeof *y);
    float *scratch = malloc(qpk_gemm_scratch_floats(w->cols) * sizeof *scratch);
    for (int64_t i = 0; i < w->cols; i++)
        x[i] = (float)(i % 13) * 0.1f - 0.6f;
    double best = 1e30, spent = 0;
    for (int call = 0; call < 2000 && (call < 20 || spent < 0.05); call++) {
        double t = bench_now();
        s->k->gemv(w, x, y, 0, r, scratch);
        t = bench_now() - t;
        spent += t, best = t < best ? t : best;
    }
    free(x), free(y), free(scratch);
    if (s->n_rates < (int)(sizeof s->rates / sizeof *s->rates))
        s->rates[s->n_rates++] = (kernel_rate){w->type, w->group_size, w->cols, best / (double)r};
    return best / (double)r;
}

/* The matrices qpk_model_decode_reads lists, but for the embedding's row (a copy, not a gemv). */
static void add_kernel_seconds(void *ud, qpk_role role, int layer, const qpk_matrix *w, int64_t rows)
{
    kernel_sum *s = ud;
    (void)layer;
    if (role == QPK_ROLE_EMBED)
        return;
    const double t = (double)rows * row_seconds(s, w);
    *(role == QPK_ROLE_LM_HEAD ? &s->head : &s->layers) += t;
}

/* The kernels' seconds per token on `threads` threads: the layers' matrices and the head's. */
static void kernel_seconds(const qpk_model *m, const qpk_kernels *k, int threads, double *layers, double *head)
{
    kernel_sum s = {.k = k};
    qpk_model_decode_reads(m, add_kernel_seconds, &s);
    *layers = s.layers / threads, *head = s.head / threads;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr,
                "usage: bench_runtime MODEL [threads] [--scalar | --decode-only | --prefill-only | --tables A,B]\n");
        return 2;
    }
    int threads = argc > 2 ? atoi(argv[2]) : 0;
    bool scalar = argc > 3 && !strcmp(argv[3], "--scalar"), decode_only = argc > 3 && !strcmp(argv[3], "--decode-only");
    bool prefill_only = argc > 3 && !strcmp(argv[3], "--prefill-only");
    qpk_err e = {0};
    qpk_source *src = NULL;
    qpk_model *m = NULL;
    qpk_pool *pool;
    if (qpk_source_open(&src, argv[1], NULL, &e) != QPK_OK || qpk_model_from_source(&m, src, &e) != QPK_OK ||
        qpk_pool_create(&pool, threads, &e) != QPK_OK) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    const qpk_config *c = qpk_model_config(m);
    int32_t *tok = malloc(512 * sizeof *tok);
    for (int i = 0; i < 512; i++)
        tok[i] = (int32_t)((i * 7919 + 13) % c->vocab_size);
    if (argc > 3 && !strcmp(argv[3], "--tables")) {
        char a[64];
        const char *comma = argc > 4 ? strchr(argv[4], ',') : NULL;
        int rc = 2;
        if (!comma || comma - argv[4] >= (long)sizeof a) {
            fprintf(stderr, "--tables A,B: two kernel tables by name, e.g. avx512,avx512vbmi\n");
        } else {
            snprintf(a, sizeof a, "%.*s", (int)(comma - argv[4]), argv[4]);
            rc = decode_ab(m, pool, tok, a, comma + 1);
        }
        free(tok);
        qpk_pool_free(pool);
        qpk_model_free(m);
        qpk_source_close(src);
        return rc;
    }
    double peak = bench_fma_peak(pool), bw = bench_read_bandwidth(pool);
    int n_threads = qpk_pool_threads(pool);
    qpk_pool_free(pool);

    qpk_context *ctx;
    qpk_context_opts o = {.n_ctx = 1024, .n_batch = 512, .n_threads = n_threads, .scalar = scalar};
    if (qpk_context_create(&ctx, m, &o, &e) != QPK_OK) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    qpk_eval(ctx, tok, 8, logits, 1, &e); /* warm the mapping and the caches */
    printf("model %s: hidden %lld, layers %lld, vocab %lld; %d threads, kernels %s\n", argv[1],
           (long long)c->hidden_size, (long long)c->n_layers, (long long)c->vocab_size, n_threads,
           qpk_context_kernels(ctx));
    printf("machine limits: f32 FMA peak %.1f GFLOP/s, streaming read %.1f GB/s\n\n", peak, bw);

    const int prompts[2] = {128, 512};
    for (int p = 0; p < 2 && !decode_only; p++) {
        double best = 1e30;
        for (int rep = 0; rep < (prefill_only ? 8 : 3); rep++) {
            qpk_context_reset(ctx);
            double t = bench_now();
            qpk_eval(ctx, tok, prompts[p], logits, 1, &e);
            t = bench_now() - t;
            best = t < best ? t : best;
        }
        /* The head runs for the last token only, as it does in llama-bench. */
        double flops = prompts[p] * layer_flops_per_token(c) + 2.0 * (double)c->hidden_size * (double)c->vocab_size;
        double tps = prompts[p] / best, gflops = flops / best / 1e9;
        printf("prefill pp%-4d %8.1f tokens/s  %7.1f GFLOP/s = %3.0f%% of the FMA peak\n", prompts[p], tps, gflops,
               100 * gflops / peak);
    }
    /*
     * Decode: 64 tokens after a 16-token prompt, logits of each; then the same without the head.
     * A first, untimed pass grows the KV cache (new pages), which would otherwise count against
     * whichever timed pass came first (llama-bench also warms up).
     */
    const int n = decode_only ? 256 : 64, prompt = 16;
    double t[2] = {0, 0};
    for (int pass = 0; pass < 3 && !prefill_only; pass++) {
        int head = pass < 2;
        qpk_context_reset(ctx);
        qpk_eval(ctx, tok, prompt, logits, 1, &e);
        double dt = bench_now();
        for (int i = 0; i < n; i++)
            qpk_eval(ctx, tok + prompt + (i % 256), 1, logits, head, &e);
        t[head] = bench_now() - dt;
    }
    if (!prefill_only) {
        double bytes = (double)qpk_model_decode_bytes(m), floor_tps = bw * 1e9 / bytes, tps = n / t[1];
        /* The f32 K and V rows a token reads at the mean position: prompt + (n - 1) / 2 before it, and its own. */
        double kv = (double)c->n_layers * 2 * (double)(c->n_kv_heads * c->head_dim) * 4 * (prompt + (n + 1) / 2.0);
        printf("decode tg%-5d %8.1f tokens/s  %7.2f GB/s of weights; floor %.1f tokens/s (%.0f MB/token) -> %.0f%% "
               "of it\n",
               n, tps, tps * bytes / 1e9, floor_tps, bytes / 1e6, 100 * tps / floor_tps);
        printf("decode reads   %8.2f GB/s of weights and KV cache (%.0f + %.0f MB/token) = %.0f%% of the streaming "
               "read\n",
               tps * (bytes + kv) / 1e9, bytes / 1e6, kv / 1e6, 100 * tps * (bytes + kv) / 1e9 / bw);
        printf("decode split   %8.2f ms/token: layers %.2f ms, head %.2f ms\n", 1e3 * t[1] / n, 1e3 * t[0] / n,
               1e3 * (t[1] - t[0]) / n);
        double kl, kh;
        kernel_seconds(m, qpk_context_kernel_table(ctx), n_threads, &kl, &kh);
        printf("decode ceiling %8.1f tokens/s from the kernels alone (layers %.2f ms, head %.2f ms: each matrix's "
               "gemv from L2 on one thread, shared by %d) = %.0f%% of the floor; decode ran at %.0f%% of it\n",
               1 / (kl + kh), 1e3 * kl, 1e3 * kh, n_threads, 100 / (kl + kh) / floor_tps, 100 * tps * (kl + kh));
    }
    free(tok), free(logits);
    qpk_context_free(ctx);
    qpk_model_free(m);
    qpk_source_close(src);
    return 0;
}
