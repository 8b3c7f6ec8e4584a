"""Benchmark: sinkstream (and llama.cpp, when llama-cpp-python is installed) on the same GGUF.

    python benchmarks/bench_engine.py [--threads 1,2] [MODEL ...]

Same as `sinkstream bench`; see sinkstream/bench.py for what each figure means.
"""
import sys

from sinkstream.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
