/*
 * Numeric conversions against independent references: f16 decoding against the
 * IEEE formula in double, f16/bf16 rounding against a nearest-value search.
 */
#include <math.h>
#include <xxhash.h>

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

/* ---------------------------------------------------------- quantization */

static float gauss(void)
{
    float s = 0;
    for (int i = 0; i < 4; i++)
        s += (float)(rnd32() & 0xffff) / 65536.0f;
    return (s - 2.0f) * 1.7320508f;
}

static const uint32_t QTYPES[3] = {QPK_TYPE_INT8, QPK_TYPE_INT4, QPK_TYPE_INT4S};

/* Every weight within |d|/2 of its code (int4s: within |d| when clamped at +7), d the group's stored scale. */
static void test_rtn_bound(void)
{
    enum { N = 384 };
    const uint32_t groups[4] = {32, 64, 128, N};
    float x[N], w[N];
    uint8_t blocks[N * 2];
    for (int dist = 0; dist < 6; dist++)
        for (int t = 0; t < 3; t++)
            for (int g = 0; g < 4; g++) {
                for (int i = 0; i < N; i++) {
                    float v = gauss() * 0.02f;
                    x[i] = dist == 0 ? v
                           : dist == 1 ? (i % 53 == 0 ? 50 * v : v)      /* outliers */
                           : dist == 2 ? 0.0f                            /* all zero */
                           : dist == 3 ? 0.37f                           /* constant */
                           : dist == 4 ? v * 1e-6f                       /* f16-subnormal scales */
                                       : v * 2e5f;                       /* large */
                }
                qpk_err e = {0};
                uint32_t G = groups[g], type = QTYPES[t];
                CHECKF(qpk_quantize_row(type, G, x, N, blocks, &e) == QPK_OK, "%s", e.msg);
                qpk_dequantize_row(type, G, blocks, N, w);
                int bad = 0, nan = 0;
                size_t bb = qpk_type_block_bytes(type, G);
                for (int i = 0; i < N; i++) {
                    qpk_qparams p;
                    int32_t q[N];
                    qpk_unpack_group(type, G, blocks + (size_t)(i / (int)G) * bb, &p, q);
                    nan += isnan(w[i]);
                    int32_t code = q[i % (int)G];
                    double bound = fabs(p.d) / 2.0 * (1 + 1e-7);
                    if (type == QPK_TYPE_INT4S && code == 7 && (double)x[i] / p.d > 7.5)
                        bound *= 2; /* the far side of the extreme: +8 clamps to +7 */
                    bad += fabs((double)x[i] - (double)w[i]) > bound;
                    if (dist == 2)
                        bad += p.d != 0 || w[i] != 0;
                }
                CHECKF(bad == 0 && nan == 0, "%s g%u distribution %d: %d weights beyond d/2, %d NaN",
                       qpk_type_name(type), G, dist, bad, nan);
            }
}

static void test_rtn_errors(void)
{
    float x[64] = {0};
    uint8_t out[128];
    qpk_err e = {0};
    x[5] = NAN;
    CHECK_ERR(qpk_quantize_row(QPK_TYPE_INT4, 32, x, 64, out, &e), QPK_E_VALUE, e, "weights 0..31: weight 5 of a group is nan");
    x[5] = 0, x[40] = -INFINITY;
    CHECK_ERR(qpk_quantize_row(QPK_TYPE_INT8, 32, x, 64, out, &e), QPK_E_VALUE, e, "weights 32..63: weight 8 of a group is -inf");
    x[40] = 1e7f; /* 1e7 / 127 is past 65504 */
    CHECK_ERR(qpk_quantize_row(QPK_TYPE_INT8, 32, x, 64, out, &e), QPK_E_VALUE, e, "past the f16 range");
    CHECK_ERR(qpk_quantize_row(QPK_TYPE_INT8, 32, x, 48, out, &e), QPK_E_INVALID_ARG, e, "not whole groups");
    for (uint32_t t = 0; t < QPK_TYPE_COUNT_; t++) /* what --quant takes, qpk quantizes to */
        CHECKF(!qpk_type_is_quant_target(t) || qpk_type_can_quantize(t), "%s", qpk_type_name(t));
}

