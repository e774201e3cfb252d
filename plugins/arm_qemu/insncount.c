/*
 * insncount.c -- exact, deterministic guest instruction counts for qemu-aarch64 (user mode).
 *
 * Written for mpqbench against the QEMU TCG plugin API **version 1** (QEMU 7.2, Debian 12).
 *
 *   gcc -O2 -shared -fPIC -o insncount.so insncount.c
 *   qemu-aarch64 -cpu max -plugin ./insncount.so,out=counts.txt[,tbprof=tbs.txt] ./prog
 *
 * Design
 *   - Each instruction is classed ONCE, when QEMU translates its translation block (TB), by decoding
 *     its 32-bit A64 encoding (classify() below).
 *   - Per TB, one inline "add u64" op is attached for the total and one per class present in the TB,
 *     adding that class's instruction count to a global counter.  QEMU emits these adds into the
 *     translated code itself: there are no run-time callbacks, so the overhead is close to zero.
 *   - Optional layer regions: two marker instructions (see "Layer regions" below) split the counts
 *     into per-layer rows with one run-time callback per executed marker, exactly.
 *   - At exit the counters are written to the file named by the plugin argument out=FILE, one
 *     "name value" per line: classes, "vcpus N" (guest threads seen), "marks_layer N" and
 *     "marks_end N", then, if markers ran, "other.CLASS N" and "layerK.CLASS N" rows.
 *   - The classes other than "total" partition the instructions: their sum equals "total".
 *   - Optional TB profile (plugin argument tbprof=FILE): executions of each TB per region, for a
 *     cycle model; a TB that a marker splits is credited to the region in which it starts.
 *
 * Caveats
 *   - TB granularity: a TB's adds run when the TB is entered, so if execution leaves a TB part-way
 *     (a fault or signal in the middle of it) its remaining instructions are still counted
 *     (over-count).  Normal control flow only leaves a TB at its last instruction (a branch, svc,
 *     ...), so counts of programs that exit normally are exact.  Per-instruction inline adds would be
 *     exact even then, at a little more overhead.
 *   - The counters are plain (non-atomic) adds: with several guest threads they race.  "vcpus" in
 *     the output lets the caller refuse such runs.
 *   - SVE instructions (including SVE sdot/smmla) are all counted in class "sve", not split.
 *
 * Only the handful of API names used are declared below, by hand: Debian ships no qemu-plugin.h.
 * The v1 inline API used here was replaced in later API versions, so install() checks the
 * version range QEMU offers and fails loudly if it does not admit version 1.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Plugin API v1 (QEMU 7.2): the subset this plugin uses. ---------------------------------- */

#define API_EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* opaque; only its leading fields are read (see below) */
struct qemu_plugin_tb;
struct qemu_plugin_insn;

enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 = 0 };
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS = 0 };

typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_simple_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_init_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_simple_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, enum qemu_plugin_op op,
                                                void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);

/* Leading fields of QEMU 7.2's qemu_info_t; the rest of the struct is never touched. */
struct info_head {
    const char *target_name;
    struct {
        int min; /* oldest plugin API version this QEMU accepts */
        int cur; /* newest plugin API version this QEMU implements */
    } version;
};

/* The API version this file is written for.  INSNCOUNT_REQUIRE_API only exists so that a test can
 * build a copy that demands another version and check that install() refuses it. */
#define INSNCOUNT_API 1
#ifndef INSNCOUNT_REQUIRE_API
#define INSNCOUNT_REQUIRE_API INSNCOUNT_API
#endif

API_EXPORT int qemu_plugin_version = INSNCOUNT_API;

/* ---- Instruction classes. ---------------------------------------------------------------------- */

enum {
    C_TOTAL,      /* every executed instruction */
    C_SCALAR,     /* integer data processing (imm and reg, incl. madd/mul) and anything not classed */
    C_BRANCH,     /* branches, exception generation (svc), system and hints (nop, barriers, mrs) */
    C_LDST_GPR,   /* loads/stores of general-purpose registers, atomics, prefetch */
    C_LDST_SIMD,  /* loads/stores of SIMD&FP registers (ldr q, ld1, ld4r, ...) */
    C_SIMD_FP,    /* SIMD&FP data processing not in the three classes below */
    C_SIMD_MUL,   /* SIMD&FP multiply(-accumulate): mul/mla/smull/smlal/sqdmulh/fmla/fmul/fmadd ... */
    C_DOT,        /* sdot/udot/usdot/sudot (vector and by element) */
    C_MMLA,       /* smmla/ummla/usmmla */
    C_SVE,        /* any SVE instruction */
    N_CLASSES
};

