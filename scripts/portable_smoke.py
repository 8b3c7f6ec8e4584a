#!/usr/bin/env python3
"""Portability smoke test: the engine gives correct text and logits on a CPU it was not built on.

Two steps, so the emulated one needs nothing but numpy and sinkstream:

  python scripts/portable_smoke.py prepare DIR
      (natively, needs the `gguf` package) writes tiny random models with quantized and float
      weights, their logits from the float64 NumPy reference (tests/reference_llama.py, an
      implementation independent of the engine), and, for each ISA level this CPU can run, the
      engine's own logits and greedy text with SINKSTREAM_ISA forced to that level.

  qemu-x86_64 -cpu Haswell  python scripts/portable_smoke.py check DIR --expect-isa avx2
  qemu-x86_64 -cpu Nehalem  python scripts/portable_smoke.py check DIR --expect-isa scalar
      checks that run-time dispatch picked the expected level on that CPU (no AVX-512 on Haswell,
      nothing wider than SSE2 on Nehalem), that the logits match the NumPy reference, and that they
      and the greedy text equal the native run of the same level (same instructions, so the same
      bits: IEEE arithmetic is emulated exactly), and that the level's attention kernels agree with
      the scalar ones on f16, f32 and q8_0 cache rows.

  python scripts/portable_smoke.py selftest
      prepare into a temporary directory, then check natively (the cibuildwheel test command).
Exit status 0 when every check passes; each failed check is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

# (name, write_tiny_model arguments): the block formats of the default model (Q4_1 weights, Q8_0
# embeddings) and float weights, so every kernel family of the decode path runs.
MODELS = {
    "q4_1": dict(weight_type="Q4_1", n_embd=64, n_head=4, n_head_kv=2, n_ff=96, seed=11, qk_scale=0.2),
    "q8_0": dict(weight_type="Q8_0", n_embd=64, n_head=4, n_head_kv=2, n_ff=96, seed=12, qk_scale=0.2),
    "f16": dict(weight_type="F16", n_embd=64, n_head=8, n_head_kv=2, n_ff=128, seed=13, qk_scale=0.2),
}
N_TOKENS = 48                      # streamed past the cache below, in chunks of 16
SESSION = dict(mode="streaming", n_sink=2, window=14, batch_size=16, kv_type="f32")
PROMPT = "the theme"
GENERATE = dict(max_tokens=24, temperature=0.0)
# (kv_type, (head_dim, n_head, n_head_kv, n_tokens, n_sink, window)): the ring wrapped, a GQA group of 3.
ATTENTION_CASES = [("f16", (64, 9, 3, 300, 4, 250)), ("f32", (64, 9, 3, 300, 4, 250)), ("q8_0", (64, 9, 3, 300, 4, 250)),
                   ("q8_0", (32, 4, 1, 100, 2, 90))]
ATTENTION_TOLERANCE = 2e-5  # standard normal values: float rounding in another order
REFERENCE_TOLERANCE = 2e-3         # relative to the logit scale, as in tests/test_forward_reference.py
# The reference rounds activations to 8 bits like the kernels do; a kernel level that sums floats in
# another order can land one activation on the other side of a rounding boundary, which moves that
# token's logits by about 1 % (seen on AArch64 NEON: one token in 48). A few such tokens may go up to
# FLIP_TOLERANCE; every other token must be within REFERENCE_TOLERANCE.
MAX_FLIPPED_TOKENS = 2
FLIP_TOLERANCE = 2e-2


def engine_results(model_path: Path, tokens: np.ndarray) -> tuple[np.ndarray, str]:
    import sinkstream

    model = sinkstream.Model(str(model_path), n_threads=2)
    logits = model.session(**SESSION).eval(tokens, logits="all")
    text = model.generate(PROMPT, **GENERATE)
    return np.asarray(logits, dtype=np.float32), text


def runnable_isas() -> list[str]:
    from sinkstream import _core

    return _core.cpu_features()["levels"]


def prepare(directory: Path) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from reference_llama import ReferenceLlama
    from tiny_models import write_tiny_model

    directory.mkdir(parents=True, exist_ok=True)
    tokens = np.random.default_rng(5).integers(0, 256, size=N_TOKENS)
    np.save(directory / "tokens.npy", tokens)
    for name, kwargs in MODELS.items():
        path = write_tiny_model(directory / f"{name}.gguf", **kwargs)
        reference = ReferenceLlama(str(path)).logits(tokens.tolist(), mode="streaming", n_sink=SESSION["n_sink"],
                                                     window=SESSION["window"])
        np.save(directory / f"{name}.reference.npy", reference.astype(np.float32))
    # One fresh process per ISA level: the level is chosen once per process.
    for isa in runnable_isas():
        env = dict(os.environ, SINKSTREAM_ISA=isa)
        subprocess.run([sys.executable, __file__, "record", str(directory), isa], env=env, check=True)
    print(f"prepared {len(MODELS)} models and native results for {', '.join(runnable_isas())} in {directory}")
    return 0


def record(directory: Path, isa: str) -> int:
    tokens = np.load(directory / "tokens.npy")
    texts = {}
    for name in MODELS:
        logits, texts[name] = engine_results(directory / f"{name}.gguf", tokens)
        np.save(directory / f"{name}.{isa}.npy", logits)
    (directory / f"text.{isa}.json").write_text(json.dumps(texts))
    return 0


def check(directory: Path, expect_isa: str | None) -> int:
    from sinkstream import _core

    features = _core.cpu_features()
    active = features["active_isa"]
    passed, failures = 0, []

    def expect(condition: bool, failure: str) -> None:
        nonlocal passed
        if condition:
            passed += 1
        else:
            failures.append(failure)

    print(f"CPU: best ISA level {features['best_isa']}, active {active}")
    if expect_isa is not None:
        expect(active == expect_isa, f"dispatch picked {active}, expected {expect_isa} on this CPU")
    tokens = np.load(directory / "tokens.npy")
    native_texts_path = directory / f"text.{active}.json"
    native_texts = json.loads(native_texts_path.read_text()) if native_texts_path.exists() else None
    for name in MODELS:
        logits, text = engine_results(directory / f"{name}.gguf", tokens)
        reference = np.load(directory / f"{name}.reference.npy")
        scale = max(1.0, float(np.abs(reference).max()))
        per_token = np.abs(logits - reference).reshape(len(tokens), -1).max(axis=1)
        err = float(per_token.max())
        flipped = np.flatnonzero(per_token > REFERENCE_TOLERANCE * scale)
        print(f"{name}: max |engine - numpy reference| = {err:.2e} (logit scale {scale:.1f}); tokens beyond "
              f"{REFERENCE_TOLERANCE:g} x scale: {flipped.tolist()}; text {text!r}")
        expect(bool(np.isfinite(logits).all()) and len(flipped) <= MAX_FLIPPED_TOKENS
               and err <= FLIP_TOLERANCE * scale,
               f"{name}: logits differ from the NumPy reference by {err:.3g} at tokens {flipped.tolist()}")
        expect(len(text) > 0, f"{name}: generated no text")
        native_path = directory / f"{name}.{active}.npy"
        if native_path.exists():
            native = np.load(native_path)
            same = np.array_equal(native, logits)
            print(f"{name}: logits {'bit-identical to' if same else 'DIFFER from'} the native {active} run")
            expect(same, f"{name}: logits differ from the native {active} run by "
                         f"{float(np.abs(native - logits).max()):.3g}")
            if native_texts is not None:
                expect(native_texts[name] == text,
                       f"{name}: text {text!r} differs from the native {active} run {native_texts[name]!r}")
        else:
            print(f"{name}: no native {active} run recorded (that level was not runnable where prepared)")
    # The attention kernels of the active level against the scalar ones on every cache type (the
    # sessions above use f32 rows and the default f16; q8_0 rows have kernels of their own).
    for kv_type, (head_dim, n_head, n_head_kv, n_tokens, n_sink, window) in ATTENTION_CASES:
        rng = np.random.default_rng(head_dim + n_tokens)
        keys, values = (rng.standard_normal((n_tokens, n_head_kv * head_dim), dtype=np.float32) for _ in range(2))
        q_sink, q_window = (rng.standard_normal((n_head, head_dim), dtype=np.float32) for _ in range(2))
        out = {isa: _core.attend_test(keys, values, q_sink, q_window, n_head_kv, n_sink, window, kv_type, isa)
               for isa in ("scalar", active)}
        err = float(np.abs(out[active] - out["scalar"]).max())
        print(f"attention {kv_type} head_dim {head_dim}: max |{active} - scalar| = {err:.2e}")
        expect(err < ATTENTION_TOLERANCE, f"attention {kv_type}: {active} differs from scalar by {err:.3g}")
    for failure in failures:
        print("FAILED:", failure)
    print(f"portable smoke: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare").add_argument("directory", type=Path)
    rec = sub.add_parser("record")
    rec.add_argument("directory", type=Path)
    rec.add_argument("isa")
    chk = sub.add_parser("check")
    chk.add_argument("directory", type=Path)
    chk.add_argument("--expect-isa", default=None, help="the ISA level run-time dispatch must pick here")
    sub.add_parser("selftest")
    args = parser.parse_args(argv)
    if args.command == "selftest":
        import tempfile

        with tempfile.TemporaryDirectory() as directory:
            prepare(Path(directory))
            return check(Path(directory), None)
    if args.command == "prepare":
        return prepare(args.directory)
    if args.command == "record":
        return record(args.directory, args.isa)
    return check(args.directory, args.expect_isa)


if __name__ == "__main__":
    sys.exit(main())
