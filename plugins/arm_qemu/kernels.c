/*
 * kernels.c -- NEON kernels of the arm-qemu runtime (armv8.2-a+dotprod), and a scalar fallback.
 *
 * conv / linear, groups = 1 (the sdot kernels):
 *   An output tile is 4 pixels x 16 output channels: 16 int32x4 accumulators.  The reduction runs
 *   over steps of 16 input channels of one tap: one 16-byte load per pixel gives 4 groups of 4
 *   channels, and `sdot vd.4s, w.16b, x.4b[g]` adds 4 outputs x 4 channels of one pixel (the indexed
 *   form broadcasts the pixel's group g to the 4 lanes).  Per step: 4 activation loads, 64 sdot, and
 *   16 weight registers, kept in memory at their bit width (b planes of 16 bytes per 8 channels) and
 *   unpacked in registers (unpack(): 0 to 3 instructions per register).  Direct convolution on the
 *   padded NHWC input (taps are fixed byte offsets from the window origin) when the input has >= 16
 *   channels; below that, an im2col gather of the real channels (K = kh*kw*C padded to 16) feeds the
 *   same tile.  Tiles run over the pixels of the whole output in row-major order (crossing rows), so
 *   only the last 1-3 pixels use the 1-pixel tile.  One specialised function per weight bit width
 *   and output kind (int8 or int32).
 * depthwise: 16 channels per register, smull + saddw into int32 (products of two int8 fit int16,
 *   sums of 9 of them do not).
 * other groups: the scalar fallback.
 *
 * Requantisation (exact, see runtime.h): acc = (sum << acc_shift) + bias2 in int32 (wrapping is exact,
 * layout.py); then rounding_shift(acc * m, s) either on int32 with sqdmulh + srshl when every shift
 * s >= 32 (the usual case for conv outputs, proof at requant()) or on the int64 product (smull,
 * srshl by -s); then saturating narrows to int16, the zero point (saturating add), the clamp and a
 * narrow to int8.  The saturations cannot change a result: a value that saturates int16 lies far
 * outside the 8-bit clamp range.
 */
#include <arm_neon.h>
#include <string.h>

#include "runtime.h"

#define INLINE static inline __attribute__((always_inline))

/* ---- requantisation -------------------------------------------------------------------------- */

struct epilogue {
    const int32_t *bias, *mult;
    const int64_t *nshift;    /* -s per channel, for srshl of int64 products */
    const int32_t *nshift32;  /* -(s - 31) per channel when every s >= 32 (the short path), else NULL */
    int shift;                /* left shift of conv accumulators (negative: exact right shift) */
    int32x4_t vshift, vpow2;  /* shift as a vector, and 2^shift */
    int16x8_t zo, lo, hi;     /* output zero point and clamp bounds, in stored units (minus the offset) */
};

static struct epilogue make_epilogue(const struct op *op, int shift)
{
    const struct op_rec *r = op->rec;
    struct epilogue e = {op->bias, op->mult0, op->shift0, op->shift32, shift, vdupq_n_s32(shift),
                         vdupq_n_s32(shift >= 0 ? (int32_t)(1u << shift) : 0), vdupq_n_s16((int16_t)r->zo),
                         vdupq_n_s16((int16_t)r->lo), vdupq_n_s16((int16_t)r->hi)};
    return e;
}

/* 16 int32 values of channels c0..c0+15 -> rounding_shift(v * mult, s) as 8 int64x2. */
INLINE void scale16(const int32x4_t *a, const int32_t *mult, const int64_t *nshift, int64x2_t *r)
{
    int32x4x4_t m = vld1q_s32_x4(mult);
    int64x2x4_t s0 = vld1q_s64_x4(nshift), s1 = vld1q_s64_x4(nshift + 8);
    r[0] = vrshlq_s64(vmull_s32(vget_low_s32(a[0]), vget_low_s32(m.val[0])), s0.val[0]);
    r[1] = vrshlq_s64(vmull_high_s32(a[0], m.val[0]), s0.val[1]);
    r[2] = vrshlq_s64(vmull_s32(vget_low_s32(a[1]), vget_low_s32(m.val[1])), s0.val[2]);
    r[3] = vrshlq_s64(vmull_high_s32(a[1], m.val[1]), s0.val[3]);
    r[4] = vrshlq_s64(vmull_s32(vget_low_s32(a[2]), vget_low_s32(m.val[2])), s1.val[0]);
    r[5] = vrshlq_s64(vmull_high_s32(a[2], m.val[2]), s1.val[1]);
    r[6] = vrshlq_s64(vmull_s32(vget_low_s32(a[3]), vget_low_s32(m.val[3])), s1.val[2]);
    r[7] = vrshlq_s64(vmull_high_s32(a[3], m.val[3]), s1.val[3]);
}

