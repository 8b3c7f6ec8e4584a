"""Static estimate of the packed-weight kernels' speed: llvm-mca's cycles per iteration of each
kernel's block loop, for a chosen CPU model. No timing, so no noise.

On a shared VM the same timed run can move by 30-50% from one process to the next (memory placement,
neighbours), which hides the 10-20% a change to a kernel's inner loop makes. llvm-mca simulates the
loop body on a model of the CPU's pipes instead: the same object gives the same figure every time.
It counts uops, ports and latencies, not cache misses or the hardware's real quirks, so use it to
compare two versions of a kernel, and confirm what it says with interleaved timed runs
(bench_matmul.py --hot). Two ways it misled on Zen 3 (znver3 model against timed runs): it charges
stack spills that the hardware nearly hides (removing every spill of the AVX2 K-quant loops took
Q4_K from 100 to 65 cycles here and changed nothing timed), and it gives VPADDSW the pipes of
VPADDW while the hardware runs it beside VPMADDUBSW on fewer (8 of each plus 8 broadcasts: 5.2
cycles against 4.0 in a microbenchmark). Loops without spills it predicted well (Q4_1's 4-token
loop: 33 cycles per 1,024 products, 77 GMAC/s timed at about 2.4 GHz).

    python benchmarks/kernel_cycles.py [--isa avx2|avx512] [--mcpu CPU] [--match Q4_1] [--source FILE]
                                       [--extra-flags="-fno-tree-reassoc ..."]

Compiles the kernel file with the flags CMakeLists.txt gives it (-O3, the ISA's -m flags), then for
each kernel instantiation (run_half<NT> / run<NT>) takes its longest loop, the block loop, up to its
first branch, and runs llvm-mca on it. Instantiations the compiler inlined into packed_tile (often
the 1- and 2-token ones) have no symbol of their own and are not listed. Prints instructions, cycles per iteration, the multiply-add
instructions in the body (VPMADDUBSW: 32 byte products per 256-bit register, VPDPBUSD: 64 per
512-bit one), products per cycle, and the stack accesses (spills show up there). Needs g++, objdump
and llvm-mca (Debian: llvm-14).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The per-file flags of CMakeLists.txt (SINKSTREAM_SIMD_SOURCES_AVX2 / _AVX512).
ISA_SOURCES = {
    "avx2": ("cpp/ops/cpu/packed_avx2.cc", ["-mavx2", "-mfma", "-mf16c"]),
    "avx512": ("cpp/ops/cpu/packed_avx512.cc",
               ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mavx2", "-mfma", "-mf16c"]),
}
# llvm-mca 14 has no Zen 4 model: Ice Lake server is the nearest with AVX-512 VNNI.
DEFAULT_MCPU = {"avx2": "znver3", "avx512": "icelake-server"}
KERNEL_SYMBOL = re.compile(r"^[0-9a-f]+ <(.*::(?:run_half|run|run_halves)<[^>]*>)\(")
TYPE_OF_KERNEL = {  # template arguments -> the GGUF type (packed_avx2.cc's avx2_packed_tile table)
    "PackedNibbles<false, false, 8, false>": "Q4_0", "PackedNibbles<false, true, 0, false>": "Q4_1",
    "PackedNibbles<true, false, 16, false>": "Q5_0", "PackedNibbles<true, true, 0, false>": "Q5_1",
    "PackedNibbles<false, false, 128, true>": "IQ4_NL", "PackedQ8_0": "Q8_0",
    "PackedQ45K<false>": "Q4_K", "PackedQ45K<true>": "Q5_K", "PackedQ6K": "Q6_K",
    "PackedQ23K<false>": "Q2_K", "PackedQ23K<true>": "Q3_K",
}


def find_tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    sys.exit(f"kernel_cycles.py: none of {', '.join(names)} is on PATH (llvm-mca: Debian's llvm-14)")


def disassemble(source: Path, flags: list[str], workdir: Path) -> dict[str, list[tuple[int, str]]]:
    """Each kernel symbol's instructions (address, text) from the compiled source."""
    obj = workdir / "kernels.o"
    # Quoted includes look next to the source first: a copy elsewhere can bring its own versions of
    # the headers it includes (ops/cpu/... beside it); the rest come from this checkout.
    compiled = subprocess.run([find_tool("g++"), "-O3", "-DNDEBUG", "-std=c++17", "-fPIC", f"-I{ROOT / 'cpp'}",
                               *flags, "-c", str(source), "-o", str(obj)], capture_output=True, text=True)
    if compiled.returncode != 0:
        sys.exit(f"kernel_cycles.py: {source} does not compile:\n{compiled.stderr[-3000:]}")
    listing = subprocess.run([find_tool("objdump"), "-d", "-C", "--no-show-raw-insn", str(obj)],
                             check=True, capture_output=True, text=True).stdout
    functions: dict[str, list[tuple[int, str]]] = {}
    current = None
    for line in listing.splitlines():
        header = KERNEL_SYMBOL.match(line)
        if header or re.match(r"^[0-9a-f]+ <", line):
            current = header.group(1) if header else None
            if current:
                functions[current] = []
            continue
        instruction = re.match(r"^\s+([0-9a-f]+):\s+(.*)$", line)
        if current and instruction:
            functions[current].append((int(instruction.group(1), 16), instruction.group(2).strip()))
    return functions