/* Blocks worked out by hand from FORMAT.md, for x_i = i - 16, i = 0..31. */
static void test_hand_blocks(void)
{
    float x[32];
    uint8_t b[40];
    qpk_err e = {0};
    for (int i = 0; i < 32; i++)
        x[i] = (float)(i - 16);
    /* int8: d = smallest f16 >= 16/127 = 0.12598: 0.125 * (1 + 9/1024) = 0x3009; q = round(x / d). */
    qpk_quantize_row(QPK_TYPE_INT8, 32, x, 32, b, &e);
    CHECK(b[0] == 0x09 && b[1] == 0x30);
    CHECK((int8_t)b[2] == -127 && (int8_t)b[2 + 16] == 0 && (int8_t)b[2 + 17] == 8 && (int8_t)b[2 + 31] == 119);
    /* int4s: extreme -16 -> d = -16 / -8 = 2 (0x4000); q = round(x/2) in -8..7 stored +8;
     * byte j = q_j | q_(j+16) << 4. */
    qpk_quantize_row(QPK_TYPE_INT4S, 32, x, 32, b, &e);
    CHECK(b[0] == 0x00 && b[1] == 0x40);
    CHECK(b[2] == 0x80);      /* q0 = -8 -> 0; q16 = 0 -> 8 */
    CHECK(b[2 + 15] == 0xF8); /* q15 = round(-0.5) = 0 -> 8; q31 = 7.5 -> 8, clamped to 7 -> 15 */
    CHECK(b[2 + 1] == 0x80);  /* q1 = round(-7.5) = -8 (ties to even) -> 0; q17 = round(0.5) = 0 -> 8 */
    /* int4: z = round(16 / (31/15)) = round(7.74) = 8; d = smallest f16 >= max(16/8, 15/7) = 2.142857:
     * 1.0714 x 1024 = 73.1 -> 74: 2 * (1 + 74/1024) = 0x404A; q = round(x/d) + 8: x=-16 -> -7.46 -> -7
     * -> 1; x=15 -> 6.99 -> 7 -> 15. */
    qpk_quantize_row(QPK_TYPE_INT4, 32, x, 32, b, &e);
    CHECK(b[0] == 0x4A && b[1] == 0x40 && b[2] == 8 && b[3] == 0);
    CHECK(b[4] == 0x81 && b[4 + 15] == 0xF8); /* byte 0: q0 = 1, q16 = 8; byte 15: q15 = 8, q31 = 15 */
    /* A group whose extreme is positive gets a negative int4s scale: x = 16 - i. */
    for (int i = 0; i < 32; i++)
        x[i] = (float)(16 - i);
    qpk_quantize_row(QPK_TYPE_INT4S, 32, x, 32, b, &e);
    CHECK(b[0] == 0x00 && b[1] == 0xC0); /* -2 */
    CHECK((b[2] & 15) == 0);              /* x0 = 16 -> q = -8 -> nibble 0 */
}

/*
 * MLX's affine types: round-to-nearest puts every weight within d/2 of its code's weight (plus
 * the rounding of the bias m to the type's half), a group of both signs has 0 within that
 * rounding of a code, and a weight is exactly fmaf(d, q, m); the hand-worked block below.
 */
static void test_affine(void)
{
    enum { N = 256 };
    static const uint32_t TYPES[4] = {QPK_TYPE_MLX4, QPK_TYPE_MLX8, QPK_TYPE_MLX4_F16, QPK_TYPE_MLX8_F16};
    float x[N], w[N];
    uint8_t blocks[2 * N];
    for (int t = 0; t < 4; t++)
        for (int dist = 0; dist < 5; dist++)
            for (uint32_t G = 32; G <= 128; G *= 2) {
                const uint32_t type = TYPES[t];
                const bool bf16 = t < 2;
                for (int i = 0; i < N; i++) {
                    float v = gauss() * 0.02f;
                    x[i] = dist == 0 ? v : dist == 1 ? fabsf(v) + 0.01f /* one sign */
                           : dist == 2 ? (i % 53 == 0 ? 50 * v : v) : dist == 3 ? 0.37f : v * 1e-3f;
                }
                qpk_err e = {0};
                CHECKF(qpk_quantize_row(type, G, x, N, blocks, &e) == QPK_OK, "%s", e.msg);
                qpk_dequantize_row(type, G, blocks, N, w);
                const size_t bb = qpk_type_block_bytes(type, G);
                int bad = 0;
                for (int g = 0; g < N / (int)G; g++) {
                    qpk_qparams p;
                    int32_t q[128];
                    qpk_unpack_group(type, G, blocks + (size_t)g * bb, &p, q);
                    const double m_round = fabs(p.m) * (bf16 ? 0x1p-8 : 0x1p-11); /* the half's rounding of m */
                    float lo = x[g * G], hi = x[g * G];
                    for (uint32_t i = 0; i < G; i++) {
                        const int k = g * (int)G + (int)i;
                        lo = fminf(lo, x[k]), hi = fmaxf(hi, x[k]);
                        bad += fabs((double)x[k] - w[k]) > fabs(p.d) / 2 * (1 + 1e-6) + m_round;
                        bad += w[k] != fmaf(p.d, (float)q[i], p.m); /* FORMAT.md: s q + b, rounded once */
                    }
                    if (lo < 0 && hi > 0) /* 0 on a code, within m's rounding */
                        bad += fabs(fmaf(p.d, nearbyintf(-p.m / p.d), p.m)) > m_round;
                }
                CHECKF(bad == 0, "%s g%u distribution %d: %d weights off", qpk_type_name(type), G, dist, bad);
            }
    /* x_i = i - 16 as mlx4_f16: z = round(16 / (31/15)) = 8, d = the smallest f16 >= max(16/8, 15/7) = 0x404A
     * (2.14453125, as int4's), m = f16(-8 d) = -17.15625 = 0xCC4A exactly; q = round((x - m) / d): x = -16 -> 0.54
     * -> 1, x = 0 -> 8.0 -> 8, x = 15 -> 14.99 -> 15. Byte j of the codes: q_j | q_(j+16) << 4. */
    float h[32];
    uint8_t b[20];
    qpk_err e = {0};
    for (int i = 0; i < 32; i++)
        h[i] = (float)(i - 16);
    CHECK(qpk_quantize_row(QPK_TYPE_MLX4_F16, 32, h, 32, b, &e) == QPK_OK);
    CHECK(b[0] == 0x4A && b[1] == 0x40 && b[2] == 0x4A && b[3] == 0xCC);
    CHECK(b[4] == 0x81 && b[4 + 15] == 0xF8); /* q0 = 1, q16 = 8; q15 (x = -1: 7.53) = 8, q31 = 15 */
    h[3] = NAN;
    CHECK_ERR(qpk_quantize_row(QPK_TYPE_MLX8, 32, h, 32, b, &e), QPK_E_VALUE, e, "weight 3 of a group is nan");
}

