"""The arm-qemu instruction counter: exact and repeatable counts, correct classes, loud refusals.

Tiny freestanding assembly programs have hand-computable instruction counts; the counter must give
exactly those numbers, run after run.  Skipped (with the one-line reason) without qemu-aarch64 and the
cross compiler.
"""

from __future__ import annotations

import shutil

import pytest

from mpqbench.plugins.arm_qemu import toolchain as tc

LOOP_S = r"""
    .arch armv8.2-a+dotprod
    .global _start
_start:
    mov     x0, #N              // scalar_alu
    mov     x3, sp              // scalar_alu
1:  ldr     x2, [x3]            // ldst_gpr
    ldr     q1, [x3]            // ldst_simd
    add     v0.4s, v0.4s, v1.4s // simd_fp
    mul     v2.4s, v1.4s, v1.4s // simd_mul
    sdot    v3.4s, v1.16b, v1.16b // dot
    add     x1, x1, x2          // scalar_alu
    subs    x0, x0, #1          // scalar_alu
    b.ne    1b                  // branch_sys
    mov     x0, #0              // scalar_alu
    mov     x8, #93             // scalar_alu (exit)
    svc     #0                  // branch_sys
"""


def loop_expected(n: int) -> dict[str, int]:
    """2 set-up instructions, 8 per iteration, 3 to exit."""
    return {"total": 8 * n + 5, "scalar_alu": 2 * n + 4, "branch_sys": n + 1, "ldst_gpr": n,
            "ldst_simd": n, "simd_fp": n, "simd_mul": n, "dot": n, "mmla": 0, "sve": 0}


# One straight-line instruction per line, with the class the counter must give it (checked against
# aarch64-linux-gnu-objdump -d).  x1/x2 point at a 256-byte stack buffer.
MIX = """
sdot v0.4s, v1.16b, v2.16b|dot
udot v0.2s, v1.8b, v2.8b|dot
usdot v0.4s, v1.16b, v2.16b|dot
sdot v0.4s, v1.16b, v2.4b[3]|dot
udot v0.2s, v1.8b, v2.4b[1]|dot
usdot v0.4s, v1.16b, v2.4b[2]|dot
sudot v0.4s, v1.16b, v2.4b[0]|dot
smmla v0.4s, v1.16b, v2.16b|mmla
ummla v0.4s, v1.16b, v2.16b|mmla
usmmla v0.4s, v1.16b, v2.16b|mmla
mul v0.4s, v1.4s, v2.4s|simd_mul
mul v0.8h, v1.8h, v2.h[3]|simd_mul
mla v0.16b, v1.16b, v2.16b|simd_mul
pmul v0.16b, v1.16b, v2.16b|simd_mul
sqrdmulh v0.4s, v1.4s, v2.s[1]|simd_mul
sqdmulh s0, s1, s2|simd_mul
sqrdmlah v0.4s, v1.4s, v2.4s|simd_mul
smull v0.8h, v1.8b, v2.8b|simd_mul
smlal2 v0.8h, v1.16b, v2.16b|simd_mul
umlsl v0.4s, v1.4h, v2.4h|simd_mul
pmull v0.1q, v1.1d, v2.1d|simd_mul
fmla v0.2d, v1.2d, v2.2d|simd_mul
fmul v0.4s, v1.4s, v2.s[1]|simd_mul
fmulx v0.4s, v1.4s, v2.4s|simd_mul
fmla v0.8h, v1.8h, v2.8h|simd_mul
fmlal v0.4s, v1.4h, v2.4h|simd_mul
fcmla v0.4s, v1.4s, v2.4s, #90|simd_mul
bfdot v0.4s, v1.8h, v2.8h|simd_mul
bfmmla v0.4s, v1.8h, v2.8h|simd_mul
fnmul d0, d1, d2|simd_mul
fmadd s0, s1, s2, s3|simd_mul
fcadd v0.4s, v1.4s, v2.4s, #90|simd_fp
facge v0.4s, v1.4s, v2.4s|simd_fp
fadd v0.8h, v1.8h, v2.8h|simd_fp
fdiv d0, d1, d2|simd_fp
saddl v0.8h, v1.8b, v2.8b|simd_fp
sabal v0.8h, v1.8b, v2.8b|simd_fp
addv s0, v1.4s|simd_fp
cnt v0.16b, v1.16b|simd_fp
sshr v0.16b, v1.16b, #4|simd_fp
movi v0.16b, #0xf0|simd_fp
dup v0.4s, w3|simd_fp
umov w3, v1.s[1]|simd_fp
tbl v0.16b, {v1.16b}, v2.16b|simd_fp
ext v0.16b, v1.16b, v2.16b, #3|simd_fp
fcvtzs w3, s1|simd_fp
aese v0.16b, v1.16b|simd_fp
eor3 v0.16b, v1.16b, v2.16b, v3.16b|simd_fp
madd x3, x4, x5, x6|scalar_alu
adrp x3, .|scalar_alu
csel x3, x4, x5, eq|scalar_alu
nop|branch_sys
b .+4|branch_sys
cbz xzr, .+4|branch_sys
mrs x3, tpidr_el0|branch_sys
dmb ish|branch_sys
ldr w3, [x1, #4]|ldst_gpr
ldp x3, x4, [x1, #16]|ldst_gpr
ldxr x3, [x1]|ldst_gpr
ldadd x3, x4, [x1]|ldst_gpr
prfm pldl1keep, [x1]|ldst_gpr
ldr q0, [x1]|ldst_simd
str d0, [x2], #8|ldst_simd
ld1 {v0.16b, v1.16b}, [x1]|ldst_simd
st4 {v0.4s, v1.4s, v2.4s, v3.4s}, [x1]|ldst_simd
ld1r {v0.4s}, [x1]|ldst_simd
add z0.s, z1.s, z2.s|sve
sdot z0.s, z1.b, z2.b|sve
ptrue p0.b|sve
ld1b {z0.b}, p0/z, [x1]|sve
"""