/* 8 int64x2 -> 4 int32x4, saturating. */
INLINE void narrow64(const int64x2_t *p, int32x4_t *r)
{
    int j;

#pragma GCC unroll 4
    for (j = 0; j < 4; j++)
        r[j] = vqmovn_high_s64(vqmovn_s64(p[2 * j]), p[2 * j + 1]);
}

/* int32 x 16 -> stored int8 x 16 after the zero point and clamp. */
INLINE int8x16_t pack16(const int32x4_t *r, int16x8_t zo, int16x8_t lo, int16x8_t hi)
{
    int16x8_t a = vqmovn_high_s32(vqmovn_s32(r[0]), r[1]), b = vqmovn_high_s32(vqmovn_s32(r[2]), r[3]);
    a = vminq_s16(vmaxq_s16(vqaddq_s16(a, zo), lo), hi);
    b = vminq_s16(vmaxq_s16(vqaddq_s16(b, zo), lo), hi);
    return vmovn_high_s16(vmovn_s16(a), b);
}

/* Requantise 16 int32 values of P pixels, channels c0..c0+15, to stored int8 at dst[i] + c0.
 * Short path, when every shift s >= 32: with q = floor(p / 2^31) (sqdmulh: floor(2 v m / 2^32),
 * exact since |m| < 2^31), rounding_shift(p, s) = floor((q + 2^(s-32)) / 2^(s-31)) (p = q 2^31 + r,
 * 0 <= r < 2^31, cannot carry into the integer part), which is srshl(q, -(s-31)) on int32.
 * Otherwise the int64 product and srshl by -s.  The per-channel constants are loaded once. */
INLINE void requant(int32x4_t (*a)[4], const int P, int c0, const struct epilogue *e, uint8_t *const *dst)
{
    const int16x8_t zo = e->zo, lo = e->lo, hi = e->hi;
    int32x4_t r[4];
    int i, j;

    if (e->nshift32) {
        const int32x4x4_t m = vld1q_s32_x4(e->mult + c0), s = vld1q_s32_x4(e->nshift32 + c0);
#pragma GCC unroll 4
        for (i = 0; i < P; i++) {
#pragma GCC unroll 4
            for (j = 0; j < 4; j++)
                r[j] = vrshlq_s32(vqdmulhq_s32(a[i][j], m.val[j]), s.val[j]);
            vst1q_s8((int8_t *)dst[i] + c0, pack16(r, zo, lo, hi));
        }
    } else {
#pragma GCC unroll 4
        for (i = 0; i < P; i++) {
            int64x2_t p[8];
            scale16(a[i], e->mult + c0, e->nshift + c0, p);
            narrow64(p, r);
            vst1q_s8((int8_t *)dst[i] + c0, pack16(r, zo, lo, hi));
        }
    }
}

/* Conv sums of P pixels, channels c0..c0+15: acc = (sum << shift) + bias2 (one mla when the shift is
 * a left shift; mod 2^32, exact, see layout.py), then requantised to int8 (q8) or stored as int32
 * (accumulator and 32-bit outputs). */
