/*
 * runtime.h -- the arm-qemu integer runtime: file records (layout.py writes them) and kernels.
 *
 * Every rounding follows mpqbench/integer/fixedpoint.py: requantisation is the int64 product of an
 * int32 value and a signed int32 multiplier, rounded once with rounding_shift(p, s) =
 * (p + 2^(s-1)) >> s, 1 <= s <= 62 (NEON srshl by -s computes exactly this), then the output zero
 * point and the clamp.
 */
#ifndef MPQ_RUNTIME_H
#define MPQ_RUNTIME_H

#include <stdint.h>

#define MPQ_VERSION 1
#define MPQ_HEADER_BYTES 64
#define MPQ_LANES 16

enum { Q8 = 0, ACC = 1, Q32 = 2 }; /* tensor kinds: int8 q, int32 accumulator, int32 q */
enum { CONV_DIRECT = 1, CONV_IM2COL, CONV_DEPTHWISE, CONV_SCALAR, ADD, AVGPOOL, MAXPOOL };

/* Field order = layout.py TENSOR_FIELDS / OP_FIELDS (the file header carries the counts). */
struct tensor_rec {
    int32_t kind, h, w, c, stride, border_h, border_w, offset, pad;
};

struct op_rec {
    int32_t kernel, in0, in1, out, kh, kw, sh, sw, ph, pw, groups, cin, cout, w_bits;
    int32_t acc_shift, zo, lo, hi, frac_bits, corr0, corr1, kp;
    int32_t weight, bias, mult0, shift0, mult1, shift1, shift32; /* byte offsets into the blob, -1 = none */
};

/* A tensor in memory: NHWC rows with a border, channel stride `stride` (elements). */
struct tensor {
    const struct tensor_rec *rec;
    void *base;     /* allocation: (h + 2 bh) x (w + 2 bw) x stride elements */
    void *interior; /* element (0, 0, 0) */
    long row;       /* elements between rows: (w + 2 bw) * stride */
    int elem;       /* bytes per element: 1 or 4 */
};

/* An op bound to its tensors, arrays and scratch. */
struct op {
    const struct op_rec *rec;
    struct tensor *in0, *in1, *out;
    const uint8_t *weight;
    const int32_t *bias, *mult0, *mult1;
    const int64_t *shift0, *shift1; /* negated shifts */
    const int32_t *shift32;         /* -(shift - 31) when every shift >= 32, else NULL (kernels.c) */
    long *tap_off;                  /* conv: byte offset of each tap from the window origin */
    long *step_off;                 /* sdot convs: offset of each 16-channel step (tap x block) */
    int nsteps;
    int8_t *patch;                  /* im2col scratch */
};

void run_conv_gemm(const struct op *op);
void run_conv_depthwise(const struct op *op);
void run_conv_scalar(const struct op *op);
void run_add(const struct op *op);
void run_avgpool(const struct op *op);
void run_maxpool(const struct op *op);
void requant_q32(const struct op *op);

#endif
