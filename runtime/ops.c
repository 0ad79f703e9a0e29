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

void qpk_op_softmax(float *s, int64_t n)
{
    float mx = -INFINITY, sum = 0;
    for (int64_t i = 0; i < n; i++)
        mx = s[i] > mx ? s[i] : mx;
    for (int64_t i = 0; i < n; i++)
        sum += (s[i] = expf(s[i] - mx));
    for (int64_t i = 0; i < n; i++)
        s[i] /= sum;
}

void qpk_op_attend(const qpk_kernels *k, const float *q, const float *keys, const float *vals, int64_t first,
                   int64_t last, int64_t head_dim, float *scores, float *out)
{
    /* transformers divides by sqrt(head_dim) as a Python float, i.e. rounded to f32. */
    float root = (float)sqrt((double)head_dim);
    const int64_t n = last - first + 1;
    /* Every key against q at once (each score dot(q, key): the products commute). */
    k->dot_rows(keys + first * head_dim, head_dim, n, q, head_dim, 1, head_dim, scores + first);
    for (int64_t i = first; i <= last; i++)
        scores[i] /= root;
    qpk_op_softmax(scores + first, n);
    memset(out, 0, (size_t)head_dim * sizeof *out);
    k->axpy_rows(scores + first, vals + first * head_dim, head_dim, n, out, head_dim);
}

void qpk_op_swiglu(float *gate, const float *up, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g * (1.0f / (1.0f + expf(-g))) * up[i];
    }
}