INLINE void finish(int32x4_t (*a)[4], const int P, int c0, const struct epilogue *e, uint8_t *const *dst,
                   const int q8)
{
    const int32x4x4_t b = vld1q_s32_x4(e->bias + c0);
    int i, j;

    if (e->shift >= 0) {
        const int32x4_t pow2 = e->vpow2;
#pragma GCC unroll 4
        for (i = 0; i < P; i++)
#pragma GCC unroll 4
            for (j = 0; j < 4; j++)
                a[i][j] = vmlaq_s32(b.val[j], a[i][j], pow2);
    } else {
        const int32x4_t shift = e->vshift;
#pragma GCC unroll 4
        for (i = 0; i < P; i++)
#pragma GCC unroll 4
            for (j = 0; j < 4; j++)
                a[i][j] = vaddq_s32(vshlq_s32(a[i][j], shift), b.val[j]);
    }
    if (q8) {
        requant(a, P, c0, e, dst);
        return;
    }
#pragma GCC unroll 4
    for (i = 0; i < P; i++)
#pragma GCC unroll 4
        for (j = 0; j < 4; j++)
            vst1q_s32((int32_t *)dst[i] + c0 + 4 * j, a[i][j]);
}

/* int8x16 stored values -> 4 int32x4 of (x - z) = stored + corr. */
INLINE void widen16(int8x16_t x, int32x4_t corr, int32x4_t *v)
{
    int16x8_t lo = vmovl_s8(vget_low_s8(x)), hi = vmovl_high_s8(x);
    v[0] = vaddw_s16(corr, vget_low_s16(lo));
    v[1] = vaddw_high_s16(corr, lo);
    v[2] = vaddw_s16(corr, vget_low_s16(hi));
    v[3] = vaddw_high_s16(corr, hi);
}

/* ---- sdot tiles ------------------------------------------------------------------------------- */

struct gemm {
    const int8_t *x;         /* input window origin of output pixel 0 */
    long x_row, x_col;       /* input bytes between the windows of consecutive output rows / columns */
    int ow, npix, nsteps;    /* output width and pixels; 16-channel reduction steps (taps x blocks) */
    const long *step_off;    /* byte offset of each step from the window origin */
    const int8_t *w;         /* packed weights */
    long w_ob;               /* bytes of weights per block of 16 outputs */
    uint8_t *out;            /* output pixel 0 */
    long out_row, out_col;   /* output bytes between rows / columns */
    struct epilogue e;
};

/* Weight register r (0..7) of a super-block from its b bit planes: lane L of register r is bits
 * [r*b, (r+1)*b) of the little-endian stream formed by the lane's bytes in planes 0..b-1 (layout.py,
 * pack_sdot).  The value is returned in the top b bits of each byte with the low bits cleared, i.e.
 * scaled by 2^(8-b): a shift, a mask, or both (shl + sri + mask where it straddles two planes).  No
 * sign extension is needed; the accumulators hold 2^(8-b) times the sum, which the epilogue's shift
 * removes exactly (|sum| * 2^(8-b) <= K * 2^14 < 2^31, checked by layout.py).  b and r are constants
 * after inlining. */
INLINE int8x16_t unpack(const int8x16_t *p, const int b, const int r)
{
    const int o = r * b, k = o / 8, j = o % 8;
    const int8x16_t top = vreinterpretq_s8_u8(vdupq_n_u8((uint8_t)(0xff << (8 - b))));

    if (b == 8)
        return p[r];
    if (j == 0)
        return vshlq_n_s8(p[k], 8 - b);
    if (j + b == 8)
        return vandq_s8(p[k], top);
    if (j + b < 8)
        return vandq_s8(vshlq_n_s8(p[k], 8 - b - j), top);
    /* straddles planes k and k+1: the j + b - 8 high bits come from plane k+1 */
    return vandq_s8(vsriq_n_s8(vshlq_n_s8(p[k + 1], 16 - b - j), p[k], j + b - 8), top);
}

INLINE void load_planes(const int8_t *w, int8x16_t *p, const int b)
{
    int8x16x4_t q4;
    int8x16x3_t q3;
    int8x16x2_t q2;

    if (b >= 4) {
        q4 = vld1q_s8_x4(w);
        memcpy(p, q4.val, sizeof q4.val);
        w += 64;
    }
    switch (b % 4) {
    case 1: p[b - 1] = vld1q_s8(w); break;
    case 2: q2 = vld1q_s8_x2(w); memcpy(p + b - 2, q2.val, sizeof q2.val); break;
    case 3: q3 = vld1q_s8_x3(w); memcpy(p + b - 3, q3.val, sizeof q3.val); break;
    default:
        if (b == 8) {
            q4 = vld1q_s8_x4(w);
            memcpy(p + 4, q4.val, sizeof q4.val);
        }
    }
}

