# Sourced by the scripts that test a module built outside pip (sanitizers, CUDA).
# make_package_dir BUILD: BUILD/python/sinkstream = the Python sources plus BUILD's _core module,
# so that PYTHONPATH=BUILD/python imports that build instead of an installed copy.
make_package_dir() {
  local pkg="$1/python"
  rm -rf "$pkg"
  mkdir -p "$pkg"
  cp -r python/sinkstream "$pkg/"
  cp "$1"/_core*.so "$pkg/sinkstream/"
}
