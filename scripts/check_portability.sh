#!/usr/bin/env bash
# Proof that an installed sinkstream runs on CPUs other than this one (the wheels issue, part 2):
# under qemu-user's emulated CPUs, run-time dispatch must pick the right kernel level and the
# engine must give the same logits and text as the native run of that level, and logits that
# match the float64 NumPy reference (scripts/portable_smoke.py):
#   -cpu Haswell  AVX2+FMA+F16C, no AVX-512 -> the avx2 kernels
#   -cpu Nehalem  SSE4.2, no AVX at all     -> the scalar kernels (must still be correct)
# plus greedy generation on the default model under each, against the native run.
#
# usage: scripts/check_portability.sh [PYTHON]   (an interpreter with sinkstream, numpy and gguf
#        installed; default python3). Needs qemu-x86_64 (Debian's qemu-user): installed with
#        apt-get when missing and possible. On a non-x86-64 host it only runs the native check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(command -v "${1:-python3}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PY" scripts/portable_smoke.py prepare "$WORK/smoke"
if [ "$(uname -m)" != "x86_64" ]; then
  echo "not an x86-64 host: native check only"
  exec "$PY" scripts/portable_smoke.py check "$WORK/smoke"
fi
if ! command -v qemu-x86_64 >/dev/null && command -v apt-get >/dev/null; then
  apt-get install -y -qq qemu-user >/dev/null
fi
command -v qemu-x86_64 >/dev/null || { echo "qemu-x86_64 not found (apt-get install qemu-user)" >&2; exit 2; }

PROMPT="The capital of France is"
N_GENERATE=12
# OPENBLAS_CORETYPE (set on some machines here for old OpenBLAS builds) forces numpy's OpenBLAS to
# its Haswell kernels, which die with SIGILL on a CPU without AVX: the emulated runs go without it.
emulated() {
  local cpu=$1; shift
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE qemu-x86_64 -cpu "$cpu" "$@" 2> >(grep -v "TCG doesn't support" >&2)
}

for pair in Haswell:avx2 Nehalem:scalar; do
  cpu=${pair%%:*} isa=${pair##*:}
  echo "== qemu-x86_64 -cpu $cpu (expects the $isa kernels)"
  emulated "$cpu" "$PY" scripts/portable_smoke.py check "$WORK/smoke" --expect-isa "$isa"
  native=$(SINKSTREAM_ISA=$isa "$PY" -m sinkstream generate -p "$PROMPT" -n $N_GENERATE --temperature 0 2>/dev/null)
  got=$(emulated "$cpu" "$PY" -m sinkstream generate -p "$PROMPT" -n $N_GENERATE --temperature 0 2>/dev/null)
  if [ "$got" != "$native" ] || [ -z "$got" ]; then
    printf 'FAILED: default model under -cpu %s: %q, native %s run: %q\n' "$cpu" "$got" "$isa" "$native" >&2
    exit 1
  fi
  printf 'default model under -cpu %s: %q (equals the native %s run)\n' "$cpu" "$got" "$isa"
done
echo "portability: all emulated CPUs passed"
