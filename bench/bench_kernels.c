/*
 * Per-kernel benchmark with the machine's limits measured in the same run:
 *  - f32 FMA peak (independent FMA chains in registers, all threads);
 *  - streaming-read bandwidth (sum of a buffer far larger than the caches, all threads);
 *  - gemm (prefill) GFLOP/s and gemv (decode) GB/s of weights, for each weight type,
 *    on Qwen1.5-0.5B shapes, each as a fraction of the limit that bounds it.
 *
 * Usage: bench_kernels [threads] [--scalar|--avx2|--avx512|--avx512vbmi]
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "limits.h"

/* ------------------------------------------------------------ kernels */

/* qpk_matmul itself, so that the tasks are the runtime's */
static double run_mm(qpk_pool *pool, const qpk_kernels *k, const qpk_matrix *w, const float *x, float *y, int64_t T,
                     int reps)
{
    size_t sp = qpk_gemm_scratch_floats(w->cols);
    float *scratch = malloc(sp * (size_t)qpk_pool_threads(pool) * sizeof(float));
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = bench_now();
        qpk_matmul(pool, k, w, x, T, y, scratch);
        t = bench_now() - t;
        best = t < best ? t : best;
    }
    free(scratch);
    return best;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    const char *table = argc > 2 && !strncmp(argv[2], "--", 2) ? argv[2] + 2 : NULL; /* a table by name: --avx512 ... */
    qpk_pool *pool;
    qpk_err e;
    if (qpk_pool_create(&pool, threads, &e) != QPK_OK)
        return 1;
    const qpk_kernels *k = table ? qpk_kernels_named(table) : qpk_kernels_best();
    if (!k) {
        fprintf(stderr, "no '%s' kernels on this CPU\n", table);
        return 2;
    }
    double peak = bench_fma_peak(pool), bw = bench_read_bandwidth(pool);
    printf("machine: %d threads, kernels %s\n", qpk_pool_threads(pool), k->name);
    printf("f32 FMA peak        %8.1f GFLOP/s\n", peak);
    printf("streaming read      %8.1f GB/s\n\n", bw);

    /* Qwen1.5-0.5B: down_proj-like [1024 x 2816] and gate-like [2816 x 1024]; the head [151936 x 1024]. */
    const struct {
        const char *name;
        int64_t rows, cols;
    } shapes[] = {{"gate/up 2816x1024", 2816, 1024}, {"down 1024x2816", 1024, 2816}, {"head 151936x1024", 151936, 1024}};
    const struct {
        uint32_t type, group;
    } types[] = {{QPK_TYPE_F32, 0},    {QPK_TYPE_BF16, 0},  {QPK_TYPE_F16, 0},    {QPK_TYPE_INT8, 32},
                 {QPK_TYPE_INT4S, 32}, {QPK_TYPE_INT4, 32}, {QPK_TYPE_INT4, 128}, {QPK_TYPE_MLX4, 64},
                 {QPK_TYPE_MLX8, 64},  {QPK_TYPE_Q4_K, 256}, {QPK_TYPE_Q6_K, 256}, {QPK_TYPE_IQ4_XS, 256},
                 {QPK_TYPE_IQ4_NL, 32}};
    printf("%-18s %-9s %14s %8s %14s %8s\n", "matrix", "type", "gemm T=512", "of peak", "gemv GB/s", "of bw");
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
            int64_t R = shapes[s].rows, C = shapes[s].cols, T = 512;
            qpk_matrix w = {types[t].type, types[t].group, R, C, NULL};
            size_t wb = qpk_matrix_row_bytes(&w) * (size_t)R;
            uint8_t *wd = malloc(wb);
            if (qpk_type_is_quantized(types[t].type)) { /* real blocks: RTN of pseudo-random rows */
                float *row = malloc((size_t)C * sizeof *row);
                for (int64_t r = 0; r < R; r++) {
                    for (int64_t i = 0; i < C; i++)
                        row[i] = (float)((uint32_t)((r * C + i) * 2654435761u) >> 8) / 16777216.0f - 0.5f;
                    qpk_quantize_row(w.type, w.group_size, row, C, wd + (size_t)r * qpk_matrix_row_bytes(&w), &e);
                }
                free(row);
            } else {
                for (size_t i = 0; i < wb / 2; i++)
                    ((uint16_t *)wd)[i] = (uint16_t)(0x3c00 ^ (i * 2654435761u >> 20 & 0x3ff)); /* finite f16/bf16 */
            }
            if (types[t].type == QPK_TYPE_F32)
                for (size_t i = 0; i < wb / 4; i++)
                    ((float *)wd)[i] = (float)(i % 97) * 0.01f;
            w.data = wd;
            bool big = R > 100000;
            int64_t TT = big ? 64 : T;
            float *x = malloc((size_t)(TT * C) * sizeof *x), *y = malloc((size_t)(TT * R) * sizeof *y);
            for (int64_t i = 0; i < TT * C; i++)
                x[i] = (float)(i % 13) * 0.1f;
            double tg = run_mm(pool, k, &w, x, y, TT, big ? 2 : 3);
            double tv = run_mm(pool, k, &w, x, y, 1, 5);
            double gflops = 2.0 * (double)TT * (double)R * (double)C / tg / 1e9, gbs = (double)wb / tv / 1e9;
            char tname[32];
            snprintf(tname, sizeof tname, types[t].group ? "%s/g%u" : "%s", qpk_type_name(types[t].type),
                     types[t].group);
            printf("%-18s %-9s %8.1f GF/s%s %7.0f%% %9.1f GB/s %7.0f%%\n", shapes[s].name, tname, gflops,
                   big ? "*" : " ", 100 * gflops / peak, gbs, 100 * gbs / bw);
            free(wd), free(x), free(y);
        }
    printf("\n* head gemm with T=64 (a perplexity piece)\n");
    qpk_pool_free(pool);
    return 0;
}
