#!/usr/bin/env bash
# The CUDA backend builds: configures with -DSINKSTREAM_CUDA=ON into build/cuda and builds the engine
# and the Python module (nvcc compiles cpp/ops/cuda/cuda_ops.cu, the module links it: compile AND
# link), imports the module (every symbol resolves, the static CUDA runtime loads without a driver),
# then runs tests/test_cuda.py and tests/test_cuda_forward.py against it. Its GPU tests run only where a GPU is present
# (`nvidia-smi -L` works); elsewhere they skip and the no-device branch is what gets tested.
# Exits non-zero on any build, import or test failure.
#
# usage: scripts/check_cuda_build.sh      (from any directory; uses the `python3` on PATH, which
#                                          needs numpy, gguf and pytest for the tests, and must not
#                                          have sinkstream installed in editable mode: PYTHON=...)
# env:   SINKSTREAM_CUDA_BUILD (default build/cuda), CMAKE_CUDA_ARCHITECTURES (default: CMakeLists'
#        list, e.g. "90" for one GPU generation, faster), JOBS (default: min(2, nproc)),
#        CUDACXX (nvcc to use; default /usr/local/cuda/bin/nvcc if present, else nvcc on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${SINKSTREAM_CUDA_BUILD:-build/cuda}
PYTHON=${PYTHON:-python3}
nproc_=$(nproc 2>/dev/null || echo 2)
JOBS=${JOBS:-$(( nproc_ < 2 ? nproc_ : 2 ))}
LOG="$BUILD/check_cuda_build.log"

# nanobind is a build dependency of the module (pip's isolated builds do not leave it behind).
"$PYTHON" -c "import nanobind" 2>/dev/null || "$PYTHON" -m pip install --quiet "nanobind>=2.4"
# cmake (and ninja) from pip when the machine has none: pip's isolated builds do not leave theirs.
command -v cmake >/dev/null || "$PYTHON" -m pip install --quiet cmake ninja

if [ -z "${CUDACXX:-}" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then CUDACXX=/usr/local/cuda/bin/nvcc; else CUDACXX=$(command -v nvcc || true); fi
fi
[ -n "$CUDACXX" ] && [ -x "$CUDACXX" ] || { echo "check_cuda_build: nvcc not found (install the CUDA toolkit or set CUDACXX)" >&2; exit 2; }
export CUDACXX
echo "== $("$CUDACXX" --version | grep -m1 -o 'release [0-9.]*, V[0-9.]*') ($CUDACXX)"

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
arch_args=()
[ -n "${CMAKE_CUDA_ARCHITECTURES:-}" ] && arch_args=(-DCMAKE_CUDA_ARCHITECTURES="$CMAKE_CUDA_ARCHITECTURES")

mkdir -p "$BUILD"
# Full logs go to $LOG; the console gets a summary, or the log's tail when a step fails.
run_logged() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "check_cuda_build: FAILED: $*" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}
: >"$LOG"
start=$(date +%s)
echo "== configure ($BUILD)"
run_logged cmake -S . -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DSINKSTREAM_CUDA=ON -DSINKSTREAM_PYTHON=ON -DSINKSTREAM_BUILD_TESTS=OFF \
  -DPython_EXECUTABLE="$(command -v "$PYTHON")" "${arch_args[@]}"
grep -m1 "sinkstream: CUDA backend ON" "$LOG" | sed 's/^-- /   /'
echo "== build (engine + sinkstream_cuda + _core, $JOBS jobs)"
run_logged cmake --build "$BUILD" --parallel "$JOBS"
echo "   built in $(( $(date +%s) - start )) s: $(ls "$BUILD"/_core*.so)"

# A package directory: the Python sources plus the CUDA-enabled _core module.
# shellcheck source=scripts/package_dir.sh
. scripts/package_dir.sh
make_package_dir "$BUILD"
PKG="$BUILD/python"

echo "== import"
PYTHONPATH="$PKG" "$PYTHON" - "$PKG" <<'EOF'
import os, sys
import sinkstream._core as c
pkg = os.path.abspath(sys.argv[1])
assert os.path.abspath(c.__file__).startswith(pkg + os.sep), (
    f"imported {c.__file__}, not the build in {pkg} (an editable install of sinkstream in this Python wins "
    "over PYTHONPATH: set PYTHON to an interpreter without sinkstream installed)")
assert c.cuda_built(), "the module in the CUDA build says cuda_built() is False"
devices = c.cuda_devices()
print(f"   cuda_built() = True, cuda_available() = {c.cuda_available()}, devices: "
      + (", ".join(f"{d['name']} (sm_{d['compute_capability'][0]}{d['compute_capability'][1]})" for d in devices) or "none"))
EOF

if nvidia-smi -L >/dev/null 2>&1; then
  echo "== tests/test_cuda*.py (GPU present: $(nvidia-smi -L | head -n 1))"
else
  echo "== tests/test_cuda*.py (no GPU: the GPU tests skip)"
fi
# scripts/asan_pytest.py imports sinkstream from $PKG (never an installed copy) and checks it did.
"$PYTHON" scripts/asan_pytest.py "$PKG" -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_cuda_forward.py
echo "== CUDA build OK"