/* --------------------------------------------------------------- kernels */

static void fill_matrix(qpk_matrix *m, uint32_t type, uint32_t group, int64_t rows, int64_t cols, float *f32)
{
    for (int64_t i = 0; i < rows * cols; i++)
        f32[i] = gauss() * 0.05f;
    m->type = type, m->group_size = group, m->rows = rows, m->cols = cols;
    size_t rb = type == QPK_TYPE_F32 ? (size_t)cols * 4 : type < QPK_TYPE_INT8 ? (size_t)cols * 2
                                                          : (size_t)(cols / group) * qpk_type_block_bytes(type, group);
    uint8_t *d = malloc(rb * (size_t)rows + 1);
    qpk_err e = {0};
    for (int64_t r = 0; r < rows; r++) {
        if (qpk_type_is_quantized(type))
            qpk_quantize_row(type, group, f32 + r * cols, cols, d + (size_t)r * rb, &e);
        else
            qpk_row_from_f32(type, f32 + r * cols, d + (size_t)r * rb, (size_t)cols);
    }
    m->data = d;
}

/*
 * Each optimized table this CPU runs against the scalar one: dequantization bit for bit;
 * gemm bit for bit (one FMA chain per output, whatever the table, the tile or the batch);
 * gemv (decode's 4-chain dot products) within the worst-case rounding of two K-term f32
 * sums of gemm; and the SIMD tables' gemv against each other bit for bit.
 */