static const char *const class_name[N_CLASSES] = {
    "total", "scalar_alu", "branch_sys", "ldst_gpr", "ldst_simd",
    "simd_fp", "simd_mul", "dot", "mmla", "sve",
};

#define BIT(i, n) (((i) >> (n)) & 1u)

/* Multiplies among the Advanced SIMD (vector and scalar) and scalar floating-point encodings. */
static bool is_simd_mul(uint32_t i)
{
    bool vec = (i & 0x9f000000u) == 0x0e000000u; /* 0 Q U 01110 ... : Advanced SIMD vector */
    bool sca = (i & 0xdf000000u) == 0x5e000000u; /* 01 U 11110 ...  : Advanced SIMD scalar */
    uint32_t u = BIT(i, 29), a = BIT(i, 23);

    /* x indexed element (vector 0 Q U 01111, scalar 01 U 11111, bit 10 = 0): every allocated
     * encoding is a multiply (mul, mla, mls, smull, smlal, sqdmulh, fmul, fmla, fcmla, bfdot ...). */
    if ((i & 0x9f000400u) == 0x0f000000u || (i & 0xdf000400u) == 0x5f000000u)
        return true;
    if (vec || sca) {
        if (BIT(i, 21) && BIT(i, 10)) { /* three same: opcode in bits 15:11 */
            uint32_t op = (i >> 11) & 0x1f;
            return op == 0x12             /* mla / mls */
                || op == 0x13             /* mul / pmul */
                || op == 0x16             /* sqdmulh / sqrdmulh */
                || op == 0x19             /* fmla / fmls / fmlal2 / fmlsl2 */
                || op == 0x1b             /* fmulx / fmul */
                || (op == 0x1d && !u);    /* fmlal / fmlsl (U=1: facge/facgt) */
        }
        if (BIT(i, 21) && ((i >> 10) & 3) == 0) { /* three different: opcode in bits 15:12 */
            uint32_t op = (i >> 12) & 0xf;
            return op >= 0x8 && op <= 0xe; /* [s|u|sqd]mlal, mlsl, mull, pmull */
        }
        if (!BIT(i, 21) && BIT(i, 15) && BIT(i, 10)) { /* three-register extension: bits 14:11 */
            uint32_t op = (i >> 11) & 0xf;
            return op <= 0x1              /* sqrdmlah / sqrdmlsh */
                || (op & 0xc) == 0x8      /* fcmla */
                || op == 0xd || op == 0xf; /* bfmmla, bfdot / bfmlal (fcadd = 0xc/0xe is not) */
        }
        if ((i & 0x0060c400u) == 0x00400400u) { /* three same FP16: a 10 Rm 00 opcode(13:11) 1 */
            uint32_t op = (i >> 11) & 0x7;
            return op == 0x1 || (op == 0x3 && !a); /* fmla/fmls, fmulx/fmul */
        }
        return false;
    }
    /* Scalar FP: data-processing 2 source fmul (0000) / fnmul (1000); 3 source fmadd family. */
    if ((i & 0xff207c00u) == 0x1e200800u)
        return true;
    return (i & 0xff000000u) == 0x1f000000u;
}

/* op0 (bits 28:25) = x111: data processing, SIMD & floating point. */
static int classify_simd(uint32_t i)
{
    if ((i & 0x9fe0fc00u) == 0x0e809400u) return C_DOT;  /* sdot/udot (vector), size=10 */
    if ((i & 0xbfe0fc00u) == 0x0e809c00u) return C_DOT;  /* usdot (vector) */
    if ((i & 0x9fc0f400u) == 0x0f80e000u) return C_DOT;  /* sdot/udot (by element) */
    if ((i & 0xbf40f400u) == 0x0f00f000u) return C_DOT;  /* sudot (size=00) / usdot (10), by element */
    if ((i & 0xdfe0fc00u) == 0x4e80a400u) return C_MMLA; /* smmla / ummla */
    if ((i & 0xffe0fc00u) == 0x4e80ac00u) return C_MMLA; /* usmmla */
    return is_simd_mul(i) ? C_SIMD_MUL : C_SIMD_FP;
}

/* Top-level A64 decode on op0 = bits 28:25. */
static int classify(uint32_t i)
{
    uint32_t op0 = (i >> 25) & 0xf;

    if ((op0 & 0xe) == 0x8 || (op0 & 0x7) == 0x5) return C_SCALAR; /* 100x imm, x101 reg */
    if ((op0 & 0xe) == 0xa) return C_BRANCH;                        /* 101x */
    if ((op0 & 0x5) == 0x4) return BIT(i, 26) ? C_LDST_SIMD : C_LDST_GPR; /* x1x0, bit 26 = V */
    if ((op0 & 0x7) == 0x7) return classify_simd(i);                /* x111 */
    if (op0 == 0x2) return C_SVE;                                   /* 0010 */
    return C_SCALAR; /* udf, unallocated, SME */
}

