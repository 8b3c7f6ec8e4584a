#!/usr/bin/env bash
# Bounded fuzzing run (the robustness issue, part 1): builds the libFuzzer targets in fuzz/ with
# clang (-fsanitize=fuzzer,address,undefined), writes the seed corpora (fuzz/make_corpus.py) and
# runs the fuzzers side by side for SECONDS each. Prints executions per fuzzer; exits non-zero if
# any found a crash, a sanitizer report, a leak, a timeout or an out-of-memory input.
#
# usage: scripts/run_fuzz.sh [SECONDS]     (default 60; uses the `python3` on PATH for the seeds,
#                                           which needs numpy and gguf)
# env:   SINKSTREAM_FUZZ_BUILD (default build/fuzz). The growing corpus is kept in
#        $SINKSTREAM_FUZZ_BUILD/corpus/<target>, so local runs resume where they stopped.
#
# A finding: the reproducer is $BUILD/artifacts/<target>/crash-* (or leak-, timeout-, oom-).
#   Reproduce:  $BUILD/fuzz_<target> <file>
#   Minimize:   $BUILD/fuzz_<target> -minimize_crash=1 -runs=20000 -exact_artifact_path=min.gguf <file>
#   Then fix the bug and add the file as tests/data/fuzz_regressions/<target>-<what>.gguf
#   (tests/test_fuzz_regressions.py loads every file there).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_FUZZER=${1:-60}
BUILD=${SINKSTREAM_FUZZ_BUILD:-build/fuzz}
PYTHON=${PYTHON:-python3}
TARGETS=(gguf_parse model_load state_load)

if ! command -v clang++ >/dev/null; then
  echo "== installing clang (libFuzzer comes with it)"
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq clang >/dev/null
fi

# cmake (and ninja) from pip when the machine has none: pip's isolated builds do not leave theirs.
command -v cmake >/dev/null || "$PYTHON" -m pip install --quiet cmake ninja
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER=clang++ -DSINKSTREAM_FUZZ=ON -DSINKSTREAM_PYTHON=OFF
cmake --build "$BUILD" --parallel "$(nproc)" --target "${TARGETS[@]/#/fuzz_}"

rm -rf "$BUILD/seeds"
"$PYTHON" fuzz/make_corpus.py "$BUILD/seeds"
# fuzz_state_load runs on a fixed tiny model; its seeds are valid states it saves itself.
SINKSTREAM_FUZZ_STATE_MODEL="$(cd "$BUILD/seeds" && pwd)/state_model.gguf"
export SINKSTREAM_FUZZ_STATE_MODEL
mkdir -p "$BUILD/seeds/state_load"
SINKSTREAM_FUZZ_STATE_SEEDS="$BUILD/seeds/state_load" "$BUILD/fuzz_state_load"

# One process per target, side by side (one core each). libFuzzer flags: -timeout: an input
# running longer is a finding (a hang); -rss_limit_mb / -malloc_limit_mb: so is a huge allocation.
pids=()
for target in "${TARGETS[@]}"; do
  mkdir -p "$BUILD/corpus/$target" "$BUILD/artifacts/$target"
  dict=()
  if [ "$target" != state_load ]; then dict=(-dict=fuzz/gguf.dict); fi
  "$BUILD/fuzz_$target" "$BUILD/corpus/$target" "$BUILD/seeds/$target" \
    "${dict[@]}" -max_total_time="$SECONDS_PER_FUZZER" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 \
    -artifact_prefix="$BUILD/artifacts/$target/" >"$BUILD/fuzz_$target.log" 2>&1 &
  pids+=($!)
done

failed=0
for i in "${!TARGETS[@]}"; do
  target=${TARGETS[$i]}
  log="$BUILD/fuzz_$target.log"
  rc=0
  wait "${pids[$i]}" || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  added=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
  corpus=$(find "$BUILD/corpus/$target" -type f | wc -l)
  echo "== fuzz_$target: ${runs:-?} executions in ${SECONDS_PER_FUZZER} s (${rate:-?}/s), ${added:-?} new inputs, corpus ${corpus} files, exit ${rc}"
  if [ "$rc" -ne 0 ]; then
    failed=1
    echo "-- fuzz_$target FOUND A PROBLEM (log: $log); last lines:"
    grep -v '^#[0-9]' "$log" | tail -60
    ls -l "$BUILD/artifacts/$target/"
  fi
done
if [ "$failed" -ne 0 ]; then
  echo "== fuzzing found problems: minimize, fix, and add the reproducer under tests/data/fuzz_regressions/"
  exit 1
fi
echo "== fuzzing: no findings"