static void test_kernels_of(const qpk_kernels *best, const qpk_kernels *prev)
{
    const qpk_kernels *ref = qpk_kernels_scalar();
    static const struct {
        uint32_t type, group;
        int64_t rows, cols;
    } cases[] = {
        {QPK_TYPE_F32, 0, 13, 37},   {QPK_TYPE_F16, 0, 9, 100},   {QPK_TYPE_BF16, 0, 17, 1000},
        {QPK_TYPE_BF16, 0, 5, 8},    {QPK_TYPE_F32, 0, 3, 3},     {QPK_TYPE_INT8, 32, 13, 96},
        {QPK_TYPE_INT8, 64, 7, 384}, {QPK_TYPE_INT4, 32, 11, 64}, {QPK_TYPE_INT4, 128, 9, 384},
        {QPK_TYPE_INT4S, 32, 21, 96}, {QPK_TYPE_INT4S, 96, 8, 288}, {QPK_TYPE_INT4, 384, 3, 384},
        /* Q4_0 rows of 128 and of 480 (four rows at a time, then the rest) */
        {QPK_TYPE_INT4S, 32, 8, 128},  {QPK_TYPE_INT4S, 32, 9, 480},
        {QPK_TYPE_BF16, 0, 67, 2100}, /* rows past a panel and columns past a packed chunk */
        {QPK_TYPE_F32, 0, 45, 2090},  /* the same for rows packed where they are */
        {QPK_TYPE_INT8Z, 32, 40, 2176},
        /* 4-bit panels made straight from blocks: rows past a panel and half of one, a chunk's
           boundary inside a group (2048 = 21 x 96 + 32), the high nibbles first after it */
        {QPK_TYPE_INT4S, 96, 41, 2304}, {QPK_TYPE_MLX4, 32, 12, 2112},
        {QPK_TYPE_Q4_K, 256, 9, 512},  {QPK_TYPE_Q6_K, 256, 7, 768}, {QPK_TYPE_Q5_K, 256, 5, 256},
        {QPK_TYPE_Q4_1, 32, 6, 96},    {QPK_TYPE_Q5_0, 32, 5, 64},   {QPK_TYPE_Q5_1, 32, 35, 128},
        {QPK_TYPE_MLX4, 64, 13, 192},  {QPK_TYPE_MLX8, 32, 9, 96},   {QPK_TYPE_MLX4_F16, 128, 35, 256},
        {QPK_TYPE_MLX8_F16, 64, 7, 2176}, {QPK_TYPE_IQ4_NL, 32, 9, 96}, {QPK_TYPE_IQ4_XS, 256, 7, 768},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int64_t R = cases[c].rows, K = cases[c].cols, T = 1 + (int64_t)c % 11;
        float *f32 = malloc((size_t)(R * K) * 4), *x = malloc((size_t)(T * K) * 4), *a = malloc((size_t)K * 4),
              *b = malloc((size_t)K * 4);
        float *yv = malloc((size_t)(T * R) * 4), *yg = malloc((size_t)(T * R) * 4), *ys = malloc((size_t)(T * R) * 4);
        float *yp = malloc((size_t)(T * R) * 4), *scratch = malloc(qpk_gemm_scratch_floats(K) * 4);
        qpk_matrix m;
        fill_matrix(&m, cases[c].type, cases[c].group, R, K, f32);
        for (int64_t i = 0; i < T * K; i++)
            x[i] = gauss();
        bool deq = true;
        for (int64_t r = 0; r < R; r++) {
            best->row_to_f32(&m, r, a);
            qpk_dequantize_row(m.type, m.group_size, (const uint8_t *)m.data + (size_t)r * qpk_matrix_row_bytes(&m), K, b);
            deq &= !memcmp(a, b, (size_t)K * 4);
        }
        CHECKF(deq, "case %zu (%s): dequantization differs from the reference", c, qpk_type_name(m.type));
        ref->gemm(&m, x, T, K, ys, R, 0, R, scratch);
        best->gemm(&m, x, T, K, yg, R, 0, R, scratch);
        CHECKF(!memcmp(yg, ys, (size_t)(T * R) * 4), "case %zu (%s): %s gemm differs from the scalar one", c,
               qpk_type_name(m.type), best->name);
        /* Any split of the rows (whole panels or not) and of the tokens gives the same bits. */
        best->gemm(&m, x, T, K, yp, R, 0, R / 2, scratch);
        best->gemm(&m, x, T, K, yp, R, R / 2, R, scratch);
        if (T > 1) {
            best->gemm(&m, x, 1, K, yp, R, 0, R, scratch);
            best->gemm(&m, x + K, T - 1, K, yp + R, R, 0, R, scratch);
        }
        CHECKF(!memcmp(yg, yp, (size_t)(T * R) * 4), "case %zu: %s gemm depends on the split", c, best->name);
        for (int64_t t = 0; t < T; t++)
            best->gemv(&m, x + t * K, yv + t * R, 0, R, scratch);
        /* Any split of the rows, odd and even ranges (gemv pairs rows inside a range), gives the same bits. */
        for (int64_t s0 = 1; s0 <= 3 && s0 < R; s0++) {
            memset(yp, 0xff, (size_t)R * 4);
            best->gemv(&m, x, yp, 0, s0, scratch);
            best->gemv(&m, x, yp, s0, R, scratch);
            CHECKF(!memcmp(yv, yp, (size_t)R * 4), "case %zu: %s gemv depends on the split at row %lld", c, best->name,
                   (long long)s0);
        }
        /*
         * gemv4's four streams, cut in two pieces as the pool cuts a share, the rows past the
         * quarters by gemv: each row's bits as gemv's (quarters of R / 4 rows and fewer).
         */
        float *yr = malloc((size_t)R * 4);
        ref->gemv(&m, x, yr, 0, R, scratch); /* the scalar table's own gemv */
        for (int64_t q = R / 4; q >= 1 && q >= R / 4 - 1; q--) {
            const qpk_kernels *tk[2] = {best, ref};
            for (int i = 0; i < 2; i++) {
                memset(yp, 0xff, (size_t)R * 4);
                tk[i]->gemv4(&m, x, yp, 0, q / 2, q, scratch);
                tk[i]->gemv4(&m, x, yp, q / 2, q, q, scratch);
                tk[i]->gemv(&m, x, yp, 4 * q, R, scratch);
                CHECKF(!memcmp(i ? yr : yv, yp, (size_t)R * 4), "case %zu (%s): %s gemv4 (quarter %lld) differs "
                       "from gemv", c, qpk_type_name(m.type), tk[i]->name, (long long)q);
            }
        }
        free(yr);
        if (prev) { /* another SIMD table: the same gemv arithmetic, so the same bits */
            for (int64_t t = 0; t < T; t++)
                prev->gemv(&m, x + t * K, yp + t * R, 0, R, scratch);
            CHECKF(!memcmp(yv, yp, (size_t)(T * R) * 4), "case %zu: %s and %s gemv differ", c, best->name, prev->name);
        }
        if (qpk_type_info_of(m.type)->block) {
            /* ggml's types: decode's dot products are the f32 row's, bit for bit (weights made in registers). */
            float *w32 = malloc((size_t)(R * K) * 4);
            for (int64_t r = 0; r < R; r++)
                best->row_to_f32(&m, r, w32 + r * K);
            qpk_matrix f = {QPK_TYPE_F32, 0, R, K, w32, NULL};
            for (int64_t t = 0; t < T; t++)
                best->gemv(&f, x + t * K, yp + t * R, 0, R, scratch);
            CHECKF(!memcmp(yv, yp, (size_t)(T * R) * 4), "case %zu (%s): %s gemv differs from its f32 rows'", c,
                   qpk_type_name(m.type), best->name);
            free(w32);
        }
        double worst = 0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t r = 0; r < R; r++) {
                best->row_to_f32(&m, r, a);
                double mag = 0;
                for (int64_t i = 0; i < K; i++)
                    mag += fabs((double)x[t * K + i] * a[i]);
                double err = fabs((double)yv[t * R + r] - ys[t * R + r]) / (mag * 0x1p-24 + 1e-30);
                worst = err > worst ? err : worst;
            }
        /* Each sum is within K u sum|xw| of the exact one (u = 2^-24): the two within 2K u. */
        CHECKF(worst <= 2.0 * (double)K, "case %zu (%s): %s gemv vs gemm differ by %.1f u sum|xw| (K = %lld)", c,
               qpk_type_name(m.type), best->name, worst, (long long)K);
        free((void *)m.data), free(f32), free(x), free(a), free(b), free(yv), free(yg), free(ys), free(yp), free(scratch);
    }
}

/* Each table's round-to-nearest rows against the reference, byte for byte: random rows,
 * an all-zero group, a constant group, huge and tiny magnitudes; a NaN gives the same error. */
