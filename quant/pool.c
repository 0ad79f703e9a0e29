/*
 * A small thread pool for data-parallel loops. A job is a task count and a function. Each
 * thread owns a contiguous share of the tasks and takes them from its front, in order
 * (decode's gemv pieces, below, continue one another), and a thread whose share is done
 * takes tasks from the back of the largest share left: a thread slowed by its core's
 * neighbours costs the others one task's wait, not the rest of its share. Idle workers
 * spin briefly before sleeping, because decode issues a few hundred short jobs per token
 * and a condition-variable wake-up per job would cost more than the work.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "kernels.h"

#define SPIN_ROUNDS 20000

/*
 * A thread's share of the job in one word, front in the low half and end in the high one:
 * the owner takes the front by an add (the old front is its task while below the end), a
 * thief the last task by a compare-exchange, so no task runs twice. Each share has its own
 * cache line. A job runs at most SHARE_MAX tasks at once (qpk_pool_run runs more in
 * rounds), so the front, one past the end at most, stays in its half.
 */
#define SHARE_MAX ((int64_t)1 << 31)

typedef struct share {
    _Alignas(64) _Atomic uint64_t span;
} share;

struct qpk_pool {
    int n_threads;
    pthread_t *threads;
    share *shares; /* one per thread */
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    atomic_uint_fast64_t generation; /* bumped once per job */
    atomic_int pending;              /* workers not yet finished with the job */
    int64_t first;                   /* the job's tasks are first + [0, n) */
    qpk_task_fn fn;
    void *ctx;
    atomic_bool stop;
    bool (*cancel)(void *ud); /* polled before each task; once true, no task runs */
    void *cancel_ud;
    atomic_bool cancelled;
};

typedef struct worker_arg {
    qpk_pool *pool;
    int index;
} worker_arg;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

bool qpk_pool_cancelled(qpk_pool *p)
{
    if (!atomic_load_explicit(&p->cancelled, memory_order_relaxed) && p->cancel && p->cancel(p->cancel_ud))
        atomic_store_explicit(&p->cancelled, true, memory_order_relaxed);
    return atomic_load_explicit(&p->cancelled, memory_order_relaxed);
}

void qpk_pool_set_cancel(qpk_pool *p, bool (*cancel)(void *ud), void *ud)
{
    p->cancel = cancel, p->cancel_ud = ud;
    atomic_store(&p->cancelled, false);
}

/* The next task of the thread's own share. */
static bool take_own(share *sh, int64_t *task)
{
    const uint64_t v = atomic_fetch_add_explicit(&sh->span, 1, memory_order_relaxed);
    *task = (int64_t)(uint32_t)v;
    return (uint32_t)v < (uint32_t)(v >> 32);
}

/* The last task of the share with the most left; false once every share is done. */
static bool steal(qpk_pool *p, int64_t *task)
{
    for (;;) {
        int victim = -1;
        uint32_t most = 0;
        for (int t = 0; t < p->n_threads; t++) {
            const uint64_t v = atomic_load_explicit(&p->shares[t].span, memory_order_relaxed);
            const uint32_t lo = (uint32_t)v, hi = (uint32_t)(v >> 32);
            if (lo < hi && hi - lo > most)
                most = hi - lo, victim = t;
        }
        if (victim < 0)
            return false;
        uint64_t v = atomic_load_explicit(&p->shares[victim].span, memory_order_relaxed);
        while ((uint32_t)v < (uint32_t)(v >> 32))
            if (atomic_compare_exchange_weak_explicit(&p->shares[victim].span, &v, v - ((uint64_t)1 << 32),
                                                      memory_order_relaxed, memory_order_relaxed)) {
                *task = (int64_t)(v >> 32) - 1;
                return true;
            }
    }
}

/* The thread's own share, then the others' last tasks (its front passes its end once). */
static void drain(qpk_pool *p, int thread)
{
    int64_t i;
    while (!(p->cancel && qpk_pool_cancelled(p)) && take_own(&p->shares[thread], &i))
        p->fn(p->ctx, p->first + i, thread);
    while (!(p->cancel && qpk_pool_cancelled(p)) && steal(p, &i))
        p->fn(p->ctx, p->first + i, thread);
}

