"""Every file the ARM target's build and run read must come from a Debian package the Makefile installs.

``libc6-dev-arm64-cross`` (the aarch64 libc headers and ``libc.a``) was once missing from the Makefile's
``APT_PACKAGES``: it was installed by chance on the machines where the suite passed, and on a fresh
machine every ARM test failed.  To keep that class of bug from hiding, the tools are asked which files
they read, and dpkg which package owns each one:

- the cross compiler: ``-M`` over the runtime's sources with the flags the target builds them with
  (headers), and, for a tiny program built with the same flags, the programs its driver runs (``-v``:
  cc1, as, collect2 and its LTO plugin; ``-print-prog-name`` for as and ld) and every file the linker
  opens (``-Wl,-t``: crt files, ``libc.a``, ``libgcc.a``);
- the host gcc the same way, for the qemu counting plugin (``insncount.c``, ``-O2 -shared -fPIC``);
- ``qemu-aarch64`` and the shared libraries it loads (``ldd``); ``verilator``, ``g++`` and ``make``
  where installed; the interpreter of any of these that is a script.

Each path is resolved (``realpath``; on a merged /usr, the ``/lib`` and ``/usr/lib`` spellings are both
tried, as dpkg lists a file where its package shipped it) and must be owned by a package in the closure,
under ``apt-cache depends --recurse`` with Depends and PreDepends only (what ``apt-get install
--no-install-recommends`` pulls in; every alternative of an ``a | b`` dependency counts), of
``APT_PACKAGES`` or of the Essential packages (on every Debian system, so nobody declares them:
``perl-base``, ``coreutils``, ...).  A file no package owns (``/usr/local``, a hand-built tool) fails as
well, since a fresh machine lacks it; the repository's own sources are exempt.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAKEFILE = REPO / "Makefile"
APT_LISTS = Path("/var/lib/apt/lists")
#: ``APT_PACKAGES`` before ``libc6-dev-arm64-cross`` was added: the check must catch it.
OLD_APT_PACKAGES = ("dataset-fashion-mnist", "qemu-user", "gcc-aarch64-linux-gnu", "gcc", "libc6-dev", "llvm-14")
#: What ``--no-install-recommends`` installs: Depends and PreDepends, recursively.
DEPENDS_ONLY = ("--recurse", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
                "--no-replaces", "--no-enhances")
#: Run where present (the FPGA RTL cross-check needs them); checked like the ARM tools.
OPTIONAL_TOOLS = ("verilator", "verilator_bin", "g++", "make")
FIX_HINT = ("add the package named above to APT_PACKAGES in the Makefile and run `make apt` (a file no package "
            "owns must come from a package too: `apt-file search NAME` finds it)")
MISSING_HINT = ("find the package that ships the missing file (`apt-file search NAME`, or `dpkg -S FILE` where it "
                "is installed), add it to APT_PACKAGES in the Makefile and run `make apt`")


@dataclass(frozen=True)
class Input:
    """A file a tool read, as the tool named it, and why it was read."""

    path: str
    why: str


@dataclass(frozen=True)
class Problem:
    """An input that a fresh machine after ``make apt`` would not have."""

    path: str                #: resolved path
    why: str
    owners: frozenset[str]   #: packages owning it (empty: no package does)

    def __str__(self) -> str:
        if not self.owners:
            return f"{self.path} ({self.why}): owned by no Debian package (installed by hand?)"
        return (f"{self.path} ({self.why}): from {', '.join(sorted(self.owners))}, which is neither in "
                "APT_PACKAGES nor a dependency of one")


# ---- what the Makefile installs -------------------------------------------------------------------


def makefile_packages(makefile: Path = MAKEFILE) -> tuple[str, ...]:
    """The names in the Makefile's ``APT_PACKAGES`` assignment (continuation lines joined, comments cut)."""
    text = makefile.read_text().replace("\\\n", " ")
    match = re.search(r"^APT_PACKAGES\s*[:?]?=([^#\n]*)", text, re.MULTILINE)
    if match is None or not match.group(1).split():
        pytest.fail(f"no APT_PACKAGES assignment in {makefile}")
    return tuple(match.group(1).split())


