/*
 * AWQ's scale search on one linear: the scales it returns are those of the alpha whose
 * fake-quantized weights give the least output error on the sampled rows, found here by
 * trying every alpha of the grid plainly (f64 sums over every row and output); never
 * worse than alpha 0 (round-to-nearest); the same bits for any thread count; a grid past
 * its bound is refused. For a linear of 48 outputs, which the search's screen reads
 * whole, and three of 768 (24 panels of 32), of which it reads every third panel: a
 * screen that ranked at random would still send the best of 20 alphas to its five
 * finalists in a quarter of the draws (one reading the wrong reference rows failed two).
 */
#include <math.h>

#include "qpk/quant.h"
#include "testhelp.h"

enum { N = 512, D = 128, R_MAX = 768, GRID = 20 };
#define TYPE QPK_TYPE_INT4
#define GROUP 32

static uint64_t g_rng = 0x5eed0a3cull;
static double gauss(void) { return th_gauss(&g_rng); }

static float X[N * D], W[R_MAX * D];
static double mean_abs[D];
static int R; /* the linear's outputs */

/* Channels of very different loudness (a few 30x the rest), as activations have: AWQ's case. */
static void make_problem(int rows)
{
    R = rows;
    double gain[D];
    for (int c = 0; c < D; c++)
        gain[c] = c % 17 == 3 ? 30.0 : exp(0.5 * gauss());
    for (int t = 0; t < N; t++)
        for (int c = 0; c < D; c++)
            X[t * D + c] = (float)(gain[c] * gauss());
    for (int i = 0; i < R * D; i++)
        W[i] = (float)(0.05 * gauss());
    for (int c = 0; c < D; c++) {
        double s = 0;
        for (int t = 0; t < N; t++)
            s += fabs((double)X[t * D + c]);
        mean_abs[c] = s / N;
    }
}

/* The scales of alpha a / GRID, as the method defines them: mean|x|^alpha over the geometric mean of the extremes. */
static void scales_of(int a, float *s)
{
    double mx = 0, mn = INFINITY;
    for (int c = 0; c < D; c++) {
        s[c] = (float)pow(mean_abs[c] > 1e-8 ? mean_abs[c] : 1e-8, (double)a / GRID);
        mx = s[c] > mx ? s[c] : mx;
        mn = s[c] < mn ? s[c] : mn;
    }
    for (int c = 0; c < D; c++)
        s[c] /= (float)sqrt(mx * mn);
}

/* sum over every row of |X W^T - X Wq^T|^2, Wq = RTN(W diag(s)) diag(1/s). */
static double loss_of(const float *s)
{
    static float wq[R_MAX * D];
    uint8_t bytes[D];
    for (int r = 0; r < R; r++) {
        float *w = wq + r * D;
        for (int c = 0; c < D; c++)
            w[c] = W[r * D + c] * s[c];
        qpk_err e;
        CHECK(qpk_quantize_row(TYPE, GROUP, w, D, bytes, &e) == QPK_OK);
        qpk_dequantize_row(TYPE, GROUP, bytes, D, w);
        for (int c = 0; c < D; c++)
            w[c] /= s[c];
    }
    double loss = 0;
    for (int t = 0; t < N; t++)
        for (int r = 0; r < R; r++) {
            double d = 0;
            for (int c = 0; c < D; c++)
                d += (double)X[t * D + c] * ((double)W[r * D + c] - (double)wq[r * D + c]);
            loss += d * d;
        }
    return loss;
}

static qpk_status search(qpk_pool *pool, int grid, float *s, qpk_err *e)
{
    const qpk_awq_linear lin = {W, R, D, TYPE, GROUP};
    const qpk_awq_opts o = {grid, QPK_AWQ_CLIP_STEPS, N};
    return qpk_awq_scales(&lin, 1, mean_abs, X, N, &o, pool, qpk_kernels_best(), s, e);
}

static void check_search(qpk_pool *p1, qpk_pool *p2, int rows)
{
    qpk_err e;
    make_problem(rows);

    double loss[GRID];
    int best = 0, second = -1;
    float s[D], got[D], got2[D];
    for (int a = 0; a < GRID; a++) {
        scales_of(a, s);
        loss[a] = loss_of(s);
        if (loss[a] < loss[best])
            second = best, best = a;
        else if (a > 0 && (second < 0 || loss[a] < loss[second]))
            second = a;
    }
    /*
     * The problem is meant to have one clear winner, inside the grid: else the check below
     * proves little. The library's losses are f32 products summed in f64 (relative error
     * about 1e-6), so a fifth of a percent sets the winner well apart from rounding; it is
     * also narrow enough that the wide linear's screen must rank the winner among its finalists.
     */
    CHECKF(best > 0 && best < GRID - 1 && loss[second] > 1.002 * loss[best],
           "%d outputs: the test's problem has no clear best alpha (best %d: %g, next %d: %g)", R, best, loss[best],
           second, loss[second]);

    CHECK(search(p1, GRID, got, &e) == QPK_OK);
    scales_of(best, s);
    double worst = 0;
    for (int c = 0; c < D; c++)
        worst = fmax(worst, fabs((double)got[c] / s[c] - 1));
    /* The library's scales and these differ only by float rounding (1e-6); the grid's neighbours differ by >= 5%. */
    CHECKF(worst < 1e-5, "%d outputs: the search did not choose alpha %d/%d, the least loss (max relative difference "
           "%g)", R, best, GRID, worst);
    CHECKF(loss_of(got) <= loss[0] * (1 + 1e-9), "%d outputs: the chosen scales lose to round-to-nearest (%g > %g)", R,
           loss_of(got), loss[0]);

    CHECK(search(p2, GRID, got2, &e) == QPK_OK);
    CHECKF(!memcmp(got, got2, sizeof got), "%d outputs: the scales differ between one and two threads", R);
}

int main(void)
{
    qpk_pool *p1, *p2;
    qpk_err e;
    if (qpk_pool_create(&p1, 1, &e) != QPK_OK || qpk_pool_create(&p2, 2, &e) != QPK_OK)
        return 2;
    check_search(p1, p2, 48);
    for (int draw = 0; draw < 3; draw++)
        check_search(p1, p2, R_MAX);
    float got[D];
    CHECK(search(p1, 65, got, &e) == QPK_E_INVALID_ARG);
    qpk_pool_free(p1);
    qpk_pool_free(p2);
    return th_summary("test_awq");
}
