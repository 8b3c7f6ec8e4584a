#!/usr/bin/env bash
# Fresh-venv check of the portable wheels: build and repair them (scripts/build_wheels.sh: every
# wheel manylinux_2_28 or lower), then
#   x86-64:  each wheel goes into a brand-new virtualenv of each CPython it is for (cp39, cp310,
#            cp311; the stable-ABI wheel into 3.12 and 3.13), installed from the file with binaries
#            only (no compiler, no build tools: --only-binary=:all:); that environment's
#            `sinkstream --version` and `sinkstream generate` on the default model must work, and
#            the greedy text must equal llama.cpp's (tests/data/smollm2_oracle) up to its first
#            near-tie. Then the emulated x86 CPUs (scripts/check_portability.sh).
#   aarch64: Debian's arm64 CPython under qemu-aarch64 (scripts/arm64_python.sh) with the wheel of
#            its version installed by pip for that platform (binaries only), on emulated
#            cortex-a53 (no dot product: the neon kernels), cortex-a76 (dotprod) and max (i8mm):
#            run-time dispatch must pick that level, the tiny models' logits must match the NumPy
#            reference (scripts/portable_smoke.py) and the default model's greedy text must equal
#            llama.cpp's.
# Where pyenv is installed every CPython the wheels are for must be found; the script says which
# versions it checked. Last, the sdist must build and hold the sources a wheel build needs.
#
# The greedy runs turn the repeat penalty off (--repeat-penalty 1): llama.cpp's oracle is plain argmax.
#
# usage: scripts/check_wheel.sh [OUT_DIR]      (default dist/)
# env:   SINKSTREAM_REUSE_WHEELS=1  check OUT_DIR/wheelhouse as a previous run built it (no build)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
OUT=${1:-dist}
ORACLE=${SINKSTREAM_ORACLE:-tests/data/smollm2_oracle/prompts.json}
[ -f "$ORACLE" ] || { echo "no llama.cpp oracle at $ORACLE (set SINKSTREAM_ORACLE)" >&2; exit 2; }
VENVS=$(mktemp -d)
trap 'rm -rf "$VENVS"' EXIT
PROMPT="The capital of France is"
PYENV_VERSIONS="${PYENV_ROOT:-$HOME/.pyenv}/versions"
timings=()
t0=$SECONDS

[ "${SINKSTREAM_REUSE_WHEELS:-0}" = 1 ] || scripts/build_wheels.sh "$OUT"
timings+=("build + auditwheel: $((SECONDS - t0)) s")
# shellcheck source=scripts/find_python.sh
. scripts/find_python.sh

# The text of the oracle's first N greedy ids for p1, cut at its first near-tie (top-2 gap below
# GAP, default 0.05): what a correct engine prints (p1's first 14 steps are decided for both
# engines, see tests/test_oracle.py, so N stays below that).
expected_text() {  # python N [GAP]
  "$1" - "$ORACLE" "$2" "${3:-0.05}" <<'EOF'
import json, sys
import sinkstream
oracle = json.load(open(sys.argv[1]))["p1"]
ids, steps, limit, gap = oracle["greedy_ids"], oracle["greedy_step_top5"], int(sys.argv[2]), float(sys.argv[3])
decided = next((i for i, s in enumerate(steps) if s["logits"][0] - s["logits"][1] < gap), len(ids))
model = sinkstream.Model()
print(model.detokenize(ids[:min(limit, decided)]), end="")
EOF
}

same_text() {  # got want what
  if [[ -z "$2" || "$1" != "$2"* ]]; then
    printf 'FAILED: %s generated %q, llama.cpp greedy text %q\n' "$3" "$1" "$2" >&2
    exit 1
  fi
  printf 'generated %q: equals llama.cpp greedy text\n' "$1"
}

check_in_fresh_venv() {  # wheel python
  local wheel=$1 py=$2 venv
  venv="$VENVS/$(basename "$py")"
  echo "== $(basename "$wheel") in a fresh venv of $("$py" --version)"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: "$wheel"
  local version
  version=$("$venv/bin/sinkstream" --version)
  echo "$version"
  [[ "$(basename "$wheel")" == sinkstream-"${version#sinkstream }"-* ]] || { echo "version $version is not the wheel's" >&2; exit 1; }
  # The stubs and the py.typed marker are in the installed package.
  "$venv/bin/python" -c "import pathlib, sinkstream; d = pathlib.Path(sinkstream.__file__).parent; \
assert (d / '_core.pyi').is_file() and (d / 'py.typed').is_file(), 'stubs missing'"
  local n=12 got
  got=$("$venv/bin/sinkstream" generate -p "$PROMPT" -n $n --temperature 0 --repeat-penalty 1 2>"$venv/stats")
  cat "$venv/stats"
  same_text "$got" "$(expected_text "$venv/bin/python" $n)" "$(basename "$wheel") on $("$py" --version)"
}