/* ---- Counting. ------------------------------------------------------------------------------------ */

static uint64_t counts[N_CLASSES];
static unsigned int vcpus;
static char out_path[4096];

/* ---- Layer regions. -------------------------------------------------------------------------------
 * A guest program may bracket regions with two marker instructions, unallocated HINTs that the
 * architecture executes as NOPs (no compiler or library emits them):
 *   MARK_LAYER  starts the next layer region (0, 1, 2, ... in execution order);
 *   MARK_END    ends the layer sequence: what follows (I/O, loop overhead) is counted as "other" and
 *               the next MARK_LAYER starts layer 0 again, so repeated passes (one per image) add up.
 * Each marker gets a run-time callback (only that one instruction) that closes the current region:
 * counters minus the last snapshot are added to the region's row.  To keep this exact although the
 * inline adds run at TB granularity, a TB is split at every marker: the adds for the instructions up
 * to and including the marker are attached to the TB, and those for the instructions after it to the
 * first instruction after it (per-instruction inline add).  A callback therefore sees exactly the
 * instructions executed before it, the marker included: rows (layers + other) sum to "total". */
#define MARK_LAYER 0xd5032f9fu /* hint #0x7c */
#define MARK_END 0xd5032fbfu   /* hint #0x7d */

static uint64_t snapshot[N_CLASSES];
static uint64_t other[N_CLASSES];        /* everything outside layer regions */
static uint64_t (*layers)[N_CLASSES];    /* one row per layer index */
static size_t layers_cap, layers_seen, next_layer;
static long region = -1;                 /* current layer row, -1 = other */
static uint64_t marks[2];                /* executed MARK_LAYER, MARK_END */

/* ---- TB profile (optional, tbprof=FILE): executions of every translated block, per region. ------
 * Each TB gets one more inline add (its execution count); at every marker the counts since the last
 * marker are credited to the closing region.  What a cycle model needs: the blocks executed in each
 * layer and how often (Python disassembles them and asks llvm-mca). */
struct tb_record {
    uint64_t vaddr, count, seen;
    size_t n_insns, cap;
    uint64_t *by_region; /* [0] = other, [1 + k] = layer k */
};

static struct tb_record **tbs;
static size_t n_tbs, tbs_cap;
static char prof_path[4096];

static void *grow(void *data, size_t *cap, size_t need, size_t size)
{
    size_t old = *cap, cap2 = old ? old : 64;
    void *bigger;

    while (cap2 < need)
        cap2 *= 2;
    if (cap2 == old)
        return data;
    bigger = realloc(data, cap2 * size);
    if (!bigger) {
        fprintf(stderr, "insncount: out of memory\n");
        abort();
    }
    memset((char *)bigger + old * size, 0, (cap2 - old) * size);
    *cap = cap2;
    return bigger;
}

static void profile_region(void)
{
    size_t t, slot = (size_t)(region + 1);

    for (t = 0; t < n_tbs; t++) {
        struct tb_record *r = tbs[t];
        if (r->count == r->seen)
            continue;
        r->by_region = grow(r->by_region, &r->cap, slot + 1, sizeof *r->by_region);
        r->by_region[slot] += r->count - r->seen;
        r->seen = r->count;
    }
}

static void close_region(void)
{
    uint64_t *row = region < 0 ? other : layers[region];
    int k;

    for (k = 0; k < N_CLASSES; k++) {
        row[k] += counts[k] - snapshot[k];
        snapshot[k] = counts[k];
    }
    if (prof_path[0])
        profile_region();
}

static void on_mark(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    close_region();
    if (userdata == NULL) { /* MARK_END */
        marks[1]++;
        region = -1;
        next_layer = 0;
        return;
    }
    marks[0]++;
    layers = grow(layers, &layers_cap, next_layer + 1, sizeof *layers);
    region = (long)next_layer++;
    if (next_layer > layers_seen)
        layers_seen = next_layer;
}

/* Attach the per-class adds of one segment of a TB: at TB entry for the first segment, else inline
 * on the segment's first instruction. */