MIX_HEAD = """\
    .arch armv8.6-a+dotprod+i8mm+bf16+sve+fp16+fp16fml+crypto+sha3+lse
    .global _start
_start:
    sub sp, sp, #256
    mov x1, sp
    mov x2, sp
"""
MIX_TAIL = """\
    mov x0, #0
    mov x8, #93
    svc #0
"""


def build_asm(arm_cache, text: str, name: str, *defines: str):
    src = arm_cache / f"{name}.S"
    src.write_text(text)
    return tc.cross_compile(src, flags=["-nostdlib", "-static", *defines], cache_dir=arm_cache)


@pytest.mark.parametrize("n", [1, 1000])
def test_loop_counts_are_exact_and_repeat(arm_cache, n):
    binary = build_asm(arm_cache, LOOP_S, "loop", f"-DN={n}")
    first = tc.run_counted(binary, cache_dir=arm_cache)
    second = tc.run_counted(binary, cache_dir=arm_cache)
    assert first.counts == loop_expected(n)
    assert second == first
    assert sum(v for k, v in first.counts.items() if k != "total") == first.total
    cond = first.conditions()
    assert cond["environment"] == "empty" and cond["cpu"] == "max" and cond["guest_threads"] == 1
    assert cond["argv"] == ("./prog",) and "7.2" in cond["qemu_version"]


def test_classes_of_a_straight_line_mix(arm_cache):
    rows = [line.split("|") for line in MIX.strip().splitlines()]
    body = "".join(f"    {insn}\n" for insn, _ in rows)
    binary = build_asm(arm_cache, MIX_HEAD + body + MIX_TAIL, "mix")
    expected = dict.fromkeys(tc.CLASSES, 0)
    for _, cls in rows:
        expected[cls] += 1
    expected["scalar_alu"] += 5  # sub, mov, mov / mov, mov
    expected["branch_sys"] += 1  # svc
    expected["total"] = len(rows) + 6
    assert tc.run_counted(binary, cache_dir=arm_cache).counts == expected


