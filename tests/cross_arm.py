"""Cross-compiling a standalone C++ check for AArch64 and running it under qemu-user, for the NEON
kernels that cannot run on an x86 machine (Debian: g++-aarch64-linux-gnu, qemu-user); and building
the same check natively, to compare the two."""
from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# (qemu -cpu, the kernel level run-time dispatch must pick there): the AArch64 baseline (Cortex-A53,
# a Pi 3/4 class core without the dot product), SDOT (Cortex-A76: Pi 5, Orin's A78 class) and
# SMMLA (qemu's `max`, which has every extension it emulates, i8mm included).
TARGETS = [("cortex-a53", "neon"), ("cortex-a76", "dotprod"), ("max", "i8mm")]
# Everything is compiled for the baseline (armv8-a) except these files, with CMakeLists.txt's flags.
FILE_FLAGS = {
    "cpp/ops/cpu/vec_dot_dotprod.cc": ["-march=armv8.2-a+dotprod"],
    "cpp/ops/cpu/packed_dotprod.cc": ["-march=armv8.2-a+dotprod"],
    "cpp/ops/cpu/vec_dot_i8mm.cc": ["-march=armv8.2-a+dotprod+i8mm"],
}


def tools() -> tuple[str, str]:
    """The cross compiler and qemu-aarch64, or skip the test when either is missing."""
    cxx, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
    if cxx is None or qemu is None:
        pytest.skip("needs aarch64-linux-gnu-g++ and qemu-aarch64")
    return cxx, qemu


def compile_and_link(cxx: str, sources: list[str], out_dir: Path, flags: list[str], file_flags: dict[str, list[str]],
                     link_flags: list[str]) -> Path:
    """Compiles sources (paths from the repository root) with flags plus file_flags' own, and links
    them (once per out_dir); returns the executable."""
    exe = out_dir / Path(sources[0]).stem
    if exe.exists():
        return exe
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = []
    for source in sources:
        obj = out_dir / (source.replace("/", "_") + ".o")
        subprocess.run([cxx, "-std=c++17", "-O1", *flags, *file_flags.get(source, []), "-Icpp", "-c", source, "-o",
                        str(obj)], cwd=ROOT, check=True)
        objects.append(str(obj))
    subprocess.run([cxx, *objects, *link_flags, "-pthread", "-o", str(exe)], cwd=ROOT, check=True)
    return exe


def build(sources: list[str], out_dir: Path) -> Path:
    """Builds sources statically for the AArch64 baseline, the files of FILE_FLAGS with their
    extensions (once per out_dir); returns the executable."""
    cxx, _ = tools()
    return compile_and_link(cxx, sources, out_dir, ["-Wall", "-Wextra", "-Werror", "-march=armv8-a"], FILE_FLAGS,
                            ["-static"])


# The same sources built natively on an x86-64 host, to compare with what runs under qemu: the
# x86 SIMD files with CMakeLists.txt's flags.
X86_FILE_FLAGS = {
    "cpp/ops/cpu/vec_dot_avx2.cc": ["-mavx2", "-mfma", "-mf16c"],
    "cpp/ops/cpu/packed_avx2.cc": ["-mavx2", "-mfma", "-mf16c"],
    **{f"cpp/ops/cpu/{name}.cc": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mavx2",
                                  "-mfma", "-mf16c"] for name in ("vec_dot_avx512", "packed_avx512")},
}


def build_native(sources: list[str], out_dir: Path) -> Path:
    """build()'s executable for this x86-64 host (skips the test elsewhere or without g++)."""
    cxx = shutil.which("g++")
    if cxx is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("needs g++ on an x86-64 host")
    # (no -Werror: GCC 12's own AVX-512 headers warn of an uninitialized variable at -O1)
    return compile_and_link(cxx, sources, out_dir, [], X86_FILE_FLAGS, [])


def build_and_run(sources: list[str], cpu: str, out_dir: Path) -> subprocess.CompletedProcess:
    """build(), then runs the result under qemu with `cpu`; returns the finished process (stdout as text)."""
    exe = build(sources, out_dir)
    return subprocess.run([tools()[1], "-cpu", cpu, str(exe)], capture_output=True, text=True)
