/*
 * GPTQ on single linear layers: with correlated inputs it must beat round-to-nearest
 * on the output error ||X W^T - X Q^T||; it must agree with the paper's algorithm written
 * plainly in f64; with H = I it must be round-to-nearest, byte
 * for byte; act-order keeps the stored layout (static, contiguous groups); inputs never
 * seen zero their weights; the result does not depend on the thread count.
 */
#include <math.h>

#include "qpk/quant.h"
#include "testhelp.h"

enum { N = 1024, D = 128, R = 48 };

static uint64_t g_rng = 0xfeedbeef;
static double gauss(void) { return th_gauss(&g_rng); }

static float X[N * D], W[R * D];
static double H[D * D];

/* Inputs with strongly correlated channels, and a few loud ones, as activations have. */
static void make_inputs(bool identity)
{
    static double A[D * D];
    for (int i = 0; i < D * D; i++)
        A[i] = (i / D == i % D ? 1.0 : 0.0) + 0.3 * gauss() / sqrt(D);
    for (int t = 0; t < N; t++) {
        double z[D];
        for (int k = 0; k < D; k++)
            z[k] = gauss() * (k % 17 == 0 ? 8.0 : 1.0);
        for (int j = 0; j < D; j++) {
            double s = 0;
            for (int k = 0; k < D; k++)
                s += z[k] * A[k * D + j];
            X[t * D + j] = (float)s;
        }
    }
    for (int i = 0; i < R * D; i++)
        W[i] = (float)(0.02 * gauss());
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            double s = 0;
            for (int t = 0; t < N && !identity; t++)
                s += (double)X[t * D + i] * X[t * D + j];
            H[i * D + j] = identity ? (i == j) : 2 * s / N;
        }
}

/* ||X W^T - X Q^T||_F, with Q the weights the blocks decode to. */
static double output_error(uint32_t type, uint32_t group, const void *blocks)
{
    static float Q[R * D];
    size_t rb = (size_t)(D / group) * qpk_type_block_bytes(type, group);
    for (int r = 0; r < R; r++)
        qpk_dequantize_row(type, group, (const uint8_t *)blocks + (size_t)r * rb, D, Q + r * D);
    double e = 0;
    for (int t = 0; t < N; t++)
        for (int r = 0; r < R; r++) {
            double d = 0;
            for (int k = 0; k < D; k++)
                d += (double)X[t * D + k] * ((double)W[r * D + k] - Q[r * D + k]);
            e += d * d;
        }
    return sqrt(e);
}

static void rtn(uint32_t type, uint32_t group, const float *w, uint8_t *out)
{
    qpk_err e;
    size_t rb = (size_t)(D / group) * qpk_type_block_bytes(type, group);
    for (int r = 0; r < R; r++)
        qpk_quantize_row(type, group, w + r * D, D, out + (size_t)r * rb, &e);
}

static qpk_status gptq(uint32_t type, uint32_t group, bool act_order, qpk_pool *pool, uint8_t *out, float *wq)
{
    static double h[D * D];
    memcpy(h, H, sizeof h);
    memcpy(wq, W, sizeof W);
    qpk_gptq_opts o = {0.01, act_order};
    qpk_err e = {0};
    qpk_status s = qpk_gptq(type, group, wq, R, D, h, &o, pool, out, &e);
    if (s != QPK_OK)
        fprintf(stderr, "gptq: %s\n", e.msg);
    return s;
}

