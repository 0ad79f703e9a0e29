/* Shared by the benchmarks: a clock and the machine's measured limits. */
#ifndef QPK_BENCH_LIMITS_H
#define QPK_BENCH_LIMITS_H

#include "qpk/quant.h"

double bench_now(void);
/* f32 FMA throughput of all the pool's threads, GFLOP/s (12 independent FMA chains each, 8 or 16 lanes: the better). */
double bench_fma_peak(qpk_pool *pool);
/* Streaming-read bandwidth of a 512 MiB buffer over all the pool's threads, GB/s (best of 5). */
double bench_read_bandwidth(qpk_pool *pool);

#endif
