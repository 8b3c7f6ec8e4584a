"""Runs pytest with `sinkstream` imported from PKG_DIR (a sanitized build), never from an install.

    python scripts/asan_pytest.py PKG_DIR [pytest arguments...]

Used by scripts/run_sanitizers.sh under LD_PRELOAD=libasan. An editable install of sinkstream
(scikit-build-core) adds a meta-path finder that would win over sys.path, so it is removed first;
the run stops if the module that got imported is not the one in PKG_DIR.
"""
from __future__ import annotations

import os
import sys


def main() -> int:
    pkg_dir = os.path.abspath(sys.argv[1])
    sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__name__.startswith("ScikitBuild")]
    sys.path.insert(0, pkg_dir)
    import sinkstream._core

    core_file = os.path.abspath(sinkstream._core.__file__)
    if not core_file.startswith(pkg_dir + os.sep):
        raise SystemExit(f"asan_pytest: imported {core_file}, not the sanitized module in {pkg_dir}")
    print(f"asan_pytest: using {core_file}", flush=True)
    import pytest

    return pytest.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
