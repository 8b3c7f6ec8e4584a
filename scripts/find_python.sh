# Sourced by the wheel scripts. find_python NAME prints the path of a working interpreter NAME
# (python3.12, ...): the one on PATH, else pyenv's, whose shims refuse versions not selected.
find_python() {
  if "$1" -c "" 2>/dev/null; then command -v "$1"; return; fi
  local candidate
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"${1#python}"*/bin/"$1"; do
    if [ -x "$candidate" ] && "$candidate" -c "" 2>/dev/null; then echo "$candidate"; return; fi
  done
}