static void test_beats_rtn(qpk_pool *pool1, qpk_pool *pool2)
{
    static uint8_t a[R * D * 2], b[R * D * 2], c[R * D * 2];
    static float wq[R * D], wq2[R * D];
    make_inputs(false);
    const uint32_t types[3] = {QPK_TYPE_INT4, QPK_TYPE_INT4S, QPK_TYPE_INT8};
    const uint32_t groups[2] = {32, 128};
    for (int t = 0; t < 3; t++)
        for (int g = 0; g < 2; g++)
            for (int ao = 0; ao < 2; ao++) {
                rtn(types[t], groups[g], W, a);
                CHECK(gptq(types[t], groups[g], ao, pool1, b, wq) == QPK_OK);
                double er = output_error(types[t], groups[g], a), eg = output_error(types[t], groups[g], b);
                printf("%-5s g%-3u act-order %d: output error GPTQ / RTN = %.3f\n", qpk_type_name(types[t]), groups[g],
                       ao, eg / er);
                CHECKF(eg < er, "%s g%u act_order %d: GPTQ %g not below RTN %g", qpk_type_name(types[t]), groups[g],
                       ao, eg, er);
                /* The blocks decode to what GPTQ left in W. */
                static float dec[R * D];
                size_t rb = (size_t)(D / groups[g]) * qpk_type_block_bytes(types[t], groups[g]);
                for (int r = 0; r < R; r++)
                    qpk_dequantize_row(types[t], groups[g], b + (size_t)r * rb, D, dec + r * D);
                CHECK(!memcmp(dec, wq, sizeof dec));
                /* Any thread count: the same bytes. */
                CHECK(gptq(types[t], groups[g], ao, pool2, c, wq2) == QPK_OK && !memcmp(b, c, (size_t)R * rb));
                if (ao) {
                    /* Static groups: each block's parameters are those of the original weights' group. */
                    bool same = true;
                    for (int r = 0; r < R; r++)
                        for (int k = 0; k < D; k += (int)groups[g]) {
                            qpk_qparams want, got;
                            qpk_err e;
                            static int32_t q[128];
                            qpk_group_params(types[t], W + r * D + k, groups[g], 1.0f, &want, &e);
                            qpk_unpack_group(types[t], groups[g],
                                             b + (size_t)r * rb + (size_t)(k / (int)groups[g]) * qpk_type_block_bytes(types[t], groups[g]),
                                             &got, q);
                            same &= want.d == got.d && want.z == got.z;
                        }
                    CHECK(same);
                }
            }
}

/*
 * ggml's blocks of 32: GPTQ chooses codes on each block's grid after fitting its scales
 * (the nearest value of IQ4_NL's codebook, the nearest step of Q5_0's and Q4_1's), and must
 * beat the same blocks' round-to-nearest; the blocks decode to what GPTQ left in W.
 */
static void test_ggml_blocks_beat_rtn(qpk_pool *pool)
{
    static uint8_t a[R * D * 2], b[R * D * 2];
    static float wq[R * D], dec[R * D];
    make_inputs(false);
    const uint32_t types[] = {QPK_TYPE_IQ4_NL, QPK_TYPE_Q5_0, QPK_TYPE_Q4_1};
    for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
        rtn(types[t], 32, W, a);
        CHECK(gptq(types[t], 32, false, pool, b, wq) == QPK_OK);
        const double er = output_error(types[t], 32, a), eg = output_error(types[t], 32, b);
        printf("%-6s: output error GPTQ / RTN = %.3f\n", qpk_type_name(types[t]), eg / er);
        CHECKF(eg < er, "%s: GPTQ %g not below RTN %g", qpk_type_name(types[t]), eg, er);
        const size_t rb = (size_t)(D / 32) * qpk_type_block_bytes(types[t], 32);
        for (int r = 0; r < R; r++)
            qpk_dequantize_row(types[t], 32, b + (size_t)r * rb, D, dec + r * D);
        CHECKF(!memcmp(dec, wq, sizeof dec), "%s: the blocks do not decode to GPTQ's weights", qpk_type_name(types[t]));
    }
}

/*
 * The paper's algorithm written plainly, in f64: the explicit inverse of the damped,
 * permuted H (Gauss-Jordan), and after each column the inverse over the columns left
 * (the OBS downdate). The library's Cholesky form is the same computation
 * reorganized, so it must give nearly the same weights; only f32 updates and
 * rounding ties may flip a few codes
 * (measured: none of the 6,144 in each case; the gate allows 1%).
 */