static void test_quantize_rows(const qpk_kernels *k)
{
    static const uint32_t types[] = {QPK_TYPE_INT8, QPK_TYPE_INT4, QPK_TYPE_INT4S, QPK_TYPE_INT8Z};
    static const uint32_t groups[] = {32, 64, 128, 384};
    enum { N = 768 };
    float x[N];
    uint8_t a[N * 2], b[N * 2];
    for (size_t t = 0; t < sizeof types / sizeof *types; t++)
        for (size_t g = 0; g < sizeof groups / sizeof *groups; g++)
            for (int trial = 0; trial < 4; trial++) {
                for (int i = 0; i < N; i++)
                    x[i] = gauss() * (trial == 1 ? 1e-6f : trial == 2 ? 3e3f : 1.0f);
                for (int i = 0; i < 32; i++) /* a zero group, a constant one, a non-negative one */
                    x[i] = 0, x[32 + i] = trial == 3 ? 0.5f : x[32 + i], x[64 + i] = fabsf(x[64 + i]);
                qpk_err e1 = {0}, e2 = {0};
                memset(a, 0xAA, sizeof a), memset(b, 0x55, sizeof b);
                qpk_status s1 = qpk_quantize_row(types[t], groups[g], x, N, a, &e1);
                qpk_status s2 = k->quantize_row(types[t], groups[g], x, N, b, &e2);
                size_t n = qpk_type_row_bytes(types[t], groups[g], N);
                CHECKF(s1 == s2 && (s1 != QPK_OK || !memcmp(a, b, n)), "%s quantize_row %s/g%u trial %d differs",
                       k->name, qpk_type_name(types[t]), groups[g], trial);
            }
    x[300] = NAN;
    qpk_err e1 = {0}, e2 = {0};
    qpk_status s1 = qpk_quantize_row(QPK_TYPE_INT8, 32, x, N, a, &e1), s2 = k->quantize_row(QPK_TYPE_INT8, 32, x, N, b, &e2);
    CHECKF(s1 == QPK_E_VALUE && s2 == s1 && !strcmp(e1.msg, e2.msg), "%s: NaN: \"%s\" vs \"%s\"", k->name, e1.msg,
           e2.msg);
}

/*
 * quantize_group_ratios against qpk_quantize_group at each ratio, bit for bit: every grid
 * type (the affine one by the reference), groups of odd and usual sizes, small, large, zero,
 * constant and one-signed groups, and a non-finite weight (no ratio done).
 */
static void test_group_ratios(const qpk_kernels *k)
{
    static const uint32_t types[] = {QPK_TYPE_INT8, QPK_TYPE_INT4, QPK_TYPE_INT4S, QPK_TYPE_INT8Z, QPK_TYPE_MLX4};
    static const int64_t groups[] = {32, 64, 128, 36};
    static const float ratios[] = {1.0f, 0.95f, 0.9f, 0.75f, 0.5f, 0.05f};
    enum { R = sizeof ratios / sizeof *ratios, G = 128 };
    float w[G], want[G], got[R * G];
    for (size_t t = 0; t < sizeof types / sizeof *types; t++)
        for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++)
            for (int trial = 0; trial < 6; trial++) {
                const int64_t n = groups[gi];
                for (int64_t i = 0; i < n; i++) {
                    float v = gauss() * (trial == 1 ? 1e-6f : trial == 2 ? 3e3f : 1.0f);
                    w[i] = trial == 3 ? 0.0f : trial == 4 ? 0.5f : trial == 5 ? fabsf(v) : v;
                }
                memset(got, 0xAA, sizeof got);
                int done = k->quantize_group_ratios(types[t], w, n, ratios, R, got);
                bool same = done == R;
                for (int r = 0; r < R && same; r++) {
                    qpk_qparams p;
                    same = qpk_quantize_group(types[t], w, n, ratios[r], &p, NULL, want, NULL) == QPK_OK &&
                           !memcmp(want, got + r * n, (size_t)n * sizeof *want);
                }
                CHECKF(same, "%s quantize_group_ratios %s/g%lld trial %d: %d ratios, or other values", k->name,
                       qpk_type_name(types[t]), (long long)n, trial, done);
            }
    w[7] = INFINITY;
    CHECKF(k->quantize_group_ratios(QPK_TYPE_INT4, w, 32, ratios, R, got) == 0, "%s: a group with inf was quantized",
           k->name);
    CHECKF(k->quantize_group_ratios(QPK_TYPE_Q4_K, w, 32, ratios, R, got) == 0, "%s: Q4_K has no group quantizer",
           k->name);
}

/*
 * fake_quantize_row against what AWQ's search did before it: the scaled row through
 * qpk_quantize_row and qpk_dequantize_row, the scales divided out, bit for bit. Every grid
 * type, rows of 1 to 11 groups (the SIMD tables take 8 groups at a time), usual and odd
 * group sizes, small (f16-subnormal scales), large, zero, constant, one-signed groups and
 * signed zeros; then the rows the reference refuses: inf, a scale past f16, no grid, a
 * group size qpk_group_ok refuses.
 */