@functools.lru_cache(maxsize=None)
def dependency_closure(packages: tuple[str, ...]) -> frozenset[str]:
    """``packages`` and everything they depend or pre-depend on, recursively, from apt's package lists."""
    if not any(APT_LISTS.glob("*_Packages*")):
        pytest.fail(f"apt's package lists are empty (no *_Packages files in {APT_LISTS}), so dependencies "
                    "cannot be resolved: run `apt-get update` (`make apt` does)")
    proc = subprocess.run(["apt-cache", "depends", *DEPENDS_ONLY, *packages], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"apt-cache depends {' '.join(packages)} failed: {proc.stderr.strip()}")
    names = set()
    for line in proc.stdout.splitlines():
        name = line.strip()
        # column 0: a package reached; 4 spaces: a provider of the virtual package above it
        if name and not name.startswith("<") and (line == name or line.startswith("    ")):
            names.add(name.split(":")[0])
    unknown = sorted(set(packages) - names)
    if unknown:
        pytest.fail(f"apt-cache knows no package {', '.join(unknown)} (a typo in APT_PACKAGES, or run "
                    "`apt-get update`)")
    return frozenset(names)


# ---- who owns a file ------------------------------------------------------------------------------


def _usrmerge_aliases(path: str) -> list[str]:
    """``path`` and its other spelling on a merged /usr (/lib/x <-> /usr/lib/x): dpkg knows only one."""
    spellings = [path]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        short, long = f"/{top}/", f"/usr/{top}/"
        if not os.path.islink(f"/{top}") or os.path.realpath(f"/{top}") != f"/usr/{top}":
            continue
        if path.startswith(long):
            spellings.append(short + path[len(long):])
        elif path.startswith(short):
            spellings.append(long + path[len(short):])
    return spellings


@functools.lru_cache(maxsize=None)
def dpkg_owners(paths: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """Owning packages (architecture qualifiers dropped) of each path dpkg knows, in one ``dpkg -S`` call."""
    proc = subprocess.run(["dpkg", "-S", *paths], capture_output=True, text=True, timeout=300)
    if proc.returncode not in (0, 1):  # 1: some path has no owner, which the caller reports
        pytest.fail(f"dpkg -S failed: {proc.stderr.strip()[-2000:]}")
    owners: dict[str, frozenset[str]] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("diversion by "):
            continue
        packages, sep, path = line.partition(": ")
        if sep:
            owners[path] = frozenset(p.strip().split(":")[0] for p in packages.split(","))
    return owners


@functools.lru_cache(maxsize=None)
def essential_packages() -> tuple[str, ...]:
    """The installed packages marked Essential: on every Debian system, so nobody declares them."""
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Essential}\t${db:Status-Status}\n"],
                          capture_output=True, text=True, timeout=60, check=True)
    rows = (line.split("\t") for line in proc.stdout.splitlines())
    return tuple(sorted({row[0] for row in rows if row[1:] == ["yes", "installed"]}))


def find_unpackaged(inputs: list[Input], packages: tuple[str, ...]) -> list[Problem]:
    """Inputs that neither ``packages`` (with the Essential set) nor their dependencies install.

    The resolved file is checked, and the path as named too where that is a symlink (a
    ``/usr/local/bin`` link to a packaged binary is still missing on a fresh machine).  The
    repository's own files are exempt.
    """
    closure = dependency_closure(tuple(packages)) | dependency_closure(essential_packages())
    checks: dict[str, str] = {}
    for item in inputs:
        real = os.path.realpath(item.path)
        if Path(real).is_relative_to(REPO):
            continue
        checks.setdefault(real, item.why)
        named = os.path.abspath(item.path)
        if os.path.islink(named):
            checks.setdefault(named, f"{item.why}, symlink")
    spellings = {path: _usrmerge_aliases(path) for path in checks}
    owners = dpkg_owners(tuple(sorted({s for group in spellings.values() for s in group})))
    problems = []
    for path, why in checks.items():
        owned_by = frozenset().union(*(owners.get(s, frozenset()) for s in spellings[path]))
        if not owned_by & closure:
            problems.append(Problem(path, why, owned_by))
    return sorted(problems, key=lambda p: p.path)