static void reference_gptq(uint32_t type, uint32_t group, bool act_order, float *out)
{
    static double Hp[D * D], inv[D * D], w[D];
    int perm[D];
    double mean = 0;
    for (int i = 0; i < D; i++)
        perm[i] = i, mean += H[i * D + i] / D;
    for (int i = 0; i < D && act_order; i++) /* decreasing diagonal, ties by index */
        for (int j = i + 1; j < D; j++)
            if (H[perm[j] * D + perm[j]] > H[perm[i] * D + perm[i]]) {
                int t = perm[i];
                perm[i] = perm[j], perm[j] = t;
            }
    for (int r = 0; r < R; r++) {
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) {
                Hp[i * D + j] = H[perm[i] * D + perm[j]] + (i == j ? 0.01 * mean : 0);
                inv[i * D + j] = i == j;
            }
        for (int c = 0; c < D; c++) { /* Gauss-Jordan: Hp becomes I, inv its inverse */
            double p = Hp[c * D + c];
            for (int j = 0; j < D; j++)
                Hp[c * D + j] /= p, inv[c * D + j] /= p;
            for (int i = 0; i < D; i++)
                if (i != c) {
                    double f = Hp[i * D + c];
                    for (int j = 0; j < D; j++)
                        Hp[i * D + j] -= f * Hp[c * D + j], inv[i * D + j] -= f * inv[c * D + j];
                }
        }
        for (int i = 0; i < D; i++)
            w[i] = W[r * D + perm[i]];
        qpk_qparams p[D / 32];
        qpk_err e;
        for (int g = 0; g < D / (int)group && act_order; g++)
            qpk_group_params(type, W + r * D + g * group, group, 1.0f, &p[g], &e);
        for (int i = 0; i < D; i++) {
            const int col = perm[i], g = col / (int)group;
            if (!act_order && i % (int)group == 0) {
                float f[128];
                for (int k = 0; k < (int)group; k++)
                    f[k] = (float)w[i + k];
                qpk_group_params(type, f, group, 1.0f, &p[g], &e);
            }
            float deq = qpk_dequantize_value(type, &p[g], qpk_quantize_value(type, &p[g], (float)w[i]));
            double err = (w[i] - deq) / inv[i * D + i];
            out[r * D + col] = deq;
            for (int j = i + 1; j < D; j++)
                w[j] -= err * inv[i * D + j];
            for (int j = i + 1; j < D; j++) /* drop column i from the inverse */
                for (int k = i + 1; k < D; k++)
                    inv[j * D + k] -= inv[j * D + i] * inv[i * D + k] / inv[i * D + i];
        }
    }
}

static void test_matches_reference(void)
{
    static uint8_t b[R * D * 2];
    static float wq[R * D], ref[R * D];
    make_inputs(false);
    const uint32_t types[3] = {QPK_TYPE_INT4, QPK_TYPE_INT4S, QPK_TYPE_INT8};
    for (int t = 0; t < 3; t++)
        for (int ao = 0; ao < 2; ao++) {
            CHECK(gptq(types[t], 32, ao, NULL, b, wq) == QPK_OK);
            reference_gptq(types[t], 32, ao, ref);
            int same = 0;
            for (int i = 0; i < R * D; i++)
                same += wq[i] == ref[i];
            /* Output error through the same X, relative to the reference's. */
            double eq = 0, er = 0;
            for (int n = 0; n < N; n += 4)
                for (int r = 0; r < R; r++) {
                    double dq = 0, dr = 0;
                    for (int k = 0; k < D; k++)
                        dq += (double)X[n * D + k] * (W[r * D + k] - wq[r * D + k]),
                        dr += (double)X[n * D + k] * (W[r * D + k] - ref[r * D + k]);
                    eq += dq * dq, er += dr * dr;
                }
            printf("%-5s act-order %d: %.2f%% of weights equal to the f64 reference, output error ratio %.4f\n",
                   qpk_type_name(types[t]), ao, 100.0 * same / (R * D), sqrt(eq / er));
            CHECKF(same >= R * D * 99 / 100, "%s act_order %d: only %d of %d weights match the reference",
                   qpk_type_name(types[t]), ao, same, R * D);
            CHECKF(fabs(sqrt(eq / er) - 1) < 0.02, "%s act_order %d: output error %.4f x the reference's",
                   qpk_type_name(types[t]), ao, sqrt(eq / er));
        }
}