static void attach(struct qemu_plugin_tb *tb, size_t first, const uint64_t *n)
{
    int k;

    for (k = 0; k < N_CLASSES; k++) {
        if (!n[k])
            continue;
        if (first == 0)
            qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &counts[k], n[k]);
        else
            qemu_plugin_register_vcpu_insn_exec_inline(qemu_plugin_tb_get_insn(tb, first),
                                                       QEMU_PLUGIN_INLINE_ADD_U64, &counts[k], n[k]);
    }
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    uint64_t n[N_CLASSES] = {0};
    size_t k, first = 0, len = qemu_plugin_tb_n_insns(tb);
    (void)id;

    for (k = 0; k < len; k++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, k);
        uint32_t word = 0;
        size_t size = qemu_plugin_insn_size(insn);
        memcpy(&word, qemu_plugin_insn_data(insn), size < 4 ? size : 4); /* A64: always 4, LE */
        n[classify(word)]++;
        n[C_TOTAL]++;
        if (word == MARK_LAYER || word == MARK_END) {
            attach(tb, first, n);
            memset(n, 0, sizeof n);
            first = k + 1;
            /* userdata: non-NULL for MARK_LAYER, NULL for MARK_END */
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, QEMU_PLUGIN_CB_NO_REGS,
                                                   word == MARK_LAYER ? (void *)counts : NULL);
        }
    }
    if (first < len)
        attach(tb, first, n);
    if (prof_path[0]) {
        struct tb_record *r = calloc(1, sizeof *r);
        if (!r) {
            fprintf(stderr, "insncount: out of memory\n");
            abort();
        }
        r->vaddr = qemu_plugin_tb_vaddr(tb);
        r->n_insns = len;
        tbs = grow(tbs, &tbs_cap, n_tbs + 1, sizeof *tbs);
        tbs[n_tbs++] = r;
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &r->count, 1);
    }
}

static void vcpu_init(qemu_plugin_id_t id, unsigned int vcpu_index)
{
    (void)id;
    (void)vcpu_index;
    __atomic_fetch_add(&vcpus, 1, __ATOMIC_RELAXED);
}

static void write_row(FILE *f, const char *prefix, const uint64_t *row)
{
    int k;

    for (k = 0; k < N_CLASSES; k++)
        fprintf(f, "%s%s %llu\n", prefix, class_name[k], (unsigned long long)row[k]);
}

/* "vaddr n_insns region executions" per TB and region (region -1 = other). */
static void write_profile(void)
{
    FILE *f = fopen(prof_path, "w");
    size_t t, k;

    if (!f) {
        fprintf(stderr, "insncount: cannot write %s\n", prof_path);
        return;
    }
    for (t = 0; t < n_tbs; t++)
        for (k = 0; k < tbs[t]->cap; k++)
            if (tbs[t]->by_region[k])
                fprintf(f, "%llx %zu %ld %llu\n", (unsigned long long)tbs[t]->vaddr, tbs[t]->n_insns,
                        (long)k - 1, (unsigned long long)tbs[t]->by_region[k]);
    fclose(f);
}

static void at_exit(qemu_plugin_id_t id, void *userdata)
{
    FILE *f = fopen(out_path, "w");
    char prefix[64];
    size_t l;
    (void)id;
    (void)userdata;

    if (!f) {
        fprintf(stderr, "insncount: cannot write %s\n", out_path);
        return;
    }
    close_region();
    write_row(f, "", counts);
    fprintf(f, "vcpus %u\n", vcpus);
    fprintf(f, "marks_layer %llu\nmarks_end %llu\n", (unsigned long long)marks[0],
            (unsigned long long)marks[1]);
    if (marks[0] || marks[1]) {
        write_row(f, "other.", other);
        for (l = 0; l < layers_seen; l++) {
            snprintf(prefix, sizeof prefix, "layer%zu.", l);
            write_row(f, prefix, layers[l]);
        }
    }
    fclose(f);
    if (prof_path[0])
        write_profile();
}

API_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    const struct info_head *head = (const struct info_head *)info;
    int k;

    if (head->version.min > INSNCOUNT_REQUIRE_API || head->version.cur < INSNCOUNT_REQUIRE_API) {
        fprintf(stderr,
                "insncount: QEMU offers plugin API versions %d..%d, this plugin needs version %d "
                "(QEMU 7.2); refusing to count\n",
                head->version.min, head->version.cur, INSNCOUNT_REQUIRE_API);
        return 1;
    }
    out_path[0] = '\0';
    for (k = 0; k < argc; k++) {
        if (strncmp(argv[k], "out=", 4) == 0 && strlen(argv[k] + 4) < sizeof(out_path)) {
            strcpy(out_path, argv[k] + 4);
        } else if (strncmp(argv[k], "tbprof=", 7) == 0 && strlen(argv[k] + 7) < sizeof(prof_path)) {
            strcpy(prof_path, argv[k] + 7);
        } else {
            fprintf(stderr, "insncount: unknown or bad argument '%s' (expected out=FILE [tbprof=FILE])\n",
                    argv[k]);
            return 1;
        }
    }
    if (!out_path[0]) {
        fprintf(stderr, "insncount: missing argument out=FILE\n");
        return 1;
    }
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
