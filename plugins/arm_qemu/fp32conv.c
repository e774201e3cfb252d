/*
 * fp32conv.c -- a plain fp32 NEON convolution, the baseline of `mpqbench bench arm-kernels`.
 *
 *   ./prog CIN COUT HW K STRIDE     (padding K/2, bias + ReLU)
 *
 * Same structure as the runtime's sdot tiles so that the comparison is about the arithmetic: NHWC
 * input with a border, tiles of 4 output pixels x 16 output channels (16 float32x4 accumulators), and
 * `fmla vd.4s, w.4s, x.s[c]` (4 MACs) per pixel, 4 outputs and input channel, weights packed per
 * (16 outputs, tap, channel).  The limit is 1/4 instruction per MAC.  The kernel is bracketed by the
 * layer markers (runtime.c); the data set-up and a scalar check (which must agree, else exit 1) run
 * outside them.  Needs CIN % 4 == 0 and COUT % 16 == 0.
 */
#include <arm_neon.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define MARK_LAYER() __asm__ volatile("hint #0x7c" ::: "memory")
#define MARK_END() __asm__ volatile("hint #0x7d" ::: "memory")

static float next_value(unsigned *state) /* deterministic data in [-1, 1) */
{
    *state = *state * 1664525u + 1013904223u;
    return (float)(*state >> 8) / (float)(1u << 23) - 1.0f;
}

static void tile(const float *const *xp, float *const *op, const float *w, const float *bias, const long *tap_off,
                 int taps, int cin)
{
    float32x4_t acc[4][4];
    int i, j, t, c;

#pragma GCC unroll 4
    for (i = 0; i < 4; i++)
#pragma GCC unroll 4
        for (j = 0; j < 4; j++)
            acc[i][j] = vld1q_f32(bias + 4 * j);
    for (t = 0; t < taps; t++)
        for (c = 0; c < cin; c += 4) {
            float32x4_t x0 = vld1q_f32(xp[0] + tap_off[t] + c), x1 = vld1q_f32(xp[1] + tap_off[t] + c);
            float32x4_t x2 = vld1q_f32(xp[2] + tap_off[t] + c), x3 = vld1q_f32(xp[3] + tap_off[t] + c);
#define CHANNEL(L)                                                                                \
    do {                                                                                          \
        float32x4x4_t wv = vld1q_f32_x4(w);                                                       \
        w += 16;                                                                                  \
        _Pragma("GCC unroll 4") for (j = 0; j < 4; j++) {                                        \
            acc[0][j] = vfmaq_laneq_f32(acc[0][j], wv.val[j], x0, L);                              \
            acc[1][j] = vfmaq_laneq_f32(acc[1][j], wv.val[j], x1, L);                              \
            acc[2][j] = vfmaq_laneq_f32(acc[2][j], wv.val[j], x2, L);                              \
            acc[3][j] = vfmaq_laneq_f32(acc[3][j], wv.val[j], x3, L);                              \
        }                                                                                         \
    } while (0)
            CHANNEL(0);
            CHANNEL(1);
            CHANNEL(2);
            CHANNEL(3);
        }
#pragma GCC unroll 4
    for (i = 0; i < 4; i++)
#pragma GCC unroll 4
        for (j = 0; j < 4; j++)
            vst1q_f32(op[i] + 4 * j, vmaxq_f32(acc[i][j], vdupq_n_f32(0.0f)));
}

int main(int argc, char **argv)
{
    int cin, cout, hw, k, s, pad, wp, oh, taps, npix, ob, n, i, t, c, o, y, x;
    float *in, *w, *wpk, *bias, *out;
    long *tap_off;
    unsigned state = 1;
    double worst = 0;

    if (argc != 6)
        return 2;
    cin = atoi(argv[1]), cout = atoi(argv[2]), hw = atoi(argv[3]), k = atoi(argv[4]), s = atoi(argv[5]);
    if (cin % 4 || cout % 16 || k < 1 || s < 1)
        return 2;
    pad = k / 2, wp = hw + 2 * pad, oh = (hw + 2 * pad - k) / s + 1, taps = k * k, npix = oh * oh;
    in = calloc((size_t)wp * wp * cin, sizeof *in);
    w = malloc(sizeof *w * (size_t)cout * taps * cin); /* (O, tap, C) */
    wpk = malloc(sizeof *wpk * (size_t)cout * taps * cin);
    bias = malloc(sizeof *bias * (size_t)cout);
    out = malloc(sizeof *out * (size_t)npix * cout);
    tap_off = malloc(sizeof *tap_off * (size_t)taps);
    if (!in || !w || !wpk || !bias || !out || !tap_off)
        return 2;
    for (y = 0; y < hw; y++)
        for (x = 0; x < hw; x++)
            for (c = 0; c < cin; c++)
                in[((y + pad) * wp + x + pad) * cin + c] = next_value(&state);
    for (i = 0; i < cout * taps * cin; i++)
        w[i] = next_value(&state) * 0.1f;
    for (o = 0; o < cout; o++)
        bias[o] = next_value(&state);
    for (ob = 0; ob < cout / 16; ob++) /* packed: (ob, tap, channel, 16 outputs) */
        for (t = 0; t < taps; t++)
            for (c = 0; c < cin; c++)
                for (o = 0; o < 16; o++)
                    wpk[(((long)ob * taps + t) * cin + c) * 16 + o] = w[((long)(ob * 16 + o) * taps + t) * cin + c];
    for (t = 0; t < taps; t++)
        tap_off[t] = (long)((t / k) * wp + t % k) * cin;

    MARK_LAYER();
    for (ob = 0; ob < cout / 16; ob++)
        for (n = 0; n + 4 <= npix; n += 4) {
            const float *xp[4];
            float *op[4];
            for (i = 0; i < 4; i++) {
                xp[i] = in + ((long)((n + i) / oh * s) * wp + (n + i) % oh * s) * cin;
                op[i] = out + (long)(n + i) * cout + ob * 16;
            }
            tile(xp, op, wpk + (long)ob * taps * cin * 16, bias + ob * 16, tap_off, taps, cin);
        }
    MARK_END();

    for (n = 0; n < npix / 4 * 4; n++) /* scalar check of the pixels the tiles covered */
        for (o = 0; o < cout; o++) {
            const float *x0 = in + ((long)(n / oh * s) * wp + n % oh * s) * cin;
            double sum = bias[o];
            for (t = 0; t < taps; t++)
                for (c = 0; c < cin; c++)
                    sum += (double)w[((long)o * taps + t) * cin + c] * x0[tap_off[t] + c];
            sum = sum > 0 ? sum : 0;
            if (fabs(sum - out[(long)n * cout + o]) > worst)
                worst = fabs(sum - out[(long)n * cout + o]);
        }
    printf("pixels %d max_abs_err %.3g\n", npix / 4 * 4, worst);
    return worst < 1e-3 ? 0 : 1;
}