/* One group of 4 input channels (lane G of the activation registers) of super-block planes p: each
 * weight register is unpacked just before its P sdots, which keeps few of them live. */
#define GROUP(G, R0)                                                                              \
    do {                                                                                          \
        _Pragma("GCC unroll 4") for (j = 0; j < 4; j++) {                                        \
            int8x16_t wj = unpack(p, B, R0 + j);                                                  \
            _Pragma("GCC unroll 4") for (i = 0; i < P; i++)                                      \
                acc[i][j] = vdotq_laneq_s32(acc[i][j], wj, x[i], G);                              \
        }                                                                                         \
    } while (0)

/* P pixels (xp -> dp) x 16 outputs (block ob): sums over all taps and channels, then the epilogue. */
INLINE void tile(const struct gemm *g, const int8_t *const *xp, uint8_t *const *dp, int ob, const int B,
                 const int P, const int q8)
{
    int32x4_t acc[4][4];
    const int8_t *w = g->w + ob * g->w_ob;
    const long *step = g->step_off, *end = step + g->nsteps;
    int i, j;

#pragma GCC unroll 4
    for (i = 0; i < P; i++)
#pragma GCC unroll 4
        for (j = 0; j < 4; j++)
            acc[i][j] = vdupq_n_s32(0);
    for (; step < end; step++) { /* one flat loop over taps x 16-channel blocks */
        const long off = *step;
        int8x16_t x[4], p[8];

#pragma GCC unroll 4
        for (i = 0; i < P; i++)
            x[i] = vld1q_s8(xp[i] + off);
        load_planes(w, p, B);
        w += 16 * B;
        GROUP(0, 0);
        GROUP(1, 4);
        load_planes(w, p, B);
        w += 16 * B;
        GROUP(2, 0);
        GROUP(3, 4);
    }
    finish(acc, P, 16 * ob, &g->e, dp, q8);
}

/* The output pixels in row-major order: input window and output addresses. */
struct cursor {
    const int8_t *x;
    uint8_t *out;
    int col;
};

INLINE void advance(struct cursor *c, const struct gemm *g)
{
    c->x += g->x_col;
    c->out += g->out_col;
    if (++c->col == g->ow) {
        c->col = 0;
        c->x += g->x_row - g->ow * g->x_col;
        c->out += g->out_row - g->ow * g->out_col;
    }
}

/* One block of 16 outputs over every pixel: 4-pixel tiles (crossing rows), then single pixels. */
INLINE void conv_block(const struct gemm *g, int ob, const int B, const int q8)
{
    struct cursor c = {g->x, g->out, 0};
    int n, i;

    for (n = 0; n + 4 <= g->npix; n += 4) {
        const int8_t *xp[4];
        uint8_t *dp[4];
#pragma GCC unroll 4
        for (i = 0; i < 4; i++) {
            xp[i] = c.x;
            dp[i] = c.out;
            advance(&c, g);
        }
        tile(g, xp, dp, ob, B, 4, q8);
    }
    for (; n < g->npix; n++) {
        const int8_t *xp[1] = {c.x};
        uint8_t *dp[1] = {c.out};
        advance(&c, g);
        tile(g, xp, dp, ob, B, 1, q8);
    }
}

typedef void (*block_fn)(const struct gemm *, int);

#define BLOCK(B, Q)                                                                                   \
    static void block_##B##_##Q(const struct gemm *g, int ob) { conv_block(g, ob, B, Q); }
#define BLOCKS(B) BLOCK(B, 0) BLOCK(B, 1)
BLOCKS(2) BLOCKS(3) BLOCKS(4) BLOCKS(5) BLOCKS(6) BLOCKS(7) BLOCKS(8)
#define ROW(B) [B] = {block_##B##_0, block_##B##_1}

/* blocks[weight bits][int8 output] */
static const block_fn blocks[9][2] = {ROW(2), ROW(3), ROW(4), ROW(5), ROW(6), ROW(7), ROW(8)};

