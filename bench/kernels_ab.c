/*
 * One kernel table against the same table of another revision, in one process: the
 * revision's quant/kernels_avx2.c is compiled beside this build's with its tables renamed
 * (bench/kernels_ab.sh does it), and each gemv runs with one then the other, the order
 * alternating, one thread, best time of each. On a VM whose neighbours move whole runs by
 * 10-30%, separate runs cannot show a 5% kernel change; call by call both see the same
 * machine. Also checks that both give the same bits.
 *
 * Usage (through bench/kernels_ab.sh): kernels_ab [reps]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limits.h"

/* the other revision's tables, renamed by kernels_ab.sh */
extern const qpk_kernels qpk_kernels_avx2_table_ab, qpk_kernels_avx512_table_ab, qpk_kernels_avx512vbmi_table_ab;

static const qpk_kernels *other_named(const char *name)
{
    const qpk_kernels *t[] = {&qpk_kernels_avx2_table_ab, &qpk_kernels_avx512_table_ab,
                              &qpk_kernels_avx512vbmi_table_ab};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        if (!strcmp(t[i]->name, name))
            return t[i];
    return NULL;
}

int main(int argc, char **argv)
{
    const int reps = argc > 1 ? atoi(argv[1]) : 40;
    const qpk_kernels *now = qpk_kernels_best(), *then = other_named(now->name);
    if (!then || reps < 1) {
        fprintf(stderr, "usage: kernels_ab [reps >= 1] (the other revision has no '%s' table)\n", now->name);
        return 2;
    }
    const struct {
        uint32_t type, group;
    } types[] = {{QPK_TYPE_INT8, 32}, {QPK_TYPE_INT4S, 32},  {QPK_TYPE_INT4, 32},   {QPK_TYPE_INT4, 128},
                 {QPK_TYPE_MLX4, 64}, {QPK_TYPE_Q4_K, 256}, {QPK_TYPE_Q6_K, 256}, {QPK_TYPE_IQ4_XS, 256}};
    /* a matrix in L2, and the 0.5B shape's gate/up and down (in L3) */
    const struct {
        int64_t rows, cols;
    } shapes[] = {{256, 1024}, {2816, 1024}, {1024, 2816}};
    printf("table %s, one thread, gemv GB/s of weights, best of %d calls each, alternating\n", now->name, reps);
    printf("%-11s %-10s %9s %9s %8s\n", "matrix", "type", "other", "this", "ratio");
    int differ = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
            const int64_t R = shapes[s].rows, C = shapes[s].cols;
            qpk_matrix w = {types[t].type, types[t].group, R, C, NULL, NULL};
            const size_t rb = qpk_matrix_row_bytes(&w);
            uint8_t *wd = malloc(rb * (size_t)R);
            float *row = malloc((size_t)C * sizeof *row), *x = malloc((size_t)C * sizeof *x);
            float *y[2] = {malloc((size_t)R * sizeof(float)), malloc((size_t)R * sizeof(float))};
            float *scratch = malloc(qpk_gemm_scratch_floats(C) * sizeof(float));
            qpk_err e;
            for (int64_t r = 0; r < R; r++) { /* real blocks: RTN of pseudo-random rows */
                for (int64_t i = 0; i < C; i++)
                    row[i] = (float)((uint32_t)((r * C + i) * 2654435761u) >> 8) / 16777216.0f - 0.5f;
                qpk_quantize_row(w.type, w.group_size, row, C, wd + (size_t)r * rb, &e);
            }
            for (int64_t i = 0; i < C; i++)
                x[i] = (float)(i % 13) * 0.1f - 0.6f;
            w.data = wd;
            double best[2] = {1e30, 1e30};
            for (int i = 0; i < reps; i++)
                for (int j = 0; j < 2; j++) {
                    const int which = (i + j) % 2; /* 0: the other revision's */
                    const qpk_kernels *k = which ? now : then;
                    double t0 = bench_now();
                    k->gemv(&w, x, y[which], 0, R, scratch);
                    t0 = bench_now() - t0;
                    best[which] = t0 < best[which] ? t0 : best[which];
                }
            const bool same = !memcmp(y[0], y[1], (size_t)R * sizeof(float));
            differ += !same;
            char shape[24], tname[24];
            snprintf(shape, sizeof shape, "%lldx%lld", (long long)R, (long long)C);
            snprintf(tname, sizeof tname, "%s/g%u", qpk_type_name(w.type), w.group_size);
            const double bytes = (double)rb * (double)R;
            printf("%-11s %-10s %9.1f %9.1f %8.3f%s\n", shape, tname, bytes / best[0] / 1e9, bytes / best[1] / 1e9,
                   best[0] / best[1], same ? "" : "  DIFFERENT BITS");
            free(wd), free(row), free(x), free(y[0]), free(y[1]), free(scratch);
        }
    printf("\nratio: this revision's weights/s over the other's (> 1: faster)\n");
    return differ ? 1 : 0;
}
