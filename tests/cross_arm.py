"""Cross-compiling a standalone C++ check for AArch64 and running it under qemu-user, for the NEON
kernels that cannot run on an x86 machine (Debian: g++-aarch64-linux-gnu, qemu-user)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# (-march, qemu -cpu): the AArch64 baseline, and ARMv8.2 with the dot-product extension.
TARGETS = [("armv8-a", "cortex-a57"), ("armv8.2-a+dotprod", "max")]


def tools() -> tuple[str, str]:
    """The cross compiler and qemu-aarch64, or skip the test when either is missing."""
    cxx, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
    if cxx is None or qemu is None:
        pytest.skip("needs aarch64-linux-gnu-g++ and qemu-aarch64")
    return cxx, qemu


def build_and_run(sources: list[str], march: str, cpu: str, out_dir: Path) -> subprocess.CompletedProcess:
    """Builds sources (paths from the repository root) statically for `march` and runs the result
    under qemu with `cpu`; returns the finished process (stdout as text)."""
    cxx, qemu = tools()
    exe = out_dir / f"{Path(sources[0]).stem}_{march.replace('+', '_').replace('.', '_')}"
    subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-march={march}", "-Icpp", *sources,
                    "-static", "-pthread", "-o", str(exe)], cwd=ROOT, check=True)
    return subprocess.run([qemu, "-cpu", cpu, str(exe)], capture_output=True, text=True)