def report(problems: list[Problem], packages: tuple[str, ...]) -> str:
    """One line per owning package (a count and an example) rather than hundreds of header lines."""
    groups: dict[frozenset[str], list[Problem]] = defaultdict(list)
    for problem in problems:
        groups[problem.owners].append(problem)
    lines = [f"{len(problems)} files the ARM target reads would be missing after `make apt`: they come from "
             f"packages that are neither in APT_PACKAGES ({' '.join(packages)}) nor a dependency of one:"]
    for owners, group in groups.items():
        who = ", ".join(sorted(owners)) or "owned by no Debian package (installed by hand?)"
        lines.append(f"  {who}: {len(group)} file(s), e.g. {group[0].path} ({group[0].why})")
    lines.append(f"Fix: {FIX_HINT}.")
    return "\n".join(lines)


# ---- what the tools read --------------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(cwd), "LC_ALL": "C"})
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "error" in line] or proc.stderr.splitlines()
        pytest.fail(f"{what}: `{' '.join(cmd)}` failed: {' | '.join(errors[:3])[:600]}\n"
                    f"A file the build needs is not installed: {MISSING_HINT}.")
    return proc


def _make_deps(text: str, cwd: Path) -> list[str]:
    """The prerequisites of every rule in ``gcc -M`` output."""
    paths = []
    for rule in text.replace("\\\n", " ").splitlines():
        _, _, deps = rule.partition(": ")
        paths += [str(cwd / p) for p in deps.split()]
    return paths


def compiler_inputs(cc: str, flags: tuple[str, ...], sources: tuple[Path, ...], what: str,
                    work: Path) -> list[Input]:
    """Headers of ``sources`` and the driver's programs and link inputs for a program built with ``flags``."""
    inputs = [Input(shutil.which(cc) or cc, f"{what}: compiler driver")]
    proc = _run([cc, *flags, "-M", *map(str, sources)], work, f"{what}: listing headers")
    inputs += [Input(p, f"{what}: header") for p in _make_deps(proc.stdout, work)]
    (work / "probe.c").write_text("int main(void) { return 0; }\n")
    proc = _run([cc, *flags, "-v", "-Wl,-t", "-o", "probe", "probe.c"], work, f"{what}: linking a probe")
    for token in (proc.stdout + "\n" + proc.stderr).split():
        path = token.strip("'\"").rpartition("=")[2]  # also -plugin-opt=/path/lto-wrapper
        if path.startswith("/") and os.path.isfile(path) and not Path(path).resolve().is_relative_to(work):
            inputs.append(Input(path, f"{what}: program or link input"))
    for prog in ("as", "ld"):
        name = subprocess.run([cc, f"-print-prog-name={prog}"], capture_output=True, text=True,
                              timeout=60).stdout.strip()
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.path.isfile(path):
            inputs.append(Input(path, f"{what}: {prog}"))
    return inputs


def _shared_libraries(binary: str) -> list[str]:
    """What ``ldd`` says ``binary`` loads (nothing for a static one)."""
    proc = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=60)
    return re.findall(r"(?:=> |^\s*)(/\S+) \(", proc.stdout, re.MULTILINE) if proc.returncode == 0 else []


def _interpreter(path: str) -> str | None:
    """The ``#!`` interpreter of a script (``/usr/bin/perl`` for verilator), else None."""
    with open(path, "rb") as fh:
        head = fh.read(256)
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n")[0].split()
    return words[0].decode() if words else None


@functools.lru_cache(maxsize=None)
def build_inputs() -> tuple[Input, ...]:
    """Every file a build of the ARM runtime and of the qemu plugin, and a counted run, read here."""
    from mpqbench.plugins.arm_qemu import target, toolchain

    with tempfile.TemporaryDirectory(prefix="mpqbench-packaging-") as tmp:
        work = Path(tmp)
        inputs = compiler_inputs(toolchain.CROSS_CC, tuple(target.RUNTIME_FLAGS), tuple(target.RUNTIME_SOURCES),
                                 "ARM runtime", work)
        inputs += compiler_inputs(toolchain.HOST_CC, tuple(toolchain.PLUGIN_FLAGS), (toolchain.PLUGIN_SOURCE,),
                                  "qemu plugin", work)
    qemu = shutil.which(toolchain.QEMU)
    inputs += [Input(qemu, "qemu binary"), *(Input(lib, "qemu shared library") for lib in _shared_libraries(qemu))]
    for tool in OPTIONAL_TOOLS:
        if path := shutil.which(tool):
            inputs.append(Input(path, tool))
            if interpreter := _interpreter(path):
                inputs.append(Input(interpreter, f"interpreter of {tool}"))
    return tuple(inputs)


