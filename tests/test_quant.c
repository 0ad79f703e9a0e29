/*
 * Numeric conversions against independent references: f16 decoding against the
 * IEEE formula in double, f16/bf16 rounding against a nearest-value search.
 */
#include <math.h>

#include "qpk/quant.h"
#include "testhelp.h"

static uint64_t g_rng = 0x1234567;
static uint32_t rnd32(void)
{
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (uint32_t)g_rng;
}

/* IEEE binary16 by its definition. */
static double f16_ref(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

static float bits_f(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* Nearest f16 to x by binary search over the ordered finite positive values; ties to even. */
static uint16_t f16_nearest(float x)
{
    if (isnan(x))
        return 0x7e00;
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double a = fabs((double)x);
    if (a >= 65520.0)
        return sign | 0x7c00;
    int lo = 0, hi = 0x7bff; /* f16 bit patterns 0..0x7bff are increasing */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (f16_ref((uint16_t)mid) <= a)
            lo = mid;
        else
            hi = mid - 1;
    }
    if (lo < 0x7bff) {
        double d0 = a - f16_ref((uint16_t)lo), d1 = f16_ref((uint16_t)(lo + 1)) - a;
        if (d1 < d0 || (d1 == d0 && (lo & 1)))
            lo++;
    }
    return (uint16_t)(sign | lo);
}

static uint16_t bf16_nearest(float x)
{
    if (isnan(x))
        return 0x7fc0;
    if (isinf(x) || x == 0)
        return (uint16_t)(((uint32_t)(signbit(x) != 0) << 15) | (isinf(x) ? 0x7f80 : 0));
    int ex;
    double m = frexp((double)x, &ex);           /* |m| in [0.5, 1) */
    double q = nearbyint(ldexp(m, 8));          /* 8 significant bits, ties to even */
    float r = (float)ldexp(q, ex - 8);          /* may become inf: that is correct */
    uint32_t b;
    memcpy(&b, &r, 4);
    if (fabs(ldexp(m, ex)) < 0x1p-126) {        /* subnormal: quantum fixed at 2^-133 */
        double qq = nearbyint(ldexp((double)x, 133));
        r = (float)ldexp(qq, -133);
        memcpy(&b, &r, 4);
    }
    return (uint16_t)(b >> 16);
}

static void test_f16_decode(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = qpk_f16_to_f32((uint16_t)h);
        double r = f16_ref((uint16_t)h);
        if (isnan(r) ? !isnan(f) : ((double)f != r || !signbit(f) != !signbit(r)))
            bad++;
        /* Every non-NaN f16 survives f32 and back. */
        if (!isnan(r) && qpk_f32_to_f16(f) != h)
            bad++;
    }
    CHECKF(bad == 0, "%d f16 values decode or round-trip wrongly", bad);
}

static void test_rounding(void)
{
    static const uint32_t specials[] = {
        0x477fe000, 0x477fefff, 0x477ff000, 0x477ff001, /* around 65504 / 65520 */
        0x33000000, 0x33000001, 0x32ffffff, 0x33800000, /* around 2^-25, 2^-24 */
        0x38800000, 0x387fffff, 0x387fc000, 0x38000000, /* smallest normal, subnormal edges */
        0x3f801000, 0x3f803000, 0x3f800fff,             /* halfway cases near 1 */
        0x7f7fffff, 0x00000001, 0x80000000, 0x7f800000, 0xff800000,
    };
    int bad16 = 0, badbf = 0;
    for (size_t i = 0; i < sizeof specials / sizeof *specials + 2000000; i++) {
        uint32_t b = i < sizeof specials / sizeof *specials ? specials[i] : rnd32();
        if (i % 2 && i > 100) /* bias half the samples towards the f16 range */
            b = (b & 0x80ffffff) | ((uint32_t)(100 + rnd32() % 45) << 23);
        float x = bits_f(b);
        if (isnan(x))
            continue;
        bad16 += qpk_f32_to_f16(x) != f16_nearest(x);
        badbf += qpk_f32_to_bf16(x) != bf16_nearest(x);
    }
    CHECKF(bad16 == 0, "%d f32->f16 roundings differ from the nearest-value search", bad16);
    CHECKF(badbf == 0, "%d f32->bf16 roundings differ from the reference", badbf);
    CHECK(isnan(qpk_f16_to_f32(qpk_f32_to_f16(NAN))) && isnan(qpk_bf16_to_f32(qpk_f32_to_bf16(NAN))));
}

static void test_rows(void)
{
    float src[5] = {1.0f, -2.5f, 65504.0f, 1e-8f, 3.0f}, back[5];
    uint16_t h[5];
    CHECK(qpk_row_from_f32(QPK_TYPE_F16, src, h, 5) == 5);
    qpk_row_to_f32(QPK_TYPE_F16, h, back, 5);
    CHECK(back[0] == 1.0f && back[1] == -2.5f && back[2] == 65504.0f && back[4] == 3.0f);
    src[3] = 70000.0f;
    CHECK(qpk_row_from_f32(QPK_TYPE_F16, src, h, 5) == 3);  /* overflow reported at its index */
    CHECK(qpk_row_from_f32(QPK_TYPE_BF16, src, h, 5) == 5); /* bf16 has the range */
    src[1] = INFINITY;
    CHECK(qpk_row_from_f32(QPK_TYPE_F32, src, back, 5) == 1);
}

int main(void)
{
    test_f16_decode();
    test_rounding();
    test_rows();
    return th_summary("test_quant");
}