static void im2col(const struct op *op)
{
    const struct op_rec *r = op->rec;
    const struct tensor *in = op->in0;
    int oh = op->out->rec->h, ow = op->out->rec->w, y, x, t, c, taps = r->kh * r->kw, cin = r->cin;
    int8_t *dst = op->patch;

    for (y = 0; y < oh; y++)
        for (x = 0; x < ow; x++, dst += r->kp) {
            const int8_t *src = (const int8_t *)in->interior + (long)(y * r->sh - r->ph) * in->row +
                                (long)(x * r->sw - r->pw) * in->rec->stride;
            int8_t *d = dst;
            if (cin == 1) { /* the usual stem: one byte per tap */
                for (t = 0; t < taps; t++)
                    d[t] = src[op->tap_off[t]];
                continue;
            }
            for (t = 0; t < taps; t++, d += cin)
                for (c = 0; c < cin; c++)
                    d[c] = src[op->tap_off[t] + c];
        }
}

/* Conv / linear through the sdot tiles. */
void run_conv_gemm(const struct op *op)
{
    const struct op_rec *r = op->rec;
    const struct tensor *in = op->in0, *out = op->out;
    struct gemm g;
    int ob;

    g.ow = out->rec->w;
    g.npix = out->rec->h * out->rec->w;
    g.step_off = op->step_off;
    g.nsteps = op->nsteps;
    if (r->kernel == CONV_IM2COL) {
        im2col(op);
        g.x = op->patch;
        g.x_col = r->kp;
        g.x_row = (long)r->kp * g.ow;
    } else {
        g.x = (const int8_t *)in->interior - (long)r->ph * in->row - (long)r->pw * in->rec->stride;
        g.x_col = (long)r->sw * in->rec->stride;
        g.x_row = (long)r->sh * in->row;
    }
    g.w = (const int8_t *)op->weight;
    g.w_ob = (long)g.nsteps * 32 * r->w_bits;
    g.out = out->interior;
    g.out_col = (long)out->rec->stride * out->elem;
    g.out_row = out->row * out->elem;
    /* the sdot sums carry the 2^(8-b) scale of unpack(); the epilogue's shift removes it */
    g.e = make_epilogue(op, r->acc_shift - (8 - r->w_bits));
    for (ob = 0; ob < out->rec->stride / 16; ob++)
        blocks[r->w_bits][out->rec->kind == Q8](&g, ob);
}

/* ---- depthwise ------------------------------------------------------------------------------ */

void run_conv_depthwise(const struct op *op)
{
    const struct op_rec *r = op->rec;
    const struct tensor *in = op->in0, *out = op->out;
    int q8 = out->rec->kind == Q8, taps = r->kh * r->kw, y, x, cb, t;
    struct epilogue e = make_epilogue(op, r->acc_shift);

    for (y = 0; y < out->rec->h; y++)
        for (x = 0; x < out->rec->w; x++) {
            const int8_t *src = (const int8_t *)in->interior + (long)(y * r->sh - r->ph) * in->row +
                                (long)(x * r->sw - r->pw) * in->rec->stride;
            uint8_t *dst[1] = {(uint8_t *)out->interior + (y * out->row + (long)x * out->rec->stride) * out->elem};
            for (cb = 0; cb < in->rec->stride; cb += 16) {
                const int8_t *w = (const int8_t *)op->weight + (long)cb * taps;
                int32x4_t acc[1][4] = {{vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)}};
                int32x4_t *a = acc[0];
                for (t = 0; t < taps; t++) {
                    int8x16_t xv = vld1q_s8(src + op->tap_off[t] + cb), wv = vld1q_s8(w + 16 * t);
                    int16x8_t lo = vmull_s8(vget_low_s8(xv), vget_low_s8(wv)), hi = vmull_high_s8(xv, wv);
                    a[0] = vaddw_s16(a[0], vget_low_s16(lo));
                    a[1] = vaddw_high_s16(a[1], lo);
                    a[2] = vaddw_s16(a[2], vget_low_s16(hi));
                    a[3] = vaddw_high_s16(a[3], hi);
                }
                if (q8)
                    finish(acc, 1, cb, &e, dst, 1);
                else
                    finish(acc, 1, cb, &e, dst, 0);
            }
        }
}

