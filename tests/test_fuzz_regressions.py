"""Inputs the fuzzers (fuzz/) turned up, kept as regression files, plus a check of the model fuzzer's
input convention.

tests/data/fuzz_regressions/ holds one file per finding, named by the fuzzer that takes it:
- parse-*.gguf: a whole file for fuzz_gguf_parse (GgufFile on the bytes, every accessor, every
  tensor dequantized);
- model-*.gguf: an input of fuzz_model_load, i.e. the GGUF header, metadata and tensor infos; the
  harness appends DATA_BYTES of the pattern 00 3c and loads the result as a model, then runs a short
  streaming session (6 tokens in chunks of 2) over it.
Each must end in a GGUFError/ModelError or in a clean run: never a crash. The memory and UB bugs
behind them only show under the sanitizers, which is why scripts/run_sanitizers.sh runs this file
against the ASan+UBSan build; the assertions below also pin the fixed behaviour in a plain build.
"""
from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import sinkstream
from sinkstream import GGUFError, GGUFFile, ModelError

REGRESSIONS = Path(__file__).parent / "data" / "fuzz_regressions"
FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"

# fuzz_model_load.cc: kDataBytes of 00 3c follow every input (fp16 1.0 pairs; finite in every type).
DATA_BYTES = 64 * 1024
DATA_PATTERN = bytes([0x00, 0x3C]) * (DATA_BYTES // 2)


def parse_files() -> list[Path]:
    return sorted(REGRESSIONS.glob("parse-*.gguf"))


def model_files() -> list[Path]:
    return sorted(REGRESSIONS.glob("model-*.gguf"))


def model_from_input(fuzz_input: bytes, tmp_path: Path, name: str = "model.gguf") -> Path:
    """The file fuzz_model_load loads for this input."""
    path = tmp_path / name
    path.write_bytes(fuzz_input + DATA_PATTERN)
    return path


def run_like_the_harness(model: sinkstream.Model, fuzz_input: bytes) -> np.ndarray:
    """fuzz_model_load's session: n_sink 2, window 3, chunks of 2 (the ring wraps), 6 tokens."""
    kv_type = "f16" if len(fuzz_input) % 2 else "f32"
    session = sinkstream.Session(model, n_sink=2, window=3, batch_size=2, kv_type=kv_type, n_threads=1,
                                 allow_beyond_training_context=True)
    first = fuzz_input[0] if fuzz_input else 0
    tokens = [(i * 37 + first) % model.n_vocab for i in range(6)]
    logits = [session.eval(tokens[2 * c:2 * c + 2], logits="all") for c in range(3)]
    return np.concatenate(logits)


def test_regression_files_exist():
    assert parse_files() and model_files(), f"no regression files in {REGRESSIONS}"


@pytest.mark.parametrize("path", parse_files(), ids=lambda p: p.name)
def test_parse_regression(path: Path):
    """What fuzz_gguf_parse does: parse, read every key and tensor; only GGUFError may come out."""
    try:
        g = GGUFFile(path)
    except GGUFError:
        return
    assert isinstance(g.metadata, dict)
    for info in g.tensors:
        try:
            values = g.tensor(info.name)
        except GGUFError:
            continue
        assert values.shape == info.shape


@pytest.mark.parametrize("path", model_files(), ids=lambda p: p.name)
def test_model_regression(path: Path, tmp_path: Path):
    """What fuzz_model_load does: load, and if the model loads, run a short stream over it."""
    fuzz_input = path.read_bytes()
    model_path = model_from_input(fuzz_input, tmp_path)
    try:
        model = sinkstream.Model(model_path, n_threads=1)
    except (GGUFError, ModelError):  # ModelError is a GGUFError; both named for clarity
        return
    logits = run_like_the_harness(model, fuzz_input)
    assert logits.shape == (6, model.n_vocab)


# ---- the findings, one by one ---------------------------------------------------------------------

def test_misaligned_q4_1_block_dequantizes_like_gguf_py(bits_equal):
    """parse-misaligned-q4_1: general.alignment = 1 put a Q4_1 block at an odd file offset and
    tensor_to_f32 read the block struct there (UBSan: misaligned member access). Fixed: misaligned
    data is dequantized from an aligned copy; the values must match gguf-py's dequantizer."""
    path = REGRESSIONS / "parse-misaligned-q4_1.gguf"
    reference = {t.name: t for t in gguf.GGUFReader(path).tensors}
    g = GGUFFile(path)
    assert g.alignment == 1
    q4_1 = [t for t in g.tensors if t.dtype == "Q4_1"]
    assert q4_1 and any(t.offset % 2 for t in q4_1), "the file no longer holds a misaligned Q4_1 block"
    for info in g.tensors:
        ref = reference[info.name]
        want = gguf.quants.dequantize(ref.data, ref.tensor_type).reshape(info.shape).astype(np.float32)
        assert bits_equal(g.tensor(info.name), want), info.name


def test_misaligned_weights_are_refused(tmp_path: Path):
    """model-alignment-1: a valid tiny model written with general.alignment = 1 and an extra key, so
    every weight starts at an odd byte offset (made by hand after the parse finding: the kernels
    read weights in place, as floats and block structs). Loading must refuse it with a ModelError
    that says what to do."""
    model_path = model_from_input((REGRESSIONS / "model-alignment-1.gguf").read_bytes(), tmp_path)
    with pytest.raises(ModelError, match=r"tensor '.+' data starts at byte \d+, not a multiple of 8 "
                                         r"\(general\.alignment 1; .*re-save the file"):
        sinkstream.Model(model_path, n_threads=1)
    # The same bytes are still a readable GGUF file (inspection does not need aligned data).
    g = GGUFFile(model_path)
    assert all(info.offset % 2 == 1 for info in g.tensors)
    reference = {t.name: t for t in gguf.GGUFReader(model_path).tensors}
    for info in g.tensors:
        assert np.array_equal(g.tensor(info.name), np.asarray(reference[info.name].data).reshape(info.shape))


def test_tiny_norm_weights_give_finite_logits(tmp_path: Path):
    """model-tiny-norm-weights: fuzz_model_load's input of odd length shifts the data pattern, so
    the F32 norm weights decode to ~5.5e-39 (subnormal) and the activations entering the matmuls
    are ~1e-38. Quantizing such a row for the integer kernels gave a scale whose inverse is inf
    (UBSan: inf converted to int in round_to_int). Finite weights must give finite logits."""
    fuzz_input = (REGRESSIONS / "model-tiny-norm-weights.gguf").read_bytes()
    model = sinkstream.Model(model_from_input(fuzz_input, tmp_path), n_threads=1)
    logits = run_like_the_harness(model, fuzz_input)
    assert np.isfinite(logits).all()


# ---- the model fuzzer's seeds are valid models ------------------------------------------------------

def _import_make_corpus():
    sys.path.insert(0, str(FUZZ_DIR))
    try:
        import make_corpus
    finally:
        sys.path.remove(str(FUZZ_DIR))
    return make_corpus


def test_model_seeds_load_and_run(tmp_path: Path):
    """fuzz/make_corpus.py cuts tiny models at their data section; with the harness's data pattern
    appended each must load and stream, so the fuzzer starts from loadable inputs (a seed that
    cannot load would only exercise the first failing check)."""
    make_corpus = _import_make_corpus()
    make_corpus.model_headers(tmp_path / "seeds")
    seeds = sorted((tmp_path / "seeds").glob("*.gguf"))
    assert len(seeds) >= 5
    for seed in seeds:
        header = seed.read_bytes()
        model = sinkstream.Model(model_from_input(header, tmp_path, seed.name), n_threads=1)
        assert model.architecture in ("llama", "mistral", "granite", "qwen2"), seed.name
        logits = run_like_the_harness(model, header)
        assert np.isfinite(logits).all(), seed.name


def test_nonfinite_activation_gives_nan_logits(tmp_path: Path):
    """The other side of model-tiny-norm-weights: an activation that is NaN (here from a token whose
    embedding block has a NaN scale) reached the same int conversion in the activation quantizer
    of the integer kernels. It must give NaN logits, as the float kernels do, not undefined
    behaviour (the sanitizer run checks that) nor finite garbage."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import write_tiny_model

    path = write_tiny_model(tmp_path / "q8.gguf", n_layer=1, n_embd=32, n_head=4, n_head_kv=2, n_ff=32,
                            weight_type="Q8_0", tied=False)  # untied: the output head stays finite
    embd = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
    poisoned = 65  # "A": its first Q8_0 block (2-byte fp16 scale, then 32 int8) gets a NaN scale
    row_bytes = embd.n_bytes // int(embd.shape[1])
    raw = bytearray(path.read_bytes())
    at = int(embd.data_offset) + poisoned * row_bytes
    raw[at:at + 2] = np.float16(np.nan).tobytes()
    path.write_bytes(bytes(raw))

    model = sinkstream.Model(path, n_threads=1)
    healthy = sinkstream.Session(model, n_threads=1).eval([66, 67])
    assert np.isfinite(healthy).all()
    assert np.isnan(sinkstream.Session(model, n_threads=1).eval([66, poisoned])).all()
