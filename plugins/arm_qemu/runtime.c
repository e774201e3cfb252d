/*
 * runtime.c -- the arm-qemu integer runtime: loads a model and a batch of images written by
 * layout.py, runs the network one image at a time and writes its output tensor, the int32 logits
 * (and, on request, every op's output), as stored in memory without borders.
 *
 *   ./prog model.bin inputs.bin      -> outputs.bin [, layers.bin]   (files in the working directory)
 *
 * Layer regions for the instruction counter (insncount.c): MARK_LAYER before every op and MARK_END
 * after the last one, so loading, input copies and output writes fall outside every layer.  The
 * markers are unallocated HINTs: NOPs on any AArch64 core.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

#define MARK_LAYER() __asm__ volatile("hint #0x7c" ::: "memory")
#define MARK_END() __asm__ volatile("hint #0x7d" ::: "memory")

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "mpq-runtime: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(2);
}

static uint8_t *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    uint8_t *data;
    long n;

    if (!f || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
        fail("cannot read", path);
    data = aligned_alloc(64, ((size_t)n + 63) & ~(size_t)63);
    if (!data || fread(data, 1, (size_t)n, f) != (size_t)n)
        fail("cannot read", path);
    fclose(f);
    *size = (size_t)n;
    return data;
}

static uint32_t u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static void *blob_at(const uint8_t *blob, uint64_t size, int32_t offset)
{
    if (offset < 0)
        return NULL;
    if ((uint64_t)offset >= size)
        fail("model file", "array offset outside the blob");
    return (void *)(blob + offset);
}

static void alloc_tensor(struct tensor *t, const struct tensor_rec *r)
{
    size_t rows = (size_t)(r->h + 2 * r->border_h), cols = (size_t)(r->w + 2 * r->border_w);
    size_t n = rows * cols * (size_t)r->stride;

    t->rec = r;
    t->elem = r->kind == Q8 ? 1 : 4;
    t->row = (long)(cols * (size_t)r->stride);
    /* 64 bytes of slack: vector loads of the last pixel never leave the allocation */
    t->base = aligned_alloc(64, (n * (size_t)t->elem + 64 + 63) & ~(size_t)63);
    if (!t->base)
        fail("out of memory", NULL);
    if (r->kind == Q8)
        memset(t->base, (int8_t)r->pad, n + 64); /* the border holds the zero point */
    else
        memset(t->base, 0, n * 4 + 64);
    t->interior = (uint8_t *)t->base + ((size_t)r->border_h * (size_t)t->row + (size_t)r->border_w * (size_t)r->stride)
                                       * (size_t)t->elem;
}

static void bind_op(struct op *o, const struct op_rec *r, struct tensor *tensors, int n_tensors,
                    const uint8_t *blob, uint64_t blob_size)
{
    if (r->in0 < 0 || r->in0 >= n_tensors || r->out < 0 || r->out >= n_tensors || r->in1 >= n_tensors)
        fail("model file", "tensor index out of range");
    o->rec = r;
    o->in0 = &tensors[r->in0];
    o->in1 = r->in1 >= 0 ? &tensors[r->in1] : NULL;
    o->out = &tensors[r->out];
    o->weight = blob_at(blob, blob_size, r->weight);
    o->bias = blob_at(blob, blob_size, r->bias);
    o->mult0 = blob_at(blob, blob_size, r->mult0);
    o->shift0 = blob_at(blob, blob_size, r->shift0);
    o->mult1 = blob_at(blob, blob_size, r->mult1);
    o->shift1 = blob_at(blob, blob_size, r->shift1);
    o->shift32 = blob_at(blob, blob_size, r->shift32);
    o->tap_off = o->step_off = NULL;
    o->nsteps = 0;
    o->patch = NULL;
    if (r->kernel >= CONV_DIRECT && r->kernel <= CONV_SCALAR) {
        int ky, kx;
        o->tap_off = malloc(sizeof(long) * (size_t)(r->kh * r->kw));
        if (!o->tap_off)
            fail("out of memory", NULL);
        for (ky = 0; ky < r->kh; ky++)
            for (kx = 0; kx < r->kw; kx++)
                o->tap_off[ky * r->kw + kx] = ky * o->in0->row + kx * o->in0->rec->stride;
        if (r->kernel == CONV_DIRECT || r->kernel == CONV_IM2COL) {
            /* direct: every 16-channel block of every tap; im2col: the blocks of one patch row */
            int taps = r->kernel == CONV_DIRECT ? r->kh * r->kw : 1;
            int blocks = r->kernel == CONV_DIRECT ? o->in0->rec->stride / 16 : r->kp / 16, t, b;
            o->nsteps = taps * blocks;
            o->step_off = malloc(sizeof(long) * (size_t)o->nsteps);
            if (!o->step_off)
                fail("out of memory", NULL);
            for (t = 0; t < taps; t++)
                for (b = 0; b < blocks; b++)
                    o->step_off[t * blocks + b] = (r->kernel == CONV_DIRECT ? o->tap_off[t] : 0) + 16 * b;
        }
        if (r->kernel == CONV_IM2COL) {
            /* zeroed once: the gather never writes the padding of each row [K, kp) */
            o->patch = aligned_alloc(64, ((size_t)o->out->rec->h * (size_t)o->out->rec->w * (size_t)r->kp + 63) & ~(size_t)63);
            if (!o->patch)
                fail("out of memory", NULL);
            memset(o->patch, 0, (size_t)o->out->rec->h * (size_t)o->out->rec->w * (size_t)r->kp);
        }
    }
}