static void test_fake_quantize_row(const qpk_kernels *k)
{
    static const uint32_t types[] = {QPK_TYPE_INT8, QPK_TYPE_INT4, QPK_TYPE_INT4S, QPK_TYPE_INT8Z, QPK_TYPE_MLX4};
    static const int64_t groups[] = {32, 64, 128, 40};
    static const int counts[] = {1, 3, 8, 11};
    enum { N = 11 * 128 };
    static float w[N], s[N], want[N], got[N];
    static uint8_t bytes[N * 2];
    for (size_t t = 0; t < sizeof types / sizeof *types; t++)
        for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++)
            for (size_t ci = 0; ci < sizeof counts / sizeof *counts; ci++)
                for (int trial = 0; trial < 7; trial++) {
                    const int64_t G = groups[gi], n = G * counts[ci];
                    if (!qpk_group_ok(types[t], (uint32_t)G, n))
                        continue;
                    for (int64_t i = 0; i < n; i++) {
                        float v = gauss() * (trial == 1 ? 1e-6f : trial == 2 ? 3e3f : 1.0f);
                        /* Whole groups zero, constant or of one sign, and here and there a signed zero. */
                        const int64_t g = i / G;
                        w[i] = trial == 3 && g % 2 == 0 ? 0.0f : trial == 4 ? 0.5f : trial == 5 ? fabsf(v)
                               : trial == 6 ? (i % 5 == 0 ? -0.0f : -fabsf(v)) : v;
                        s[i] = expf(gauss());
                    }
                    for (int64_t i = 0; i < n; i++)
                        want[i] = w[i] * s[i];
                    qpk_err e;
                    CHECK(qpk_quantize_row(types[t], (uint32_t)G, want, n, bytes, &e) == QPK_OK);
                    qpk_dequantize_row(types[t], (uint32_t)G, bytes, n, want);
                    for (int64_t i = 0; i < n; i++)
                        want[i] /= s[i];
                    memset(got, 0xAA, sizeof got);
                    bool done = k->fake_quantize_row(types[t], (uint32_t)G, w, s, n, got);
                    CHECKF(done && !memcmp(want, got, (size_t)n * sizeof *got),
                           "%s fake_quantize_row %s/g%lld, %d groups, trial %d: %s", k->name,
                           qpk_type_name(types[t]), (long long)G, counts[ci], trial, done ? "other values" : "refused");
                }
    for (int i = 0; i < 8 * 32; i++)
        w[i] = gauss(), s[i] = 1.0f;
    w[200] = INFINITY;
    CHECKF(!k->fake_quantize_row(QPK_TYPE_INT4, 32, w, s, 8 * 32, got), "%s: a row with inf was quantized", k->name);
    w[200] = 1e6f; /* int4's scale 2e6 / 15 > 65504 */
    CHECKF(!k->fake_quantize_row(QPK_TYPE_INT4, 32, w, s, 8 * 32, got), "%s: a scale past f16 was quantized", k->name);
    CHECKF(!k->fake_quantize_row(QPK_TYPE_Q4_K, 256, w, s, 256, got), "%s: Q4_K has no group quantizer", k->name);
    for (int i = 0; i < 8 * 40; i++) /* a row the reference takes, but for its groups' size */
        w[i] = gauss(), s[i] = 1.0f;
    CHECKF(!qpk_group_ok(QPK_TYPE_INT4, 40, 8 * 40) && !k->fake_quantize_row(QPK_TYPE_INT4, 40, w, s, 8 * 40, got),
           "%s: a group qpk_group_ok refuses was quantized", k->name);
}

/* Each table's accumulating products (GPTQ's deferred updates, its factorizations) against the scalar ones, bit for bit. */
static void test_gemm_acc(const qpk_kernels *k)
{
    const qpk_kernels *ref = qpk_kernels_scalar();
    enum { T = 13, K = 37, J = 71 };
    float xf[T * K], pf[K * J], yf[T * J], zf[T * J];
    double xd[T * K], pd[K * J], yd[T * J], zd[T * J];
    for (int i = 0; i < T * K; i++)
        xf[i] = gauss(), xd[i] = gauss();
    for (int i = 0; i < K * J; i++)
        pf[i] = gauss(), pd[i] = gauss();
    for (int i = 0; i < T * J; i++)
        yf[i] = zf[i] = gauss(), yd[i] = zd[i] = gauss();
    ref->gemm_acc(xf, K, T, pf, J, K, yf, J, J);
    k->gemm_acc(xf, K, T, pf, J, K, zf, J, J);
    CHECKF(!memcmp(yf, zf, sizeof yf), "%s gemm_acc differs from the scalar one", k->name);
    ref->gemm_sub_f64(xd, K, T, pd, J, K, yd, J, J);
    k->gemm_sub_f64(xd, K, T, pd, J, K, zd, J, J);
    CHECKF(!memcmp(yd, zd, sizeof yd), "%s gemm_sub_f64 differs from the scalar one", k->name);
    /* A corner of it (row and column tails), the rest untouched. */
    memcpy(zd, yd, sizeof yd);
    k->gemm_sub_f64(xd + K, K, 5, pd + 3, J, 9, zd + J + 3, J, 11);
    ref->gemm_sub_f64(xd + K, K, 5, pd + 3, J, 9, yd + J + 3, J, 11);
    CHECKF(!memcmp(yd, zd, sizeof yd), "%s gemm_sub_f64 on a corner differs", k->name);
}

/* pack_panel against the scalar table's: full and partial panels, a window of columns with a tail. */
static void test_pack_panel(const qpk_kernels *k)
{
    enum { LD = 53, P = 32 }; /* gemm's panel */
    static float rows[P * LD];
    _Alignas(64) static float want[LD * P], got[LD * P];
    for (int i = 0; i < P * LD; i++)
        rows[i] = gauss();
    const int nrs[] = {P, 7};
    const int64_t windows[][2] = {{0, LD}, {3, 37}, {16, 16}};
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 3; b++) {
            memset(want, 0xa5, sizeof want), memset(got, 0xa5, sizeof got);
            qpk_kernels_scalar()->pack_panel(rows, LD, nrs[a], windows[b][0], windows[b][1], want);
            k->pack_panel(rows, LD, nrs[a], windows[b][0], windows[b][1], got);
            CHECKF(!memcmp(want, got, sizeof want), "%s pack_panel differs (nr %d, columns %lld + %lld)", k->name,
                   nrs[a], (long long)windows[b][0], (long long)windows[b][1]);
            const int64_t k0 = windows[b][0], last = windows[b][1] - 1;
            CHECKF(want[P + 1] == rows[LD + k0 + 1] &&
                       want[last * P + P - 1] == (nrs[a] == P ? rows[(P - 1) * LD + k0 + last] : 0.0f),
                   "the scalar pack_panel misplaces a weight");
        }
}