static void test_identity_is_rtn(void)
{
    static uint8_t a[R * D * 2], b[R * D * 2];
    static float wq[R * D];
    make_inputs(true);
    const uint32_t types[3] = {QPK_TYPE_INT4, QPK_TYPE_INT4S, QPK_TYPE_INT8};
    for (int t = 0; t < 3; t++)
        for (int ao = 0; ao < 2; ao++) {
            rtn(types[t], 32, W, a);
            CHECK(gptq(types[t], 32, ao, NULL, b, wq) == QPK_OK);
            size_t n = (size_t)R * (D / 32) * qpk_type_block_bytes(types[t], 32);
            CHECKF(!memcmp(a, b, n), "%s act_order %d: H = I does not give RTN's bytes", qpk_type_name(types[t]), ao);
        }
}

static void test_dead_inputs_and_errors(void)
{
    static uint8_t b[R * D * 2];
    static float wq[R * D];
    make_inputs(false);
    for (int k = 0; k < D; k++) /* input 5 never seen */
        H[5 * D + k] = H[k * D + 5] = 0;
    CHECK(gptq(QPK_TYPE_INT4, 32, false, NULL, b, wq) == QPK_OK);
    bool zero = true;
    for (int r = 0; r < R; r++)
        zero &= wq[r * D + 5] == 0;
    CHECK(zero);
    qpk_err e = {0};
    static double h[D * D];
    CHECK_ERR(qpk_gptq(QPK_TYPE_INT4, 48, wq, R, D, h, &(qpk_gptq_opts){0}, NULL, b, &e), QPK_E_INVALID_ARG, e,
              "not whole groups of 48");
    CHECK_ERR(qpk_gptq(QPK_TYPE_F16, 32, wq, R, D, h, &(qpk_gptq_opts){0}, NULL, b, &e), QPK_E_INVALID_ARG, e,
              "not whole groups");
    /* A weight no grid holds fails inside a task: its status comes out whether or not an e is given. */
    memcpy(h, H, sizeof h), memcpy(wq, W, sizeof W);
    wq[3 * D + 7] = NAN;
    qpk_status s = qpk_gptq(QPK_TYPE_INT4, 32, wq, R, D, h, &(qpk_gptq_opts){0.01, false}, NULL, b, &e);
    CHECK_ERR(s, QPK_E_VALUE, e, "row 3");
    memcpy(h, H, sizeof h), memcpy(wq, W, sizeof W);
    wq[3 * D + 7] = NAN;
    qpk_status s2 = qpk_gptq(QPK_TYPE_INT4, 32, wq, R, D, h, &(qpk_gptq_opts){0.01, false}, NULL, b, NULL);
    CHECKF(s2 == s, "with e == NULL: status %d (want %d)", (int)s2, (int)s);
}

int main(void)
{
    qpk_pool *p1, *p2;
    qpk_err e;
    if (qpk_pool_create(&p1, 1, &e) != QPK_OK || qpk_pool_create(&p2, 2, &e) != QPK_OK)
        return 2;
    test_beats_rtn(p1, p2);
    test_matches_reference();
    test_identity_is_rtn();
    test_dead_inputs_and_errors();
    test_ggml_blocks_beat_rtn(p2); /* last: it draws inputs of its own */
    qpk_pool_free(p1);
    qpk_pool_free(p2);
    return th_summary("test_gptq");
}
