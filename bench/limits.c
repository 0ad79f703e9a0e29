/* The machine's limits, measured: f32 FMA peak and streaming-read bandwidth. */
#include <immintrin.h>
#include <stdlib.h>
#include <time.h>

#include "limits.h"

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------ FMA peak */

typedef struct peak_job {
    long iters;
    float sink[64];
} peak_job;

/* 12 independent chains: enough to cover FMA latency x throughput on current cores. */
#define PEAK_CHAINS 12

__attribute__((target("avx2,fma"))) static void peak_task(void *arg, int64_t task, int thread)
{
    (void)task;
    peak_job *j = arg;
    __m256 a[PEAK_CHAINS], m = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-3f);
    for (int i = 0; i < PEAK_CHAINS; i++)
        a[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < j->iters; it++)
#pragma GCC unroll 12
        for (int i = 0; i < PEAK_CHAINS; i++)
            a[i] = _mm256_fmadd_ps(a[i], m, c);
    __m256 s = a[0];
    for (int i = 1; i < PEAK_CHAINS; i++)
        s = _mm256_add_ps(s, a[i]);
    j->sink[thread] = _mm256_cvtss_f32(s);
}

/* The same with 16-lane FMAs: cores with full-width AVX-512 units (Zen 5) do twice the 8-lane rate. */
__attribute__((target("avx512f"))) static void peak_task_512(void *arg, int64_t task, int thread)
{
    (void)task;
    peak_job *j = arg;
    __m512 a[PEAK_CHAINS], m = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-3f);
    for (int i = 0; i < PEAK_CHAINS; i++)
        a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < j->iters; it++)
#pragma GCC unroll 12
        for (int i = 0; i < PEAK_CHAINS; i++)
            a[i] = _mm512_fmadd_ps(a[i], m, c);
    __m512 s = a[0];
    for (int i = 1; i < PEAK_CHAINS; i++)
        s = _mm512_add_ps(s, a[i]);
    j->sink[thread] = _mm512_reduce_add_ps(s);
}

/* The better of the 8- and 16-lane rates (the kernels use the widest the CPU has). */
double bench_fma_peak(qpk_pool *pool)
{
    /* Many short tasks, so that a thread that starts late still gets its share. */
    int n = 32 * qpk_pool_threads(pool);
    peak_job j = {.iters = 2000000};
    double best = 0;
    for (int width = 8; width <= 16; width += 8) {
        if (width == 16 && !__builtin_cpu_supports("avx512f"))
            break;
        for (int rep = 0; rep < 3; rep++) {
            double t = bench_now();
            qpk_pool_run(pool, n, width == 16 ? peak_task_512 : peak_task, &j);
            t = bench_now() - t;
            double g = (double)n * (double)j.iters * PEAK_CHAINS * width * 2 / t / 1e9;
            best = g > best ? g : best;
        }
    }
    return best;
}

/* ------------------------------------------------------------ bandwidth */

typedef struct bw_job {
    const float *buf;
    size_t n, per;
    double sink[64];
} bw_job;

/* Four streams per task: one sequential stream leaves a core's memory parallelism idle. */
__attribute__((target("avx2"))) static void bw_task(void *arg, int64_t task, int thread)
{
    bw_job *j = arg;
    size_t i0 = (size_t)task * j->per, i1 = i0 + j->per < j->n ? i0 + j->per : j->n, q = (i1 - i0) / 4 / 16 * 16;
    const float *p0 = j->buf + i0, *p1 = p0 + q, *p2 = p1 + q, *p3 = p2 + q;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
    for (size_t i = 0; i < q; i += 16) {
        s0 = _mm256_add_ps(s0, _mm256_load_ps(p0 + i));
        s1 = _mm256_add_ps(s1, _mm256_load_ps(p0 + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_load_ps(p1 + i));
        s3 = _mm256_add_ps(s3, _mm256_load_ps(p1 + i + 8));
        s4 = _mm256_add_ps(s4, _mm256_load_ps(p2 + i));
        s5 = _mm256_add_ps(s5, _mm256_load_ps(p2 + i + 8));
        s6 = _mm256_add_ps(s6, _mm256_load_ps(p3 + i));
        s7 = _mm256_add_ps(s7, _mm256_load_ps(p3 + i + 8));
    }
    s0 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)),
                       _mm256_add_ps(_mm256_add_ps(s4, s5), _mm256_add_ps(s6, s7)));
    j->sink[thread] += _mm256_cvtss_f32(s0);
}

double bench_read_bandwidth(qpk_pool *pool)
{
    size_t n = (size_t)512 << 20 >> 2; /* 512 MiB */
    float *buf = aligned_alloc(64, n * sizeof *buf);
    for (size_t i = 0; i < n; i++)
        buf[i] = (float)(i & 1023);
    enum { TASKS = 256 };
    bw_job j = {.buf = buf, .n = n, .per = (n / TASKS + 31) / 32 * 32};
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t = bench_now();
        qpk_pool_run(pool, TASKS, bw_task, &j);
        t = bench_now() - t;
        double gbs = (double)(TASKS * (j.per / 4 / 16 * 16) * 4) * sizeof *buf / t / 1e9; /* bytes actually read */
        best = gbs > best ? gbs : best;
    }
    free(buf);
    return best;
}