/* dot_rows is the table's dot, bit for bit, for every (row, vector) of odd shapes with tails. */
static void test_dot_rows(const qpk_kernels *k)
{
    enum { T = 11, S = 7, LD = 53 }; /* 4-vector tiles, a pair, one left; tiles of 4 and 8 rows and rows left */
    float x[T * LD], w[S * LD], y[S * T];
    for (int i = 0; i < T * LD; i++)
        x[i] = gauss();
    for (int i = 0; i < S * LD; i++)
        w[i] = gauss();
    for (int64_t n = 1; n <= LD; n += 13) {
        bool same = true;
        k->dot_rows(x, LD, T, w, LD, S, n, y);
        for (int s = 0; s < S; s++)
            for (int t = 0; t < T; t++) {
                float d = k->dot(x + t * LD, w + s * LD, n);
                same &= !memcmp(&d, y + s * T + t, 4);
            }
        CHECKF(same, "%s dot_rows differs from its dot (n = %lld)", k->name, (long long)n);
    }
}

/*
 * axpy_rows against its definition, element by element: one fused multiply-add per row in
 * order (AVX tables), or a rounded product then a sum (scalar); lengths with 64-, 16-, 8-
 * and 1-element pieces, one row and many, one query and every tile of queries (1 to 9).
 */
static void test_axpy_rows(const qpk_kernels *k)
{
    enum { T = 9, LD = 151, QMAX = 9, LDA = 11, LDY = 157 };
    float a[QMAX * LDA], x[T * LD], y[QMAX * LDY], want[QMAX * LDY];
    for (int i = 0; i < QMAX * LDA; i++)
        a[i] = gauss();
    for (int i = 0; i < T * LD; i++)
        x[i] = gauss();
    const bool fused = strcmp(k->name, "scalar") != 0;
    for (int64_t Q = 1; Q <= QMAX; Q += Q < 5 ? 1 : 4)
        for (int64_t n = 1; n <= LD; n += 25)
            for (int64_t rows = 1; rows <= T; rows += 8) {
                for (int i = 0; i < QMAX * LDY; i++)
                    y[i] = want[i] = gauss();
                for (int64_t q = 0; q < Q; q++)
                    for (int64_t t = 0; t < rows; t++)
                        for (int64_t i = 0; i < n; i++) {
                            const float at = a[q * LDA + t], xt = x[t * LD + i];
                            volatile float p = at * xt; /* rounded, whatever the compiler contracts */
                            want[q * LDY + i] = fused ? fmaf(at, xt, want[q * LDY + i]) : want[q * LDY + i] + p;
                        }
                k->axpy_rows(a, LDA, Q, x, LD, rows, y, LDY, n);
                /* The whole of y: an element past a row's end or a row past Q is not written. */
                CHECKF(!memcmp(y, want, sizeof y), "%s axpy_rows differs (Q = %lld, n = %lld, rows = %lld)", k->name,
                       (long long)Q, (long long)n, (long long)rows);
            }
}

/*
 * exp_shifted against expf(x - shift) bit for bit, over a sweep of every float pattern (NaN, inf,
 * subnormals, the overflow and underflow edges among them) and a dense run where softmax lives,
 * in pieces of odd lengths (the vector tables' tails) and in place. The vector tables compute
 * glibc's expf themselves: elsewhere they need not match the C library's.
 */
static void test_exp_shifted(const qpk_kernels *k)
{
#if !defined(__GLIBC__) || (__GLIBC__ == 2 && __GLIBC_MINOR__ < 28)
    if (strcmp(k->name, "scalar")) {
        printf("exp_shifted of %s: not glibc 2.28 or later, skipped\n", k->name);
        return;
    }
#endif
    enum { N = 1 << 16 };
    static float x[N], y[N];
    const float shifts[] = {0.0f, 1.75f, -3.0f};
    int bad = 0;
    for (int pass = 0; pass < 2; pass++)
        for (uint64_t base = 0; base < (pass ? 1u << 23 : 1ull << 32); base += (uint64_t)N * (pass ? 3 : 4099)) {
            for (int i = 0; i < N; i++) {
                /* pass 0: every 4099th pattern; pass 1: every third float of [-64, -32) */
                const uint64_t at = base + (uint64_t)i * (pass ? 3 : 4099);
                const uint32_t u = pass ? 0xc2000000u + (uint32_t)at : (uint32_t)at;
                memcpy(&x[i], &u, 4);
            }
            for (size_t si = 0; si < sizeof shifts / sizeof *shifts; si++) {
                for (int at = 0, len = 1; at < N; at += len, len = len * 3 + 1)
                    k->exp_shifted(x + at, at + len <= N ? len : N - at, shifts[si], y + at);
                for (int i = 0; i < N; i++) {
                    const float want = expf(x[i] - shifts[si]);
                    if (memcmp(&want, &y[i], 4) && !(isnan(want) && isnan(y[i])) && bad++ < 5)
                        printf("%s exp_shifted(%a - %g) = %a, expf %a\n", k->name, x[i], shifts[si], y[i], want);
                }
            }
        }
    for (int i = 0; i < N; i++) { /* in place, over every 65537th pattern: the edge cases' lanes too */
        const uint32_t u = (uint32_t)i * 65537u;
        memcpy(&x[i], &u, 4);
    }
    memcpy(y, x, sizeof y);
    k->exp_shifted(y, N, 0.5f, y);
    for (int i = 0; i < N; i++) {
        const float want = expf(x[i] - 0.5f);
        bad += memcmp(&want, &y[i], 4) && !(isnan(want) && isnan(y[i]));
    }
    CHECKF(bad == 0, "%s exp_shifted differs from expf in %d values", k->name, bad);
}

