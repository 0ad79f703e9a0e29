/*
 * A small thread pool for data-parallel loops. A job is a task count and a function;
 * threads (the caller included) claim task indices from an atomic counter. Idle
 * workers spin briefly before sleeping, because decode issues a few hundred short
 * jobs per token and a condition-variable wake-up per job would cost more than the work.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "kernels.h"

#define SPIN_ROUNDS 20000

struct qpk_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    atomic_uint_fast64_t generation; /* bumped once per job */
    atomic_int_fast64_t next;        /* next unclaimed task */
    atomic_int pending;              /* workers not yet finished with the job */
    int64_t n_tasks;
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

static void drain(qpk_pool *p, int thread)
{
    for (;;) {
        int64_t i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->n_tasks || (p->cancel && qpk_pool_cancelled(p)))
            return;
        p->fn(p->ctx, i, thread);
    }
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
    if (!p || !(p->threads = calloc((size_t)n_threads, sizeof *p->threads))) {
        free(p);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
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
    p->n_tasks = n_tasks, p->fn = fn, p->ctx = ctx;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
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

/* ------------------------------------------------------------------ matmul */

typedef struct matmul_job {
    const qpk_kernels *k;
    const qpk_matrix *w[QPK_MATMUL_MAX];
    const float *x;
    float *y[QPK_MATMUL_MAX], *scratch;
    int64_t T, rows_per_task[QPK_MATMUL_MAX], first_task[QPK_MATMUL_MAX + 1];
    int n;
    size_t scratch_per_thread;
} matmul_job;

static void matmul_task(void *arg, int64_t task, int thread)
{
    matmul_job *j = arg;
    int i = 0;
    while (task >= j->first_task[i + 1])
        i++;
    const qpk_matrix *w = j->w[i];
    int64_t r0 = (task - j->first_task[i]) * j->rows_per_task[i], r1 = r0 + j->rows_per_task[i];
    r1 = r1 < w->rows ? r1 : w->rows;
    float *scratch = j->scratch + (size_t)thread * j->scratch_per_thread;
    if (j->T == 1)
        j->k->gemv(w, j->x, j->y[i], r0, r1, scratch);
    else
        j->k->gemm(w, j->x, j->T, w->cols, j->y[i], w->rows, r0, r1, scratch);
}

void qpk_matmul_many(qpk_pool *pool, const qpk_kernels *k, int n, const qpk_matrix *const w[], const float *x,
                     int64_t T, float *const y[], float *scratch)
{
    int threads = qpk_pool_threads(pool);
    matmul_job j = {.k = k, .x = x, .scratch = scratch, .T = T, .n = n,
                    .scratch_per_thread = qpk_gemm_scratch_floats(w[0]->cols)};
    /*
     * Tasks per thread: about 4 for the gemm, for balance; one for a gemv, whose task's rows are
     * its streams' lengths (gemv_with reads four at once), and longer streams read faster: decode of
     * the 0.5B shape on 2 Zen 5 threads (tg256), Q4_0 layers 7.3-7.7 -> 6.4-7.3 ms per token, Q6_K
     * 62-65 -> 81-82 tokens/s. Whole gemm panels either way. Work stealing (each thread's share in
     * order, then others' last tasks) with 2-8 gemv tasks per thread gained nothing on Zen 4
     * (0.98-1.00 token by token): the shorter streams cost what the balance saves.
     */
    const int per_thread = T == 1 ? 1 : 4;
    for (int i = 0; i < n; i++) {
        int64_t per = (w[i]->rows + per_thread * threads - 1) / (per_thread * threads);
        per = per ? (per + QPK_GEMM_PANEL - 1) / QPK_GEMM_PANEL * QPK_GEMM_PANEL : 1;
        j.w[i] = w[i], j.y[i] = y[i], j.rows_per_task[i] = per;
        /* a matrix of 0 rows has no tasks (calibration leaves out a product whose output it never reads) */
        j.first_task[i + 1] = j.first_task[i] + (w[i]->rows + per - 1) / per;
    }
    qpk_pool_run(pool, j.first_task[n], matmul_task, &j);
}

void qpk_matmul(qpk_pool *pool, const qpk_kernels *k, const qpk_matrix *w, const float *x, int64_t T, float *y,
                float *scratch)
{
    qpk_matmul_many(pool, k, 1, &w, x, T, &y, scratch);
}