def block_loop_body(instructions: list[tuple[int, str]]) -> list[str]:
    """The longest loop's straight-line start: from the target of the back edge spanning the most
    instructions to the first branch after at least 20 instructions (the block loop's work; the
    prefetch loop and the loop control come after it)."""
    index_of = {address: i for i, (address, _) in enumerate(instructions)}
    longest = None
    for i, (address, text) in enumerate(instructions):
        jump = re.match(r"j\w+\s+([0-9a-f]+) <", text)
        if jump and int(jump.group(1), 16) < address and int(jump.group(1), 16) in index_of:
            start = index_of[int(jump.group(1), 16)]
            if longest is None or i - start > longest[1] - longest[0]:
                longest = (start, i)
    if longest is None:
        return []
    body: list[str] = []
    for _, text in instructions[longest[0]:longest[1] + 1]:
        if re.match(r"j\w+\s", text):
            if len(body) > 20:
                break
            continue
        if text.startswith(("nop", "cs nop", "data16", "xchg   %ax,%ax")):
            continue
        body.append(re.sub(r"\s*#.*", "", text))
    return body


def cycles_per_iteration(body: list[str], mcpu: str, workdir: Path) -> float:
    listing = workdir / "body.s"
    listing.write_text("\n".join(body) + "\n")
    iterations = 200
    report = subprocess.run([find_tool("llvm-mca", "llvm-mca-14"), f"-mcpu={mcpu}", f"-iterations={iterations}",
                             str(listing)], capture_output=True, text=True)
    if report.returncode != 0:
        sys.exit(f"kernel_cycles.py: llvm-mca -mcpu={mcpu} failed (does that CPU model have these instructions?):\n"
                 f"{report.stderr[-2000:]}")
    return int(re.search(r"Total Cycles:\s+(\d+)", report.stdout).group(1)) / iterations


def kernel_label(symbol: str) -> str:
    for template, type_name in TYPE_OF_KERNEL.items():
        if template in symbol:  # the kernel's own run_half, or Halves<kernel>::run (run_half inlined)
            return f"{type_name:7s}{symbol.split('::')[-1]}"
    return symbol.split("(anonymous namespace)::")[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mcpu", help="llvm-mca's CPU model (default: znver3 for avx2, icelake-server for avx512; "
                                       "znver2, skylake-avx512, ...)")
    parser.add_argument("--isa", choices=sorted(ISA_SOURCES), default="avx2")
    parser.add_argument("--match", default="", help="only kernels whose label contains this (say Q4_1 or <4>)")
    parser.add_argument("--source", type=Path, help="another version of the ISA's kernel file, to compare")
    parser.add_argument("--extra-flags", default="", help="compiler flags added after CMake's, to compare: --extra-flags=\"-fa -fb\" "
                             "(with =, since they start with a dash)")
    args = parser.parse_args()
    default_source, flags = ISA_SOURCES[args.isa]
    args.mcpu = args.mcpu or DEFAULT_MCPU[args.isa]
    source = args.source or ROOT / default_source
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        functions = disassemble(source, flags + args.extra_flags.split(), workdir)
        print(f"{source} ({args.isa}{', ' + args.extra_flags if args.extra_flags else ''}), "
              f"llvm-mca -mcpu={args.mcpu}: the block loop of each kernel")
        print(f"{'kernel':28s} {'instr':>6s} {'cycles':>7s} {'madd':>5s} {'products/cycle':>15s} {'stack':>6s}")
        for symbol in sorted(functions, key=kernel_label):
            label = kernel_label(symbol)
            if args.match not in label:
                continue
            body = block_loop_body(functions[symbol])
            if not body:
                continue
            cycles = cycles_per_iteration(body, args.mcpu, workdir)
            maddubs = sum("vpmaddubsw" in line for line in body)
            dpbusd = sum("vpdpbusd" in line for line in body)
            products = 32 * maddubs + 64 * dpbusd
            stack = sum("(%rsp)" in line for line in body)
            print(f"{label:28s} {len(body):6d} {cycles:7.1f} {maddubs + dpbusd:5d} {products / cycles:15.1f} {stack:6d}")


if __name__ == "__main__":
    main()