static void test_kernels(void)
{
    const qpk_kernels *prev = NULL;
    test_axpy_rows(qpk_kernels_scalar());
    test_fake_quantize_row(qpk_kernels_scalar());
    test_exp_shifted(qpk_kernels_scalar());
    for (size_t i = 1; qpk_kernels_available(i); i++) {
        test_kernels_of(qpk_kernels_available(i), prev);
        test_quantize_rows(qpk_kernels_available(i));
        test_gemm_acc(qpk_kernels_available(i));
        test_dot_rows(qpk_kernels_available(i));
        test_pack_panel(qpk_kernels_available(i));
        test_group_ratios(qpk_kernels_available(i));
        test_fake_quantize_row(qpk_kernels_available(i));
        test_axpy_rows(qpk_kernels_available(i));
        test_exp_shifted(qpk_kernels_available(i));
        printf("kernels %s checked\n", qpk_kernels_available(i)->name);
        prev = qpk_kernels_available(i);
    }
}

/*
 * The ggml block quantizers' bytes against those of qpk 9db23ea, the last build with one
 * baseline (x86-64, SSE2) version of them: the fits are now built for AVX-512, AVX2 and the
 * baseline, one picked when the library loads, and must give the same bytes on each (this
 * checks the one this CPU picks; the three were checked on one host by building each alone,
 * -DFIT_CLONES). Rows of ordinary, tiny, huge, outlying, one-signed, zero and constant
 * weights, without and with importance. Hashes: XXH3 of the row's blocks.
 */
static void fit_rows(float *x, float *imp, int n)
{
    for (int i = 0; i < n; i++) {
        const int kind = i / 512; /* eight kinds of 512 weights */
        float v = gauss();
        if (kind == 1)
            v *= 1e-3f;
        else if (kind == 2)
            v = i % 97 == 0 ? 40 * v : v; /* outliers */
        else if (kind == 3)
            v = i % 64 < 32 ? 0 : v; /* zero sub-blocks */
        else if (kind == 4)
            v = fabsf(v); /* one-signed */
        else if (kind == 5)
            v = i % 256 < 128 ? 0.25f : v; /* constant half blocks */
        else if (kind == 6)
            v *= 3e3f;
        x[i] = v;
        imp[i] = (float)(rnd32() % 1000) / 100.0f + (i % 7 == 0 ? 50.0f : 0.0f);
    }
}

static void test_fit_bytes(void)
{
    static const struct {
        uint32_t type, block;
        uint64_t plain, imp;
    } want[] = {
        {QPK_TYPE_Q4_1, 32, 0xed037360fdbb4277ull, 0x920e88242907ef0dull},
        {QPK_TYPE_Q5_0, 32, 0xa8eda1b43a6bfba7ull, 0x42f724995e11ad11ull},
        {QPK_TYPE_Q5_1, 32, 0x7f0146f37698f6f8ull, 0xf360decd170ef4eeull},
        {QPK_TYPE_Q4_K, 256, 0x452eaf4d16f88126ull, 0xf041af53aa458fddull},
        {QPK_TYPE_Q5_K, 256, 0x0cf119409613b558ull, 0x2a2455e5e050b0dcull},
        {QPK_TYPE_Q6_K, 256, 0xd462bf744a244af6ull, 0x92fe8349a3190ec1ull},
        {QPK_TYPE_IQ4_NL, 32, 0xc5bbc560b4c92781ull, 0x65a0e01bafe13815ull},
        {QPK_TYPE_IQ4_XS, 256, 0x5e16b648ac9f391eull, 0x1fef46fd9a062179ull},
    };
    enum { N = 4096 };
    static float x[N], imp[N];
    static uint8_t b[N * 2];
    const uint64_t saved = g_rng;
    g_rng = 0x5eed;
    fit_rows(x, imp, N);
    for (size_t t = 0; t < sizeof want / sizeof *want; t++)
        for (int w = 0; w < 2; w++) {
            qpk_err e = {0};
            const qpk_status s = qpk_quantize_row_imp(want[t].type, want[t].block, x, N, w ? imp : NULL, b, &e);
            const uint64_t h = XXH3_64bits(b, qpk_type_row_bytes(want[t].type, want[t].block, N));
            CHECKF(s == QPK_OK && h == (w ? want[t].imp : want[t].plain), "%s (%s importance): %s",
                   qpk_type_name(want[t].type), w ? "with" : "without", s == QPK_OK ? "other bytes" : e.msg);
        }
    g_rng = saved;
}

int main(void)
{
    test_f16_decode();
    test_rounding();
    test_rows();
    test_rtn_bound();
    test_rtn_errors();
    test_hand_blocks();
    test_affine();
    test_kernels();
    test_fit_bytes();
    return th_summary("test_quant");
}
