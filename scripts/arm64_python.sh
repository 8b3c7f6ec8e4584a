#!/usr/bin/env bash
# An arm64 CPython (Debian's) that runs under qemu-aarch64 on an x86-64 machine, for the aarch64
# wheel's checks (scripts/check_wheel.sh). Debian multiarch gives the packages, but installing
# python3:arm64 with apt-get replaces the host's /usr/bin/python3.11 (python3.11-minimal of both
# architectures own that path), which breaks every x86-64 tool that needs python3. So the packages
# are only downloaded (apt-get download, after `dpkg --add-architecture arm64`) and unpacked
# (dpkg -x) into DIR/root, a private sysroot; nothing of the system changes but apt's package lists.
#
# usage: scripts/arm64_python.sh DIR    prints the path of DIR/python, a wrapper that runs the arm64
#        interpreter under qemu-aarch64 (-cpu from $QEMU_CPU, qemu's own variable; default max)
set -euo pipefail
DIR=${1:?usage: scripts/arm64_python.sh DIR}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

if [ ! -x "$DIR/python" ]; then
  command -v apt-get >/dev/null || { echo "arm64 CPython: needs Debian's apt-get" >&2; exit 2; }
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get update -qq
  fi
  command -v qemu-aarch64 >/dev/null || apt-get install -y -qq qemu-user >/dev/null
  # The interpreter (the version python3:arm64 depends on) and the libraries it loads.
  version=$(apt-cache show python3-minimal:arm64 | sed -n 's/^Pre-Depends: .*python\(3\.[0-9]*\)-minimal.*/\1/p' | head -n 1)
  [ -n "$version" ] || { echo "arm64 CPython: no python3-minimal:arm64 in apt's lists" >&2; exit 2; }
  packages=("python$version-minimal:arm64" "libpython$version-minimal:arm64" "libpython$version-stdlib:arm64")
  for package in "libpython$version-stdlib:arm64" "python$version-minimal:arm64"; do
    while read -r dep; do packages+=("$dep"); done < <(apt-cache depends "$package" |
      sed -n 's/^ *\(Pre\)\{0,1\}Depends: \([a-z0-9.+-]*:arm64\)$/\2/p')
  done
  packages+=(libgcc-s1:arm64 libstdc++6:arm64)
  debs="$DIR/debs"
  mkdir -p "$debs"
  (cd "$debs" && apt-get download -qq "${packages[@]}" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$DIR/root"; done
  cat >"$DIR/python" <<EOF
#!/bin/sh
# Debian's arm64 CPython $version under qemu-aarch64 (scripts/arm64_python.sh); -cpu from \$QEMU_CPU.
export QEMU_CPU="\${QEMU_CPU:-max}"
exec qemu-aarch64 -L "$DIR/root" "$DIR/root/usr/bin/python$version" "\$@"
EOF
  chmod +x "$DIR/python"
fi
"$DIR/python" -c "import platform, sys; assert platform.machine() == 'aarch64', platform.machine()"
echo "$DIR/python"
