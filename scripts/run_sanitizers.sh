#!/usr/bin/env bash
# ASan + UBSan run (the robustness issue, part 2): builds the engine, the C++ unit tests and the
# Python module with SINKSTREAM_SANITIZE=ON (GCC) into build/asan, runs ctest, then a fast pytest
# subset against the sanitized module with the ASan runtime preloaded into Python.
# Any sanitizer report fails the run (-fno-sanitize-recover=all, halt_on_error=1).
#
# usage: scripts/run_sanitizers.sh            (from any directory; uses the `python3` on PATH,
#                                              which needs numpy, gguf, pytest and jinja2)
# env:   SINKSTREAM_ASAN_BUILD (default build/asan), PYTEST_ARGS (extra pytest arguments),
#        SINKSTREAM_ASAN_TESTS (test paths replacing the fast subset, e.g. "tests" with
#        PYTEST_ARGS='-m "not slow"' for everything: ~90 s more on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${SINKSTREAM_ASAN_BUILD:-build/asan}
PYTHON=${PYTHON:-python3}
PYTEST_SUBSET=(tests/test_gguf_malformed.py tests/test_streaming_invariants.py tests/test_forward_reference.py
               tests/test_fuzz_regressions.py tests/test_family_streaming.py tests/test_session_state.py)
if [ -n "${SINKSTREAM_ASAN_TESTS:-}" ]; then read -r -a PYTEST_SUBSET <<<"$SINKSTREAM_ASAN_TESTS"; fi
eval "extra_args=(${PYTEST_ARGS:-})"  # shell words, so PYTEST_ARGS='-m "not slow"' keeps its quotes

# nanobind is a build dependency of the module (pip's isolated builds do not leave it behind).
"$PYTHON" -c "import nanobind" 2>/dev/null || "$PYTHON" -m pip install --quiet "nanobind>=2.4"
# cmake (and ninja) from pip when the machine has none: pip's isolated builds do not leave theirs.
command -v cmake >/dev/null || "$PYTHON" -m pip install --quiet cmake ninja
LIBASAN=$(gcc -print-file-name=libasan.so)
[ -e "$LIBASAN" ] || { echo "libasan.so not found (install gcc's libasan)" >&2; exit 2; }

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER=g++ \
  -DSINKSTREAM_SANITIZE=ON -DSINKSTREAM_BUILD_TESTS=ON -DSINKSTREAM_PYTHON=ON \
  -DPython_EXECUTABLE="$(command -v "$PYTHON")"
cmake --build "$BUILD" --parallel "$(nproc)"

# halt_on_error + print_stacktrace: the first UBSan report stops the process with a stack.
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
echo "== ctest (ASan+UBSan, leak checking on)"
ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1 \
  ctest --test-dir "$BUILD" --output-on-failure

# A package directory: the Python sources plus the sanitized _core module.
# shellcheck source=scripts/package_dir.sh
. scripts/package_dir.sh
make_package_dir "$BUILD"
PKG="$BUILD/python"

# The interpreter is not instrumented, so the ASan runtime must be loaded first (LD_PRELOAD).
# libstdc++ is preloaded too: ASan intercepts __cxa_throw when it starts, and Python only loads
# libstdc++ later with the module, which leaves the interceptor without its target (the first C++
# exception then dies in "CHECK failed: ... real___cxa_throw").
# Python keeps objects alive until exit by design: leak reports there are noise, not bugs.
# --capture=sys: pytest must not capture fd 2, or a sanitizer report vanishes with the process.
echo "== pytest subset against the sanitized module"
LD_PRELOAD="$LIBASAN $(gcc -print-file-name=libstdc++.so)" \
ASAN_OPTIONS=detect_leaks=0 \
  "$PYTHON" scripts/asan_pytest.py "$PKG" -q -p no:cacheprovider --capture=sys "${PYTEST_SUBSET[@]}" "${extra_args[@]}"
echo "== sanitizers: no reports"