static void *worker(void *arg)
{
    qpk_pool *p = ((worker_arg *)arg)->pool;
    int index = ((worker_arg *)arg)->index;
    free(arg);
    uint64_t seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&p->generation, memory_order_acquire) == seen && spins < SPIN_ROUNDS)
            cpu_relax(), spins++;
        if (atomic_load_explicit(&p->generation, memory_order_acquire) == seen) {
            pthread_mutex_lock(&p->mu);
            while (atomic_load_explicit(&p->generation, memory_order_acquire) == seen && !p->stop)
                pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (p->stop)
            return NULL;
        seen = atomic_load_explicit(&p->generation, memory_order_acquire);
        drain(p, index);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

qpk_status qpk_pool_create(qpk_pool **out, int n_threads, qpk_err *e)
{
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    qpk_pool *p = calloc(1, sizeof *p);
    if (!p || !(p->threads = calloc((size_t)n_threads, sizeof *p->threads)) ||
        !(p->shares = aligned_alloc(_Alignof(share), (size_t)n_threads * sizeof(share)))) {
        if (p)
            free(p->threads);
        free(p);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    for (int t = 0; t < n_threads; t++)
        atomic_init(&p->shares[t].span, 0);
    p->n_threads = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 1; i < n_threads; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (!a || (a->pool = p, a->index = i, pthread_create(&p->threads[i], NULL, worker, a) != 0)) {
            free(a);
            qpk_pool_free(p);
            return qpk_err_setf(e, QPK_E_NOMEM, "cannot start thread %d", i);
        }
        p->n_threads++;
    }
    *out = p;
    return QPK_OK;
}

void qpk_pool_free(qpk_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    atomic_fetch_add(&p->generation, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->shares);
    free(p->threads);
    free(p);
}

int qpk_pool_threads(const qpk_pool *p) { return p->n_threads; }

void qpk_pool_run(qpk_pool *p, int64_t n_tasks, qpk_task_fn fn, void *ctx)
{
    if (p->n_threads == 1 || n_tasks <= 1) {
        for (int64_t i = 0; i < n_tasks && !(p->cancel && qpk_pool_cancelled(p)); i++)
            fn(ctx, i, 0);
        return;
    }
    for (int64_t first = 0; first < n_tasks; first += SHARE_MAX) {
        const int64_t n = n_tasks - first < SHARE_MAX ? n_tasks - first : SHARE_MAX, N = p->n_threads;
        p->first = first, p->fn = fn, p->ctx = ctx;
        for (int64_t t = 0; t < N; t++) /* n t < 2^62 */
            atomic_store_explicit(&p->shares[t].span, (uint64_t)(n * t / N) | (uint64_t)(n * (t + 1) / N) << 32,
                                  memory_order_relaxed);
        atomic_store_explicit(&p->pending, p->n_threads - 1, memory_order_relaxed);
        pthread_mutex_lock(&p->mu);
        atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
        drain(p, 0);
        int spins = 0;
        while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0 && spins < SPIN_ROUNDS)
            cpu_relax(), spins++;
        if (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
            pthread_mutex_lock(&p->mu);
            while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0)
                pthread_cond_wait(&p->done, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

/* ------------------------------------------------------------------ matmul */

/*
 * A gemv's rows: each of `shares` (one per thread) equal shares is read as four streams a
 * quarter of it apart (gemv4) and cut into GEMV_PIECES tasks that continue the streams, so
 * the thread that owns a share reads four long runs, while a thread done early can take the
 * last pieces of another's. Cutting a share into separate tasks instead restarts the streams
 * at each: 2 to 8 tasks per thread gave 0.98-1.00x (one task per thread had replaced four
 * for that reason: Q6_K decode 62-65 -> 81-82 tokens/s, Zen 5). Token by token on a 2-thread
 * Zen 4 VM whose worker ran the same rows 7% slower than the main thread, which then waited
 * 5.5-10% of its time, Q4_0 decode against one piece per share: 16 pieces 0.998-1.013x (six
 * runs), 32 pieces 1.010-1.038x (three), the more the busier the VM's neighbours were.
 */
#define GEMV_PIECES 16

typedef struct matmul_job {
    const qpk_kernels *k;
    const qpk_matrix *w[QPK_MATMUL_MAX];
    const float *x;
    float *y[QPK_MATMUL_MAX], *scratch;
    int64_t T, rows_per_task[QPK_MATMUL_MAX], first_task[QPK_MATMUL_MAX + 1], shares;
    int n;
    size_t scratch_per_thread;
} matmul_job;

/* Piece `piece` of share `s` of w's rows: rows [o0, o1) of each quarter, and the rows past the quarters last. */
static void gemv_piece(const matmul_job *j, const qpk_matrix *w, float *y, int64_t s, int64_t piece,
                       float *scratch)
{
    const int64_t b = w->rows * s / j->shares, e = w->rows * (s + 1) / j->shares, quarter = (e - b) / 4;
    const int64_t o0 = quarter * piece / GEMV_PIECES, o1 = quarter * (piece + 1) / GEMV_PIECES;
    if (o1 > o0)
        j->k->gemv4(w, j->x, y, b + o0, b + o1, quarter, scratch);
    if (piece == GEMV_PIECES - 1 && b + 4 * quarter < e)
        j->k->gemv(w, j->x, y, b + 4 * quarter, e, scratch);
}

static void matmul_task(void *arg, int64_t task, int thread)
{
    matmul_job *j = arg;
    int i = 0;
    while (task >= j->first_task[i + 1])
        i++;
    const qpk_matrix *w = j->w[i];
    float *scratch = j->scratch + (size_t)thread * j->scratch_per_thread;
    task -= j->first_task[i];
    if (j->T == 1) {
        gemv_piece(j, w, j->y[i], task / GEMV_PIECES, task % GEMV_PIECES, scratch);
        return;
    }
    int64_t r0 = task * j->rows_per_task[i], r1 = r0 + j->rows_per_task[i];
    r1 = r1 < w->rows ? r1 : w->rows;
    j->k->gemm(w, j->x, j->T, w->cols, j->y[i], w->rows, r0, r1, scratch);
}

void qpk_matmul_many(qpk_pool *pool, const qpk_kernels *k, int n, const qpk_matrix *const w[], const float *x,
                     int64_t T, float *const y[], float *scratch)
{
    int threads = qpk_pool_threads(pool);
    matmul_job j = {.k = k, .x = x, .scratch = scratch, .T = T, .n = n, .shares = threads,
                    .scratch_per_thread = qpk_gemm_scratch_floats(w[0]->cols)};
    for (int i = 0; i < n; i++) {
        j.w[i] = w[i], j.y[i] = y[i];
        /* a matrix of 0 rows has no tasks (calibration leaves out a product whose output it never reads) */
        if (T == 1) {
            j.first_task[i + 1] = j.first_task[i] + (w[i]->rows ? threads * GEMV_PIECES : 0);
            continue;
        }
        /* about 4 tasks per thread, for balance, in whole panels */
        int64_t per = (w[i]->rows + 4 * threads - 1) / (4 * threads);
        per = per ? (per + QPK_GEMM_PANEL - 1) / QPK_GEMM_PANEL * QPK_GEMM_PANEL : 1;
        j.rows_per_task[i] = per;
        j.first_task[i + 1] = j.first_task[i] + (w[i]->rows + per - 1) / per;
    }
    qpk_pool_run(pool, j.first_task[n], matmul_task, &j);
}

void qpk_matmul(qpk_pool *pool, const qpk_kernels *k, const qpk_matrix *w, const float *x, int64_t T, float *y,
                float *scratch)
{
    qpk_matmul_many(pool, k, 1, &w, x, T, &y, scratch);
}