checked=()
host_venv_python=""
for wheel in "$OUT"/wheelhouse/*x86_64.whl; do
  case "$(basename "$wheel")" in
    *-abi3-*) interpreters=(python3.12 python3.13) ;;
    *-cp39-cp39-*) interpreters=(python3.9) ;;
    *-cp310-cp310-*) interpreters=(python3.10) ;;
    *-cp311-cp311-*) interpreters=(python3.11) ;;
    *) echo "unexpected wheel $wheel" >&2; exit 1 ;;
  esac
  for name in "${interpreters[@]}"; do
    py=$(find_python "$name")
    if [ -z "$py" ]; then
      [ -d "$PYENV_VERSIONS" ] && { echo "$name is required (pyenv is here) but was not found" >&2; exit 1; }
      echo "== $name not found: $(basename "$wheel") not checked with it"
      continue
    fi
    check_in_fresh_venv "$wheel" "$py"
    checked+=("${name#python} x86_64")
    [ "$name" = python3.11 ] && host_venv_python="$VENVS/$(basename "$py")/bin/python"
  done
done
timings+=("x86-64 fresh venvs: $((SECONDS - t0)) s so far")
[ -n "$host_venv_python" ] || { echo "no CPython 3.11 venv for the emulated-CPU checks" >&2; exit 1; }

# The portability smoke test writes its tiny models with the gguf package (pure Python).
"$host_venv_python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: "gguf>=0.10"
scripts/check_portability.sh "$host_venv_python"
timings+=("x86-64 emulated CPUs: $((SECONDS - t0)) s so far")

# ---- aarch64 under qemu-aarch64 ----------------------------------------------------------------
ARM_PY=$(scripts/arm64_python.sh "$OUT/arm64-python")
arm_version=$("$ARM_PY" -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
nodot=${arm_version/./}
if [ "${arm_version#3.}" -ge 12 ]; then pattern="*-abi3-*aarch64.whl"; else pattern="*-cp$nodot-cp$nodot-*aarch64.whl"; fi
arm_wheel=$(find "$OUT/wheelhouse" -name "$pattern" | head -n 1)
[ -n "$arm_wheel" ] || { echo "no aarch64 wheel for the arm64 CPython $arm_version" >&2; exit 1; }
site="$VENVS/aarch64-site"
echo "== $(basename "$arm_wheel") for Debian's arm64 CPython $arm_version under qemu-aarch64"
# pip installs for the target platform (binaries only: numpy and the rest as aarch64 wheels): every
# manylinux tag the emulated system's glibc allows (pip does not count down from one given tag).
arm_glibc=$("$ARM_PY" -c "import platform; print(platform.libc_ver()[1].split('.')[1])")
platforms=()
for minor in $(seq 17 "$arm_glibc"); do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
"$host_venv_python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: --target "$site" \
  "${platforms[@]}" --python-version "$arm_version" --implementation cp --abi "cp$nodot" --abi abi3 --abi none "$arm_wheel"
smoke="$VENVS/smoke"
"$host_venv_python" scripts/portable_smoke.py prepare "$smoke" >/dev/null
n_arm=6  # a few tokens: each costs seconds under emulation
# The ARM levels sum in other float orders than the x86 engine the oracle tests pin down, and 8-bit
# activations turn such differences into rounding flips: on this prompt every level's logits lie
# within 0.07-0.45 of llama.cpp's (x86 scalar and AVX2 alike, NEON, SDOT), and two levels differ by
# up to 1 from each other. So only steps whose oracle top-2 gap is at least 0.5 are decided here
# (p1: the first 5; its 6th has a gap of 0.33, and the packed SDOT kernels take the other token).
want=$(expected_text "$host_venv_python" $n_arm 0.5)
arm() {  # cpu args...: the arm64 interpreter with the installed wheel on that emulated CPU
  local cpu=$1; shift
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE QEMU_CPU="$cpu" PYTHONPATH="$site" "$ARM_PY" "$@"
}
for pair in cortex-a53:neon cortex-a76:dotprod max:i8mm; do
  cpu=${pair%%:*} isa=${pair##*:}
  start=$SECONDS
  echo "== qemu-aarch64 -cpu $cpu (expects the $isa kernels)"
  arm "$cpu" -c "import pathlib, sinkstream; d = pathlib.Path(sinkstream.__file__).parent; \
assert (d / '_core.pyi').is_file() and (d / 'py.typed').is_file(), 'stubs missing'; \
from sinkstream import _core; print(sinkstream.__version__, _core.cpu_features())"
  arm "$cpu" scripts/portable_smoke.py check "$smoke" --expect-isa "$isa"
  got=$(arm "$cpu" -m sinkstream generate -p "$PROMPT" -n $n_arm --temperature 0 --repeat-penalty 1 2>"$VENVS/arm-stats")
  cat "$VENVS/arm-stats"
  same_text "$got" "$want" "aarch64 -cpu $cpu"
  echo "   ($((SECONDS - start)) s)"
done
checked+=("$arm_version aarch64 (qemu: cortex-a53, cortex-a76, max)")
timings+=("aarch64 emulated CPUs: $((SECONDS - t0)) s so far")

start=$SECONDS
"$host_venv_python" -m pip install --quiet --disable-pip-version-check build
"$host_venv_python" -m build --sdist --outdir "$OUT/sdist" . >/dev/null
sdist=$(find "$OUT/sdist" -name 'sinkstream-*.tar.gz' | head -n 1)
listing=$(tar -tzf "$sdist")
for f in CMakeLists.txt cmake/zig-toolchain.cmake cpp/ops/cpu/vec_dot_neon.inc pyproject.toml; do
  grep -q "^sinkstream-[^/]*/$f$" <<<"$listing" || { echo "FAILED: $f is not in $sdist" >&2; exit 1; }
done
echo "== sdist $(basename "$sdist") ($((SECONDS - start)) s)"

echo "wheels: all checks passed"
printf 'checked: CPython %s\n' "${checked[@]}"
for wheel in "$OUT"/wheelhouse/*aarch64.whl; do
  [ "$wheel" = "$arm_wheel" ] || echo "built, auditwheel-checked, not run (no arm64 CPython of its version here): $(basename "$wheel")"
done
printf 'time: %s\n' "${timings[@]}"