# ---- tests ----------------------------------------------------------------------------------------


def _require_debian() -> None:
    missing = [tool for tool in ("dpkg", "apt-cache") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not a Debian system ({' and '.join(missing)} not found): package ownership is not checked")


@pytest.fixture(scope="module")
def inputs() -> tuple[Input, ...]:
    from mpqbench.plugins.arm_qemu import toolchain

    _require_debian()
    for tool in (toolchain.CROSS_CC, toolchain.QEMU, toolchain.HOST_CC):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (`make apt` installs it): nothing to check")
    return build_inputs()


def test_every_file_the_arm_target_reads_is_installed_by_the_makefile(inputs):
    packages = makefile_packages()
    problems = find_unpackaged(list(inputs), packages)
    assert not problems, report(problems, packages)


def test_the_probe_sees_the_files_that_matter(inputs):
    """Guards the check itself: an empty or partial probe would pass vacuously."""
    resolved = {os.path.realpath(i.path) for i in inputs}
    for suffix in ("-linux-gnu/include/stdio.h", "/bits/libc-header-start.h", "/libc.a", "/crt1.o", "/cc1",
                   "/crtbeginS.o"):
        assert any(p.endswith(suffix) for p in resolved), f"no *{suffix} among the {len(resolved)} inputs"
    assert os.path.realpath(shutil.which("qemu-aarch64")) in resolved
    assert any(Path(p).is_relative_to(REPO) for p in resolved), "the runtime's own sources were not listed"


def test_the_makefile_before_the_fix_is_caught(inputs):
    """With ``APT_PACKAGES`` as it was, the aarch64 libc headers and ``libc.a`` are reported; cc1 is not."""
    problems = find_unpackaged(list(inputs), OLD_APT_PACKAGES)
    from_cross_libc = {p.path for p in problems if "libc6-dev-arm64-cross" in p.owners}
    for suffix in ("/include/stdio.h", "/include/bits/libc-header-start.h", "/lib/libc.a", "/lib/crt1.o"):
        assert any(p.endswith(suffix) for p in from_cross_libc), f"*{suffix} not reported with the old list"
    assert not [p for p in problems if p.path.endswith("/cc1")], "cc1 comes from the old list's dependencies"
    assert "libc6-dev-arm64-cross" in report(problems, OLD_APT_PACKAGES)


def test_a_file_no_package_owns_is_reported_and_repository_files_are_not(tmp_path):
    _require_debian()
    stray = tmp_path / "hand-built-tool"
    stray.write_text("#!/bin/sh\n")
    own = REPO / "plugins" / "arm_qemu" / "runtime.c"
    problems = find_unpackaged([Input(str(stray), "probe"), Input(str(own), "source")], makefile_packages())
    assert [(p.path, p.owners) for p in problems] == [(os.path.realpath(stray), frozenset())]
    assert "owned by no Debian package" in str(problems[0])


def test_makefile_packages_parses_continuations_and_comments(tmp_path):
    makefile = tmp_path / "Makefile"
    makefile.write_text("X := 1\nAPT_PACKAGES := a b \\\n\tc  # not-a-package\nY := 2\n")
    assert makefile_packages(makefile) == ("a", "b", "c")
    assert "libc6-dev-arm64-cross" in makefile_packages()


def test_empty_package_lists_fail_with_the_command_that_fixes_them(tmp_path, monkeypatch):
    _require_debian()
    monkeypatch.setattr(sys.modules[__name__], "APT_LISTS", tmp_path)
    with pytest.raises(pytest.fail.Exception, match=r"lists are empty .*run `apt-get update`"):
        dependency_closure.__wrapped__(("make",))