static void run_op(const struct op *o)
{
    switch (o->rec->kernel) {
    case CONV_DIRECT:
    case CONV_IM2COL: run_conv_gemm(o); break;
    case CONV_DEPTHWISE: run_conv_depthwise(o); break;
    case CONV_SCALAR: run_conv_scalar(o); break;
    case ADD: run_add(o); break;
    case AVGPOOL: run_avgpool(o); break;
    case MAXPOOL: run_maxpool(o); break;
    default: fail("model file", "unknown kernel");
    }
    if (o->rec->kernel <= CONV_SCALAR && o->out->rec->kind == Q32)
        requant_q32(o);
}

/* A tensor as stored, without its border: h x w x stride elements. */
static void write_interior(FILE *f, const struct tensor *t, const char *name)
{
    size_t run = (size_t)t->rec->w * (size_t)t->rec->stride * (size_t)t->elem;
    int y;

    for (y = 0; y < t->rec->h; y++)
        if (fwrite((const uint8_t *)t->interior + (size_t)y * (size_t)t->row * (size_t)t->elem, 1, run, f) != run)
            fail("cannot write", name);
}

int main(int argc, char **argv)
{
    size_t model_size, input_size;
    const uint8_t *model, *inputs;
    uint32_t n_tensors, n_ops, in_idx, out_idx, n_images, layers, i, k;
    uint64_t blob_offset, blob_size;
    const struct tensor_rec *trecs;
    const struct op_rec *orecs;
    struct tensor *tensors, *in, *out;
    struct op *ops;
    FILE *out_file, *layer_file = NULL;
    size_t image_bytes, row_bytes;

    if (argc != 3)
        fail("usage", "prog model.bin inputs.bin");
    model = read_file(argv[1], &model_size);
    if (model_size < MPQ_HEADER_BYTES || memcmp(model, "MPQARMRT", 8) != 0)
        fail("not a runtime model file", argv[1]);
    if (u32(model + 8) != MPQ_VERSION || u32(model + 12) != MPQ_HEADER_BYTES)
        fail("model file", "format version differs from this runtime's");
    n_tensors = u32(model + 16);
    n_ops = u32(model + 20);
    in_idx = u32(model + 24);
    out_idx = u32(model + 28);
    if (u32(model + 32) * 4 != sizeof(struct tensor_rec) || u32(model + 36) * 4 != sizeof(struct op_rec))
        fail("model file", "record layout differs from runtime.h");
    blob_offset = u64(model + 40);
    blob_size = u64(model + 48);
    if (blob_offset + blob_size > model_size || in_idx >= n_tensors || out_idx >= n_tensors ||
        MPQ_HEADER_BYTES + n_tensors * sizeof(struct tensor_rec) + n_ops * sizeof(struct op_rec) > blob_offset)
        fail("model file", "truncated or inconsistent");
    trecs = (const struct tensor_rec *)(model + MPQ_HEADER_BYTES);
    orecs = (const struct op_rec *)(model + MPQ_HEADER_BYTES + n_tensors * sizeof(struct tensor_rec));

    tensors = calloc(n_tensors, sizeof *tensors);
    ops = calloc(n_ops ? n_ops : 1, sizeof *ops);
    if (!tensors || !ops)
        fail("out of memory", NULL);
    for (i = 0; i < n_tensors; i++)
        alloc_tensor(&tensors[i], &trecs[i]);
    for (i = 0; i < n_ops; i++)
        bind_op(&ops[i], &orecs[i], tensors, (int)n_tensors, model + blob_offset, blob_size);
    in = &tensors[in_idx];
    out = &tensors[out_idx];

    inputs = read_file(argv[2], &input_size);
    if (input_size < MPQ_HEADER_BYTES || memcmp(inputs, "MPQARMIN", 8) != 0 || u32(inputs + 8) != MPQ_VERSION)
        fail("not a runtime input file of this version", argv[2]);
    n_images = u32(inputs + 16);
    layers = u32(inputs + 32);
    if ((int)u32(inputs + 20) != in->rec->h || (int)u32(inputs + 24) != in->rec->w ||
        (int)u32(inputs + 28) != in->rec->stride || in->rec->kind != Q8)
        fail("input file", "image shape differs from the model's input tensor");
    row_bytes = (size_t)in->rec->w * (size_t)in->rec->stride;
    image_bytes = row_bytes * (size_t)in->rec->h;
    if (input_size != MPQ_HEADER_BYTES + (size_t)n_images * image_bytes)
        fail("input file", "truncated");
    if (!(out_file = fopen("outputs.bin", "wb")))
        fail("cannot write", "outputs.bin");
    if (layers && !(layer_file = fopen("layers.bin", "wb")))
        fail("cannot write", "layers.bin");

    for (i = 0; i < n_images; i++) {
        const uint8_t *image = inputs + MPQ_HEADER_BYTES + (size_t)i * image_bytes;
        int y;

        for (y = 0; y < in->rec->h; y++)
            memcpy((uint8_t *)in->interior + (size_t)y * (size_t)in->row, image + (size_t)y * row_bytes, row_bytes);
        for (k = 0; k < n_ops; k++) {
            MARK_LAYER();
            run_op(&ops[k]);
        }
        MARK_END();
        write_interior(out_file, out, "outputs.bin");
        if (layer_file)
            for (k = 0; k < n_ops; k++)
                write_interior(layer_file, ops[k].out, "layers.bin");
    }
    if (fclose(out_file) != 0 || (layer_file && fclose(layer_file) != 0))
        fail("cannot write", "outputs");
    return 0;
}
