/* The forward pass's operations, written to round as transformers' f32 code does. */
#include <math.h>
#include <string.h>

#include "ops.h"

void qpk_op_rms_norm(const qpk_kernels *k, const float *x, const float *w, float *out, int64_t T, int64_t H,
                     float eps)
{
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * H;
        float r = 1.0f / sqrtf(k->dot(xt, xt, H) / (float)H + eps);
        for (int64_t i = 0; i < H; i++)
            out[t * H + i] = w[i] * (xt[i] * r);
    }
}

void qpk_op_rope_freqs(float *inv_freq, double theta, int64_t head_dim)
{
    for (int64_t i = 0; i < head_dim / 2; i++)
        inv_freq[i] = (float)(1.0 / pow(theta, (double)(2 * i) / (double)head_dim));
}

void qpk_op_rope_freqs_yarn(float *inv_freq, double theta, int64_t head_dim, const qpk_yarn *y)
{
    /* transformers' _compute_yarn_parameters: the dimensions that turn fewer than beta_fast
     * times over the pretrained context are interpolated (divided by factor), those that turn
     * more than beta_slow times kept, with a linear ramp between. */
    const double d = (double)head_dim, L = (double)y->original_max_position_embeddings, two_pi = 2 * 3.14159265358979323846;
    double low = floor(d * log(L / (y->beta_fast * two_pi)) / (2 * log(theta)));
    double high = ceil(d * log(L / (y->beta_slow * two_pi)) / (2 * log(theta)));
    low = low > 0 ? low : 0;
    high = high < d - 1 ? high : d - 1;
    if (low == high)
        high += 0.001;
    for (int64_t i = 0; i < head_dim / 2; i++) {
        /* transformers computes these in f32: base^(2i/d), the ramp, and the blend. */
        float pos_freq = (float)pow(theta, (double)(float)(2 * i) / d);
        float extrap = 1.0f / pos_freq, interp = 1.0f / ((float)y->factor * pos_freq);
        float ramp = (float)(((double)i - low) / (high - low));
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float keep = 1.0f - ramp; /* transformers' inv_freq_extrapolation_factor */
        inv_freq[i] = interp * (1.0f - keep) + extrap * keep;
    }
}

void qpk_op_rope_tables(float *cos_t, float *sin_t, const float *inv_freq, int64_t pos0, int64_t T, int64_t half,
                        float scale)
{
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < half; i++) {
            /* transformers forms position x inv_freq in f32, then takes cos and sin (times YaRN's scale). */
            float angle = (float)(pos0 + t) * inv_freq[i];
            cos_t[t * half + i] = (float)cos((double)angle) * scale;
            sin_t[t * half + i] = (float)sin((double)angle) * scale;
        }
}

void qpk_op_rope(float *v, const float *cos_t, const float *sin_t, int64_t T, int64_t heads, int64_t head_dim)
{
    int64_t half = head_dim / 2;
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < heads; h++) {
            float *p = v + (t * heads + h) * head_dim;
            const float *c = cos_t + t * half, *s = sin_t + t * half;
            for (int64_t i = 0; i < half; i++) {
                float a = p[i], b = p[i + half];
                p[i] = a * c[i] - b * s[i];
                p[i + half] = b * c[i] + a * s[i];
            }
        }
}

void qpk_op_softmax(const qpk_kernels *k, float *s, int64_t n)
{
    /*
     * The sequential definition's numbers, in fewer cycles: the maximum from eight running
     * ones (the same value in any order; a zero's sign aside, which exp does not see), the
     * exponentials with no sum waiting on each (their calls overlap), then the sum in order,
     * then the divisions, eight independent ones at a time.
     */
    float m[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            m[j] = s[i + j] > m[j] ? s[i + j] : m[j];
    for (; i < n; i++)
        m[0] = s[i] > m[0] ? s[i] : m[0];
    float mx = m[0], sum = 0;
    for (int j = 1; j < 8; j++)
        mx = m[j] > mx ? m[j] : mx;
    k->exp_shifted(s, n, mx, s);
    for (i = 0; i < n; i++)
        sum += s[i];
    for (i = 0; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            s[i + j] /= sum;
    for (; i < n; i++)
        s[i] /= sum;
}

static int64_t first_visible(int64_t p, int64_t window)
{
    return window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}

void qpk_op_attend(const qpk_kernels *k, const float *q, int64_t ldq, int64_t nq, const float *keys,
                   const float *vals, int64_t p0, int64_t window, int64_t head_dim, float *scores, float *out,
                   int64_t ldo)
{
    /* transformers divides by sqrt(head_dim) as a Python float, i.e. rounded to f32. */
    const float root = (float)sqrt((double)head_dim);
    const int64_t hd = head_dim, lo = first_visible(p0, window), n = p0 + nq - lo;
    /*
     * Every key any query sees against every query at once: scores[s n + i] = dot(q_s, key
     * lo + i) (the products commute). The keys past a query's own position cost a triangle
     * of nq^2 / 2 dots, not read.
     */
    k->dot_rows(keys + lo * hd, hd, n, q, ldq, nq, hd, scores);
    for (int64_t s = 0; s < nq; s++) {
        const int64_t f = first_visible(p0 + s, window), len = p0 + s - f + 1;
        float *row = scores + s * n + (f - lo);
        for (int64_t i = 0; i < len; i++)
            row[i] /= root;
        qpk_op_softmax(k, row, len);
        memset(out + s * ldo, 0, (size_t)hd * sizeof *out);
    }
    /*
     * Values: each output one chain over its positions in order. The positions every query
     * sees, [common, p0], go by once for all of them; before them (a window's start moving
     * with the query) and after them (the causal triangle), each query's own.
     */
    const int64_t common = first_visible(p0 + nq - 1, window);
    for (int64_t s = 0; s < nq; s++) {
        const int64_t f = first_visible(p0 + s, window), until = common > p0 ? p0 + s + 1 : common;
        if (f < until)
            k->axpy_rows(scores + s * n + (f - lo), n, 1, vals + f * hd, hd, until - f, out + s * ldo, ldo, hd);
    }
    if (common > p0) /* a window shorter than the block: each query has done its own */
        return;
    k->axpy_rows(scores + (common - lo), n, nq, vals + common * hd, hd, p0 - common + 1, out, ldo, hd);
    for (int64_t s = 1; s < nq; s++)
        k->axpy_rows(scores + s * n + (p0 + 1 - lo), n, 1, vals + (p0 + 1) * hd, hd, s, out + s * ldo, ldo, hd);
}

/* The exponentials at once, then the arithmetic (which vectorizes when m is a constant). */
static inline void swiglu_piece(const qpk_kernels *k, float *restrict gate, const float *restrict up, int64_t m)
{
    float e[64];
    for (int64_t i = 0; i < m; i++)
        e[i] = -gate[i];
    k->exp_shifted(e, m, 0.0f, e); /* x - 0 is x, -0 included */
    for (int64_t i = 0; i < m; i++)
        gate[i] = gate[i] * (1.0f / (1.0f + e[i])) * up[i];
}

void qpk_op_swiglu(const qpk_kernels *k, float *gate, const float *up, int64_t n)
{
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        swiglu_piece(k, gate + i, up + i, 64);
    swiglu_piece(k, gate + i, up + i, n - i);
}
