#!/usr/bin/env bash
# Fresh-venv check of the wheels (the wheels issue, part 4): build and repair them
# (scripts/build_wheels.sh), then for each one a brand-new virtualenv installs it from the file
# with binaries only (no compiler, no build tools: --only-binary=:all:), and that environment's
# `sinkstream --version` and `sinkstream generate` on the default model must work; the greedy
# text must equal llama.cpp's (tests/data/smollm2_oracle) up to the first near-tie. The stable-ABI wheel is
# installed into every CPython >= 3.12 found. Finally the host wheel's environment runs the
# emulated-CPU checks (scripts/check_portability.sh).
#
# usage: scripts/check_wheel.sh [OUT_DIR]      (default dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-dist}
ORACLE=${SINKSTREAM_ORACLE:-tests/data/smollm2_oracle/prompts.json}
[ -f "$ORACLE" ] || { echo "no llama.cpp oracle at $ORACLE (set SINKSTREAM_ORACLE)" >&2; exit 2; }
VENVS=$(mktemp -d)
trap 'rm -rf "$VENVS"' EXIT

scripts/build_wheels.sh "$OUT"
# shellcheck source=scripts/find_python.sh
. scripts/find_python.sh

# The text of the oracle's first N greedy ids for p1, cut at its first near-tie (top-2 gap < 0.05):
# what a correct engine prints (p1's first 14 steps are decided for both engines, see
# tests/test_oracle.py, so N stays below that).
expected_text() {
  "$1" - "$ORACLE" "$2" <<'EOF'
import json, sys
import sinkstream
oracle = json.load(open(sys.argv[1]))["p1"]
ids, steps, limit = oracle["greedy_ids"], oracle["greedy_step_top5"], int(sys.argv[2])
decided = next((i for i, s in enumerate(steps) if s["logits"][0] - s["logits"][1] < 0.05), len(ids))
model = sinkstream.Model()
print(model.detokenize(ids[:min(limit, decided)]), end="")
EOF
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
  local n=12 got want
  got=$("$venv/bin/sinkstream" generate -p "The capital of France is" -n $n --temperature 0 2>"$venv/stats")
  cat "$venv/stats"
  want=$(expected_text "$venv/bin/python" $n)
  if [[ -z "$want" || "$got" != "$want"* ]]; then
    printf 'FAILED: generated %q, llama.cpp greedy text %q\n' "$got" "$want" >&2
    exit 1
  fi
  printf 'generated %q: equals llama.cpp greedy text\n' "$got"
}

host_venv_python=""
for wheel in "$OUT"/wheelhouse/*.whl; do
  case "$(basename "$wheel")" in
    *-abi3-*) interpreters=(python3.12 python3.13) ;;
    *-cp311-cp311-*) interpreters=(python3.11) ;;
    *) echo "unexpected wheel $wheel" >&2; exit 1 ;;
  esac
  for name in "${interpreters[@]}"; do
    py=$(find_python "$name")
    [ -n "$py" ] || { echo "== $name not found: $(basename "$wheel") not checked with it"; continue; }
    check_in_fresh_venv "$wheel" "$py"
    [ "$name" = python3.11 ] && host_venv_python="$VENVS/$(basename "$py")/bin/python"
  done
done

if [ -n "$host_venv_python" ]; then
  # The portability smoke test writes its tiny models with the gguf package (pure Python).
  "$host_venv_python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: "gguf>=0.10"
  scripts/check_portability.sh "$host_venv_python"
fi
echo "wheels: all checks passed"