SDOT_C = r"""
#include <arm_neon.h>
#include <stdio.h>
#include <stdlib.h>

static volatile int8_t a[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
static volatile int8_t b[16] = {2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2};
volatile int32_t sink;

int main(int argc, char **argv)
{
    long n = atol(argv[1]);
    int8_t x[16], y[16];
    for (int i = 0; i < 16; i++) { x[i] = a[i]; y[i] = b[i]; }
    int8x16_t va = vld1q_s8(x), vb = vld1q_s8(y);
    int32x4_t acc = vdupq_n_s32(0);
    for (long i = 0; i < n; i++)
        acc = vdotq_s32(acc, va, vb);
    sink = vaddvq_s32(acc);
    if (argc > 2)
        printf("%d\n", sink);
    return 0;
}
"""


def test_sdot_count_is_exact(arm_cache):
    src = arm_cache / "sdot.c"
    src.write_text(SDOT_C)
    binary = tc.cross_compile(src, cache_dir=arm_cache)  # default -O2 -static -march=armv8.2-a+dotprod
    run = tc.run_counted(binary, ["1000", "print"], cache_dir=arm_cache)
    assert run.counts["dot"] == 1000
    assert run.guest_stdout == "32000\n"  # 16 lanes x 1 x 2 per sdot
    region = tc.region_counts(binary, ["1000"], ["0"], cache_dir=arm_cache)
    region2 = tc.region_counts(binary, ["2000"], ["0"], cache_dir=arm_cache)
    assert region["dot"] == 1000 and region2["dot"] == 2000
    # region = fixed set-up + n x loop body: 1000 more iterations add a whole number per iteration
    step = {k: region2[k] - region[k] for k in region}
    assert all(v % 1000 == 0 for v in step.values()) and step["dot"] == 1000
    assert 0 < region["total"] - step["total"] < 200


def test_plugin_refuses_an_api_version_qemu_lacks(arm_cache):
    binary = build_asm(arm_cache, LOOP_S, "loop", "-DN=1")
    wrong = tc.build_plugin(arm_cache, defines={"INSNCOUNT_REQUIRE_API": 2})
    with pytest.raises(tc.GuestError, match=r"insncount: QEMU offers plugin API versions 0\.\.1, "
                                            r"this plugin needs version 2"):
        tc.run_counted(binary, plugin=wrong)


def test_guest_failure_and_dynamic_binary_are_refused(arm_cache):
    failing = build_asm(arm_cache, LOOP_S.replace("mov     x0, #0 ", "mov     x0, #3 "), "fail", "-DN=1")
    with pytest.raises(tc.GuestError, match="exited with status 3"):
        tc.run_counted(failing, cache_dir=arm_cache)
    src = arm_cache / "dyn.c"
    src.write_text("int main(void) { return 0; }\n")
    with pytest.raises(ValueError, match="dynamically linked"):
        tc.run_counted(tc.cross_compile(src, flags=["-O2"], cache_dir=arm_cache), cache_dir=arm_cache)


def test_builds_are_cached(arm_cache):
    first = build_asm(arm_cache, LOOP_S, "loop", "-DN=5")
    mtime = first.stat().st_mtime_ns
    assert build_asm(arm_cache, LOOP_S, "loop", "-DN=5") == first and first.stat().st_mtime_ns == mtime
    assert build_asm(arm_cache, LOOP_S, "loop", "-DN=6") != first


@pytest.mark.parametrize("missing, hint", [
    ("qemu-aarch64", "apt-get install qemu-user"),
    ("aarch64-linux-gnu-gcc", "apt-get install gcc-aarch64-linux-gnu"),
    ("gcc", "apt-get install gcc"),
])
def test_missing_toolchain_gives_one_line_reason(monkeypatch, missing, hint):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == missing else "/bin/x")
    assert tc.unavailable() == f"arm-qemu: {missing} not found ({hint})"