/* ---- scalar fallback (grouped convs) ------------------------------------------------------ */

static int64_t rounding_scale(int32_t v, int32_t mult, int64_t nshift)
{
    int s = (int)-nshift;
    return ((int64_t)v * mult + ((int64_t)1 << (s - 1))) >> s;
}

static int32_t clamp_out(int64_t v, const struct op_rec *r)
{
    v += r->zo;
    return (int32_t)(v < r->lo ? r->lo : v > r->hi ? r->hi : v);
}

void run_conv_scalar(const struct op *op)
{
    const struct op_rec *r = op->rec;
    const struct tensor *in = op->in0, *out = op->out;
    int cg = r->cin / r->groups, og = r->cout / r->groups, taps = r->kh * r->kw, y, x, o, c, t;

    for (y = 0; y < out->rec->h; y++)
        for (x = 0; x < out->rec->w; x++) {
            const int8_t *src = (const int8_t *)in->interior + (long)(y * r->sh - r->ph) * in->row +
                                (long)(x * r->sw - r->pw) * in->rec->stride;
            uint8_t *dst = (uint8_t *)out->interior + (y * out->row + (long)x * out->rec->stride) * out->elem;
            for (o = 0; o < r->cout; o++) {
                const int8_t *w = (const int8_t *)op->weight + (long)o * cg * taps; /* (O, cg, kh, kw) */
                const int8_t *s = src + (o / og) * cg;
                uint32_t sum = 0, acc;
                for (c = 0; c < cg; c++)
                    for (t = 0; t < taps; t++)
                        sum += (uint32_t)(w[c * taps + t] * s[op->tap_off[t] + c]);
                acc = (sum << r->acc_shift) + (uint32_t)op->bias[o]; /* mod 2^32: exact, see layout.py */
                if (out->rec->kind == Q8)
                    ((int8_t *)dst)[o] = (int8_t)clamp_out(rounding_scale((int32_t)acc, op->mult0[o], op->shift0[o]), r);
                else
                    ((int32_t *)dst)[o] = (int32_t)acc;
            }
        }
}

/* 32-bit q outputs (the logits): requantise the int32 accumulators in place, exactly in int64. */
void requant_q32(const struct op *op)
{
    const struct tensor *out = op->out;
    int y, x, c;

    for (y = 0; y < out->rec->h; y++)
        for (x = 0; x < out->rec->w; x++) {
            int32_t *v = (int32_t *)out->interior + y * out->row + (long)x * out->rec->stride;
            for (c = 0; c < out->rec->c; c++)
                v[c] = clamp_out(rounding_scale(v[c], op->mult0[c], op->shift0[c]), op->rec);
        }
}

/* ---- add and pools ------------------------------------------------------------------------- */

/* One add input, channels c0..c0+15 of a pixel: rounding_shift((v - z) * mult, shift) as int64. */
INLINE void add_term(const uint8_t *pix, const int q8, int c0, int32x4_t corr, const int32_t *mult,
                     const int64_t *nshift, int64x2_t *r)
{
    int32x4_t v[4];

    if (q8) {
        widen16(vld1q_s8((const int8_t *)pix + c0), corr, v);
    } else {
        int32x4x4_t a = vld1q_s32_x4((const int32_t *)pix + c0);
        memcpy(v, a.val, sizeof v);
    }
    scale16(v, mult + c0, nshift + c0, r);
}

