"""Build aarch64 programs and count their executed instructions exactly under qemu-aarch64.

Why this shape:

- Counts come from ``insncount.c``, a QEMU 7.2 TCG plugin (API v1) with inline per-TB counters, so
  they are exact and cost almost nothing.  Wall time under qemu, host timers and PMU registers are
  not meaningful and are never reported.
- Counts repeat bit for bit only if the run conditions are fixed: the ``-cpu`` model (glibc ifunc
  dispatch), an empty environment and fixed argv, the same kind of stdout (glibc isatty/fstat path), a
  static binary and one guest thread.  :func:`run_counted` fixes all of them and records them in the
  result.
- Per-layer counts come from marker instructions the guest executes at layer boundaries (see
  insncount.c): ``CountedRun.layers`` and ``.other`` partition ``.counts`` exactly.
- Builds are cached by content (sources, flags, compiler version) and published with
  write-then-``os.replace``, so concurrent workers building the same thing never see half a file.

Only the standard library is used.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

PLUGIN_SOURCE = Path(__file__).with_name("insncount.c")

#: Instruction classes written by the plugin; all but ``total`` partition the instructions.
CLASSES = (
    "total", "scalar_alu", "branch_sys", "ldst_gpr", "ldst_simd",
    "simd_fp", "simd_mul", "dot", "mmla", "sve",
)

QEMU = "qemu-aarch64"
CROSS_CC = "aarch64-linux-gnu-gcc"
OBJDUMP = "aarch64-linux-gnu-objdump"
HOST_CC = "gcc"
MCA = "llvm-mca-14"
DEFAULT_CPU = "max"
DEFAULT_CROSS_FLAGS = ("-O2", "-static", "-march=armv8.2-a+dotprod")
PLUGIN_FLAGS = ("-O2", "-shared", "-fPIC")
GUEST_ARGV0 = "./prog"
#: Where the guest binary runs from (fixed length: see :func:`run_counted`).
GUEST_DIR_PATTERN = "/tmp/mpqbench-arm-XXXXXXXX"

_INSTALL_HINT = {
    QEMU: "apt-get install qemu-user",
    CROSS_CC: "apt-get install gcc-aarch64-linux-gnu",
    HOST_CC: "apt-get install gcc",
}


class ToolchainError(RuntimeError):
    """A build failed (the message carries the compiler's stderr)."""


class GuestError(RuntimeError):
    """A counted run failed: non-zero guest exit, plugin refusal, missing counts, or several threads."""


# ---- availability ---------------------------------------------------------------------------------


def unavailable() -> str | None:
    """None when the target can run here, else one line saying what is missing and how to get it.

    Needs ``qemu-aarch64`` (to run), ``aarch64-linux-gnu-gcc`` with the aarch64 C library headers (to
    cross-compile kernels) and a host ``gcc`` (to build the plugin).  A QEMU of 9.0 or newer is refused too:
    it dropped the plugin API v1 inline counters this plugin is written for (the plugin itself also checks,
    at load time).
    """
    for tool in (QEMU, CROSS_CC, HOST_CC):
        if shutil.which(tool) is None:
            return f"arm-qemu: {tool} not found ({_INSTALL_HINT[tool]})"
    if not _cross_libc():
        return ("arm-qemu: the aarch64 C library headers are missing (apt-get install libc6-dev-arm64-cross)")
    try:
        version = qemu_version()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"arm-qemu: {QEMU} --version failed ({exc})"
    match = re.search(r"version (\d+)\.", version)
    if match and int(match.group(1)) >= 9:
        return (f"arm-qemu: {QEMU} {version.split('version ')[-1]} has no plugin API v1 "
                "(needs QEMU 7.2, e.g. Debian 12 qemu-user)")
    return None


@functools.lru_cache(maxsize=None)
def _cross_libc() -> bool:
    """Whether the cross compiler finds the C library headers (Debian's libc6-dev-arm64-cross)."""
    probe = subprocess.run([CROSS_CC, "-E", "-x", "c", "-", "-o", os.devnull], input="#include <stdio.h>\n",
                           capture_output=True, text=True, timeout=60)
    return probe.returncode == 0


@functools.lru_cache(maxsize=None)
def qemu_version() -> str:
    """First line of ``qemu-aarch64 --version``; recorded with every result (counts depend on it)."""
    out = subprocess.run([_which(QEMU), "--version"], capture_output=True, text=True, check=True,
                         env={}, timeout=60)
    return out.stdout.splitlines()[0].strip()


@functools.lru_cache(maxsize=None)
def _compiler_id(cc: str) -> str:
    """The compiler's full ``--version`` text: part of every cache key, so an upgrade rebuilds."""
    return subprocess.run([cc, "--version"], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def _which(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolchainError(f"arm-qemu: {tool} not found ({_INSTALL_HINT.get(tool, 'not installed')})")
    return path


# ---- cached builds --------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$MPQBENCH_CACHE/arm``, else ``~/.cache/mpqbench/arm`` (same root as the rest of mpqbench)."""
    root = os.environ.get("MPQBENCH_CACHE") or Path.home() / ".cache" / "mpqbench"
    return Path(root) / "arm"


def _cached_build(cc: str, sources: Sequence[Path], flags: Sequence[str], deps: Sequence[Path],
                  stem: str, suffix: str, cache_dir: Path | str | None) -> Path:
    """Compile ``sources`` with ``cc flags`` into the cache unless an identical build is there.

    The key hashes the compiler identity, the flags, and the names and bytes of sources and deps.  The
    output is written under a private temporary name and published with ``os.replace``: two processes
    building the same key both succeed and readers only ever see a complete file.
    """
    cc_path = _which(cc)
    key = hashlib.sha256()
    for part in (cc, _compiler_id(cc_path), "\0".join(flags)):
        key.update(part.encode() + b"\0\0")
    for path in (*sources, *deps):
        key.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0\0")
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{stem}-{key.hexdigest()[:20]}{suffix}"
    if target.exists():
        return target
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        proc = subprocess.run([cc_path, *flags, "-o", tmp, *map(str, sources)],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise ToolchainError(f"arm-qemu: {cc} failed on {', '.join(s.name for s in sources)}:\n"
                                 f"{proc.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def build_plugin(cache_dir: Path | str | None = None, *,
                 defines: Mapping[str, str | int] | None = None) -> Path:
    """The insncount plugin ``.so``, built with the host gcc (``-O2 -shared -fPIC``) and cached.

    ``defines`` adds ``-DNAME=VALUE`` (tests use ``INSNCOUNT_REQUIRE_API`` to check that the plugin
    refuses an API version QEMU does not offer).
    """
    flags = [*PLUGIN_FLAGS, *(f"-D{k}={v}" for k, v in sorted((defines or {}).items()))]
    return _cached_build(HOST_CC, [PLUGIN_SOURCE], flags, (), "insncount", ".so", cache_dir)


def cross_compile(sources: Path | str | Sequence[Path | str], *, flags: Sequence[str] | None = None,
                  extra_flags: Sequence[str] = (), deps: Sequence[Path | str] = (),
                  cache_dir: Path | str | None = None) -> Path:
    """A static aarch64 executable built from C/assembly ``sources``, cached.

    ``flags`` replaces :data:`DEFAULT_CROSS_FLAGS` (``-O2 -static -march=armv8.2-a+dotprod``);
    ``extra_flags`` is appended.  ``deps`` (headers, ...) only enter the cache key.  Keep ``-static``:
    a dynamic loader would make the counts vary.
    """
    srcs = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    all_flags = [*(DEFAULT_CROSS_FLAGS if flags is None else flags), *extra_flags]
    return _cached_build(CROSS_CC, srcs, all_flags, [Path(d) for d in deps], srcs[0].stem, "",
                         cache_dir)


# ---- counted runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CountedRun:
    """Executed guest instruction counts of one run, with every condition the counts depend on."""

    counts: dict[str, int]           #: class -> executed instructions (see :data:`CLASSES`)
    binary: str                      #: absolute path of the executable
    binary_sha256: str
    argv: tuple[str, ...]            #: guest argv, argv[0] included (always ``./prog``)
    cpu: str                         #: ``-cpu`` model (glibc ifunc choices depend on it)
    qemu_version: str                #: first line of ``qemu-aarch64 --version``
    guest_threads: int               #: guest threads (vCPUs) seen by the plugin; always 1 here
    exit_code: int = 0
    environment: str = "empty"       #: the guest ran with ``env={}``
    guest_path: str = f"{GUEST_DIR_PATTERN}/prog"  #: real path of the executable qemu ran
    stdin: str = "/dev/null"
    stdout: str = "regular file"     #: guest stdout and stderr always go to regular files
    counter: str = "insncount.c, QEMU plugin API v1, inline per-TB counters"
    guest_stdout: str = field(default="", compare=False)  #: what the guest printed (for result checks)
    #: per-layer counts between the guest's layer markers (see insncount.c), summed over passes;
    #: empty when the guest executed no markers.  ``layers`` + ``other`` sum to ``counts`` exactly.
    layers: tuple[dict[str, int], ...] = ()
    other: dict[str, int] = field(default_factory=dict)  #: counts outside layer regions
    marks: tuple[int, int] = (0, 0)  #: executed (layer, end) markers
    #: with ``tb_profile=True``: (vaddr, instructions, region, executions) per translated block and
    #: region (-1 = outside layers), for a cycle model
    tb_profile: tuple[tuple[int, int, int, int], ...] = ()

    @property
    def total(self) -> int:
        return self.counts["total"]

    def conditions(self) -> dict:
        """Everything but the counts and the guest's output: record it next to each result."""
        data = asdict(self)
        for key in ("counts", "guest_stdout", "layers", "other", "marks", "tb_profile"):
            del data[key]
        return data

    def minus(self, baseline: CountedRun) -> dict[str, int]:
        """Per-class counts of this run minus ``baseline`` (the same binary in harness-only mode)."""
        if (self.binary_sha256, self.cpu, self.qemu_version) != (
                baseline.binary_sha256, baseline.cpu, baseline.qemu_version):
            raise ValueError("arm-qemu: a region count needs the same binary, -cpu and qemu")
        return {k: self.counts[k] - baseline.counts[k] for k in self.counts}


def _check_static_aarch64(path: Path) -> None:
    """Refuse anything but a static (no PT_INTERP) 64-bit little-endian AArch64 ELF."""
    with open(path, "rb") as fh:
        head = fh.read(64)
        if len(head) < 64 or head[:6] != b"\x7fELF\x02\x01" or struct.unpack_from("<H", head, 18)[0] != 183:
            raise ValueError(f"arm-qemu: {path} is not a 64-bit little-endian AArch64 ELF")
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    if any(struct.unpack_from("<I", table, k * phentsize)[0] == 3 for k in range(phnum)):  # PT_INTERP
        raise ValueError(f"arm-qemu: {path} is dynamically linked; build it with -static")


def _parse_counts(text: str) -> dict[str, int]:
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        values[name] = int(value)
    return values


def _rows(values: dict[str, int], prefix: str) -> dict[str, int]:
    return {k: values[f"{prefix}{k}"] for k in CLASSES}


def run_counted(binary: Path | str, args: Sequence[str] = (), *, cpu: str = DEFAULT_CPU,
                plugin: Path | str | None = None, cache_dir: Path | str | None = None,
                timeout: float = 600, files: Mapping[str, Path | str] | None = None,
                fetch: Sequence[str] = (), fetch_dir: Path | str | None = None,
                tb_profile: bool = False) -> CountedRun:
    """Run a static aarch64 ``binary`` under ``qemu-aarch64 -cpu <cpu>`` and count its instructions.

    Conditions fixed here so that the counts repeat exactly: ``env={}`` (empty environment), argv
    ``./prog *args``, stdin ``/dev/null``, stdout and stderr regular files, a static binary (checked)
    and one guest thread (checked: several threads would make the plugin's non-atomic counters race).
    The binary is also run from a path of fixed length, :data:`GUEST_DIR_PATTERN`: qemu puts the
    executable's real path on the guest stack, and its length shifts the stack alignment (measured:
    the same hello-world gives 6,301 or 6,329 instructions from two different paths).
    Data travels through the guest's working directory, so that argv stays fixed: ``files`` maps
    names to host files linked (or copied) in before the run; the files named in ``fetch``, which the
    guest must have written there, are moved to ``fetch_dir`` afterwards.  ``tb_profile`` also records
    how often each translated block ran in each layer region (for :mod:`.cycles`).
    Raises :class:`GuestError`, with the guest's stderr, on a non-zero exit or a plugin refusal.
    """
    binary = Path(binary).resolve()
    _check_static_aarch64(binary)
    plugin = Path(plugin) if plugin is not None else build_plugin(cache_dir)
    qemu = _which(QEMU)
    argv = (GUEST_ARGV0, *map(str, args))
    with tempfile.TemporaryDirectory(prefix="mpqbench-arm-", dir="/tmp") as tmp:
        work = Path(tmp)  # /tmp/mpqbench-arm-XXXXXXXX: the random part always has 8 characters
        if len(tmp) != len(GUEST_DIR_PATTERN):
            raise RuntimeError(f"arm-qemu: temporary directory {tmp} does not match {GUEST_DIR_PATTERN}")
        out, prof = work / "counts.txt", work / "tbprof.txt"
        if "," in f"{plugin.resolve()}{out}":
            raise ValueError(f"arm-qemu: ',' in {plugin} would split qemu's -plugin option")
        plugin_arg = f"{plugin.resolve()},out={out}" + (f",tbprof={prof}" if tb_profile else "")
        if not _place(binary, work / "prog"):
            os.chmod(work / "prog", 0o755)
        for name, path in (files or {}).items():
            _place(Path(path), work / _plain_name(name))
        cmd = [qemu, "-cpu", cpu, "-plugin", plugin_arg, *argv]
        with open(work / "stdout", "wb") as so, open(work / "stderr", "wb") as se:
            proc = subprocess.run(cmd, cwd=work, env={}, stdin=subprocess.DEVNULL, stdout=so,
                                  stderr=se, timeout=timeout)
        stderr = (work / "stderr").read_text(errors="replace").strip()
        stdout = (work / "stdout").read_text(errors="replace")
        what = f"{binary.name} {' '.join(argv[1:])}".strip()
        if proc.returncode != 0:
            raise GuestError(f"arm-qemu: {what} (-cpu {cpu}) exited with status {proc.returncode}: "
                             f"{stderr[-2000:] or '(no stderr)'}")
        if not out.exists():
            raise GuestError(f"arm-qemu: {what}: the plugin wrote no counts: {stderr[-2000:]}")
        values = _parse_counts(out.read_text())
        profile = tuple(tuple(int(v, 16 if i == 0 else 10) for i, v in enumerate(line.split()))
                        for line in prof.read_text().splitlines()) if tb_profile else ()
        if fetch:
            if fetch_dir is None:
                raise ValueError("arm-qemu: fetch needs fetch_dir")
            for name in fetch:
                produced = work / _plain_name(name)
                if not produced.exists():
                    raise GuestError(f"arm-qemu: {what} wrote no {name}")
                shutil.move(produced, Path(fetch_dir) / name)
    threads = values.pop("vcpus")
    if threads != 1:
        raise GuestError(f"arm-qemu: {what} ran {threads} guest threads; inline counts are only exact "
                         "with one")
    marks = (values.get("marks_layer", 0), values.get("marks_end", 0))
    n_layers = sum(1 for key in values if key.startswith("layer") and key.endswith(".total"))
    layers = tuple(_rows(values, f"layer{k}.") for k in range(n_layers))
    return CountedRun(
        counts=_rows(values, ""), binary=str(binary),
        binary_sha256=hashlib.sha256(binary.read_bytes()).hexdigest(), argv=argv, cpu=cpu,
        qemu_version=qemu_version(), guest_threads=threads, exit_code=proc.returncode,
        guest_stdout=stdout, layers=layers, other=_rows(values, "other.") if any(marks) else {},
        marks=marks, tb_profile=profile)


def _place(source: Path, dest: Path) -> bool:
    """Hard-link ``source`` to ``dest`` (cheap, same bytes; True), else copy it (False)."""
    try:
        os.link(source, dest)
        return True
    except OSError:
        shutil.copyfile(source, dest)
        return False


def _plain_name(name: str) -> str:
    if not name or "/" in name or name in (".", "..", "prog", "counts.txt", "tbprof.txt", "stdout", "stderr"):
        raise ValueError(f"arm-qemu: {name!r} is not a plain file name free for the guest's directory")
    return name


def region_counts(binary: Path | str, args: Sequence[str], baseline_args: Sequence[str],
                  **kwargs) -> dict[str, int]:
    """Counts of a kernel region: ``run(args) - run(baseline_args)`` of the same binary.

    The binary must offer a harness-only mode (``baseline_args``, e.g. zero iterations or a flag that
    skips the kernel) that executes everything but the region; startup, glibc and I/O then cancel out
    exactly because both runs use the same fixed conditions.  Guest output should not depend on the
    mode in a way that changes the I/O path (print the same number of bytes, say).
    """
    return run_counted(binary, args, **kwargs).minus(run_counted(binary, baseline_args, **kwargs))


# ---- modelled cycles (optional) -------------------------------------------------------------------


def disassemble(binary: Path | str) -> str:
    """``aarch64-linux-gnu-objdump -d`` of a binary (installed with the cross compiler)."""
    return subprocess.run([_which(OBJDUMP), "-d", "--no-show-raw-insn", str(binary)], capture_output=True,
                          text=True, check=True, timeout=300).stdout


@dataclass(frozen=True)
class McaEstimate:
    """Steady-state cycles per iteration of a loop body from llvm-mca: a MODEL, not a measurement."""

    cpu: str
    cycles_per_iteration: float
    instructions_per_iteration: float
    ipc: float
    block_rthroughput: float
    label: str  #: e.g. "modelled: llvm-mca model of neoverse-n1, LLVM 14.0.6"


def mca_cycles(asm: str, cpu: str = "neoverse-n1", *, iterations: int = 100,
               mattr: str | None = None) -> McaEstimate:
    """Model the cycles per iteration of the loop body ``asm`` with ``llvm-mca-14 -mcpu=<cpu>``.

    The model ignores caches, memory and branch prediction, and LLVM shares one scheduling model
    among cortex-a57/a72/a76/a78/x1: never present those as different cores.  Useful to rank kernel
    variants next to the exact instruction counts, always labelled as modelled.
    """
    cmd = [_which(MCA), "-mtriple=aarch64-linux-gnu", f"-mcpu={cpu}", f"-iterations={iterations}"]
    if mattr:
        cmd.append(f"-mattr={mattr}")
    proc = subprocess.run(cmd, input=asm, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or "not a recognized processor" in proc.stderr:
        raise ToolchainError(f"arm-qemu: {MCA} -mcpu={cpu} failed: {proc.stderr.strip()[-2000:]}")

    def number(name: str) -> float:
        match = re.search(rf"^{name}:\s+([0-9.]+)", proc.stdout, re.MULTILINE)
        if match is None:
            raise ToolchainError(f"arm-qemu: no '{name}' in {MCA} output")
        return float(match.group(1))

    llvm = re.search(r"LLVM version (\S+)", _compiler_id(_which(MCA)))
    return McaEstimate(
        cpu=cpu, cycles_per_iteration=number("Total Cycles") / iterations,
        instructions_per_iteration=number("Instructions") / iterations, ipc=number("IPC"),
        block_rthroughput=number("Block RThroughput"),
        label=f"modelled: llvm-mca model of {cpu}, LLVM {llvm.group(1) if llvm else '?'}")