/* The add with the input kinds (int8 q or int32 accumulator) as constants. */
INLINE void add(const struct op *op, const int qa, const int qb)
{
    const struct op_rec *r = op->rec;
    const struct tensor *a = op->in0, *b = op->in1, *out = op->out;
    const struct epilogue e = make_epilogue(op, 0);
    const int32x4_t ca = vdupq_n_s32(r->corr0), cbv = vdupq_n_s32(r->corr1);
    const int64x2_t frac = vdupq_n_s64(-r->frac_bits);
    const int32_t *ma = op->mult0, *mb = op->mult1;
    const int64_t *sa = op->shift0, *sb = op->shift1;
    const int h = out->rec->h, w = out->rec->w, stride = out->rec->stride;
    int y, x, c, k;

    for (y = 0; y < h; y++) {
        const uint8_t *pa = (const uint8_t *)a->interior + y * a->row * a->elem;
        const uint8_t *pb = (const uint8_t *)b->interior + y * b->row * b->elem;
        int8_t *dst = (int8_t *)out->interior + y * out->row;
        for (x = 0; x < w; x++, pa += stride * a->elem, pb += stride * b->elem, dst += stride)
            for (c = 0; c < stride; c += 16) {
                int64x2_t ta[8], tb[8];
                int32x4_t t[4];
                add_term(pa, qa, c, ca, ma, sa, ta);
                add_term(pb, qb, c, cbv, mb, sb, tb);
#pragma GCC unroll 8
                for (k = 0; k < 8; k++)
                    ta[k] = vrshlq_s64(vaddq_s64(ta[k], tb[k]), frac);
                narrow64(ta, t);
                vst1q_s8(dst + c, pack16(t, e.zo, e.lo, e.hi));
            }
    }
}

void run_add(const struct op *op)
{
    int qa = op->in0->rec->kind == Q8, qb = op->in1->rec->kind == Q8;

    if (qa && qb)
        add(op, 1, 1);
    else if (qa)
        add(op, 1, 0);
    else if (qb)
        add(op, 0, 1);
    else
        add(op, 0, 0);
}

void run_avgpool(const struct op *op)
{
    const struct op_rec *r = op->rec;
    const struct tensor *in = op->in0, *out = op->out;
    struct epilogue e = make_epilogue(op, 0);
    int y, x, c, hw = in->rec->h * in->rec->w;
    int32x4_t corr = vdupq_n_s32(r->corr0 * hw);
    uint8_t *dst[1] = {out->interior};

    for (c = 0; c < in->rec->stride; c += 16) {
        int32x4_t sum[1][4] = {{corr, corr, corr, corr}};
        int32x4_t *s = sum[0];
        for (y = 0; y < in->rec->h; y++)
            for (x = 0; x < in->rec->w; x++) {
                int8x16_t v = vld1q_s8((const int8_t *)in->interior + y * in->row + (long)x * in->rec->stride + c);
                int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_high_s8(v);
                s[0] = vaddw_s16(s[0], vget_low_s16(lo));
                s[1] = vaddw_high_s16(s[1], lo);
                s[2] = vaddw_s16(s[2], vget_low_s16(hi));
                s[3] = vaddw_high_s16(s[3], hi);
            }
        requant(sum, 1, c, &e, dst);
    }
}

void run_maxpool(const struct op *op)
{
    const struct op_rec *r = op->rec;
    const struct tensor *in = op->in0, *out = op->out;
    struct epilogue e = make_epilogue(op, 0);
    int32x4_t corr = vdupq_n_s32(r->corr0);
    int oy, ox, c, ky, kx;

    for (oy = 0; oy < out->rec->h; oy++)
        for (ox = 0; ox < out->rec->w; ox++) {
            /* the window clipped to the input: padding never wins */
            int y0 = oy * r->sh - r->ph, x0 = ox * r->sw - r->pw;
            int ky0 = y0 < 0 ? -y0 : 0, kx0 = x0 < 0 ? -x0 : 0;
            int ky1 = y0 + r->kh > in->rec->h ? in->rec->h - y0 : r->kh;
            int kx1 = x0 + r->kw > in->rec->w ? in->rec->w - x0 : r->kw;
            uint8_t *dst[1] = {(uint8_t *)out->interior + oy * out->row + (long)ox * out->rec->stride};
            for (c = 0; c < in->rec->stride; c += 16) {
                int8x16_t m = vdupq_n_s8(-128);
                int32x4_t v[1][4];
                for (ky = ky0; ky < ky1; ky++)
                    for (kx = kx0; kx < kx1; kx++)
                        m = vmaxq_s8(m, vld1q_s8((const int8_t *)in->interior + (y0 + ky) * in->row +
                                                 (long)(x0 + kx) * in->rec->stride + c));
                widen16(m, corr, v[0]);
                requant(v, 1, c, &e, dst);
            }
        }
}
