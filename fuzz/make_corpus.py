#!/usr/bin/env python3
"""Seed corpora for the fuzzers, written with the `gguf` package (the reference writer).

    python fuzz/make_corpus.py OUT_DIR

writes OUT_DIR/gguf_parse/*.gguf (small complete files: every metadata value type, nested arrays,
one tensor of every GGML type the reader knows, a tiny model, v2 and custom-alignment variants) and
OUT_DIR/model_load/*.gguf (headers of valid tiny llama-family models: everything before the data
section; fuzz_model_load.cc appends the data section itself) and OUT_DIR/state_model.gguf (the
tiny Gemma 3 model fuzz_state_load runs on; its seed states come from the harness itself).
Deterministic: the same files every run.
"""
from __future__ import annotations

import struct
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny_models import write_family_model, write_tiny_model  # noqa: E402

# Must match kDataBytes in fuzz_model_load.cc (and DATA_BYTES in tests/test_fuzz_regressions.py):
# the data section appended to every model_load input.
MODEL_DATA_BYTES = 64 * 1024

# Types the reader knows (cpp/quant/quant_types.cc), by GGML id. Tensors of these get one block of
# bytes each; the bytes need not be a sensible quantization, any bytes decode to something.
KNOWN_TYPES = ["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
               "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
               "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "TQ1_0", "TQ2_0", "MXFP4"]


def write(path: Path, setup, *, alignment: int | None = None, arch: str = "llama") -> None:
    w = gguf.GGUFWriter(str(path), arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    setup(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def one_block(w: gguf.GGUFWriter, name: str, type_name: str, rng: np.random.Generator) -> None:
    """One block (two elements for the plain types) of `type_name`: random bytes, except finite
    values for the float types."""
    values = rng.standard_normal(2).astype(np.float32)
    if type_name == "F32":
        w.add_tensor(name, values)
        return
    if type_name == "F16":
        w.add_tensor(name, values.astype(np.float16))
        return
    qtype = gguf.GGMLQuantizationType[type_name]
    if type_name == "BF16":  # the top halves of the float32s
        raw = (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(1, 4)
    else:
        block_size, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = 2 if block_size == 1 else 1
        raw = rng.integers(0, 256, size=(1, n_blocks * block_bytes), dtype=np.uint8)
    w.add_tensor(name, raw, raw_dtype=qtype)


def all_value_types(w: gguf.GGUFWriter) -> None:
    T = gguf.GGUFValueType
    w.add_key_value("t.u8", 200, T.UINT8)
    w.add_key_value("t.i8", -100, T.INT8)
    w.add_key_value("t.u16", 60000, T.UINT16)
    w.add_key_value("t.i16", -30000, T.INT16)
    w.add_key_value("t.u32", 4_000_000_000, T.UINT32)
    w.add_key_value("t.i32", -2_000_000_000, T.INT32)
    w.add_key_value("t.u64", 2**63 + 5, T.UINT64)
    w.add_key_value("t.i64", -(2**62), T.INT64)
    w.add_key_value("t.f32", 1.5, T.FLOAT32)
    w.add_key_value("t.f64", -2.25e300, T.FLOAT64)
    w.add_key_value("t.bool", True, T.BOOL)
    w.add_key_value("t.str", "h\u00e9llo \u4e16\u754c", T.STRING)
    w.add_key_value("t.arr_i32", [1, -2, 3], T.ARRAY, T.INT32)
    w.add_key_value("t.arr_f32", [0.5, -1.0], T.ARRAY, T.FLOAT32)
    w.add_key_value("t.arr_str", ["a", "", "ccc"], T.ARRAY, T.STRING)
    w.add_key_value("t.arr_bool", [True, False], T.ARRAY, T.BOOL)
    w.add_key_value("t.arr_u8", [1, 2, 255], T.ARRAY, T.UINT8)
    w.add_key_value("t.arr_nested", [[1, 2], [3]], T.ARRAY, T.ARRAY)


def parse_corpus(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    write(out / "metadata_all_types.gguf", all_value_types)
    for type_name in KNOWN_TYPES:
        write(out / f"tensor_{type_name}.gguf", lambda w, t=type_name: one_block(w, "t", t, rng))

    def mixed(w: gguf.GGUFWriter) -> None:
        w.add_name("mixed")
        all_value_types(w)
        for i, t in enumerate(["F32", "Q4_0", "Q8_0", "Q4_K", "F16"]):
            one_block(w, f"blk.{i}.w", t, rng)
    write(out / "mixed.gguf", mixed)
    write(out / "align64.gguf", lambda w: one_block(w, "a", "Q8_0", rng), alignment=64)
    write(out / "align1.gguf", lambda w: (one_block(w, "a", "F32", rng), one_block(w, "b", "Q4_1", rng)), alignment=1)
    write(out / "empty.gguf", lambda w: None)
    # GGUF v2 has the same little-endian layout as v3: only the version field differs.
    v2 = bytearray((out / "mixed.gguf").read_bytes())
    v2[4:8] = struct.pack("<I", 2)
    (out / "mixed_v2.gguf").write_bytes(bytes(v2))
    # A whole tiny model (realistic metadata: tokenizer arrays, hyper-parameters).
    write_tiny_model(out / "tiny_model.gguf", n_layer=1, n_embd=8, n_head=2, n_head_kv=1, n_ff=16)


def model_headers(out: Path) -> None:
    """Tiny models of each supported family and weight type, cut at the data section."""
    out.mkdir(parents=True, exist_ok=True)
    variants = {
        "llama_f32": dict(n_layer=1, n_embd=8, n_head=2, n_head_kv=1, n_ff=16),
        "llama_f16_2layers": dict(n_layer=2, n_embd=8, n_head=2, n_head_kv=2, n_ff=8, weight_type="F16"),
        "llama_q8_0_untied": dict(n_layer=1, n_embd=32, n_head=4, n_head_kv=2, n_ff=32, weight_type="Q8_0",
                                  tied=False),
        "llama_q4_1_rope2": dict(n_layer=1, n_embd=32, n_head=2, n_head_kv=1, n_ff=32, weight_type="Q4_1",
                                 rope_dim=2),
        "qwen2_biases": dict(arch="qwen2", n_layer=1, n_embd=8, n_head=2, n_head_kv=1, n_ff=16, biases=True),
        "mistral_f16_mqa": dict(arch="mistral", n_layer=1, n_embd=16, n_head=4, n_head_kv=1, n_ff=16,
                                weight_type="F16"),
        "granite_f32_3layers": dict(arch="granite", n_layer=3, n_embd=8, n_head=1, n_head_kv=1, n_ff=8),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in variants.items():
            path = Path(tmp) / f"{name}.gguf"
            write_tiny_model(path, **kwargs)
            reader = gguf.GGUFReader(str(path))
            data_offset = int(reader.data_offset)
            whole = path.read_bytes()
            data_bytes = len(whole) - data_offset
            if data_bytes > MODEL_DATA_BYTES:
                raise SystemExit(f"{name}: needs {data_bytes} data bytes, the harness appends {MODEL_DATA_BYTES}")
            (out / f"{name}.gguf").write_bytes(whole[:data_offset])


def state_model(out: Path) -> None:
    """The fixed model of fuzz_state_load (its seeds are valid states the harness writes itself):
    Gemma 3, whose sliding-window layers keep fewer rows than its global ones."""
    write_family_model(out, "gemma3", seed=3, n_layer=2, sliding_window_pattern=2, n_embd=16, n_head=2, n_head_kv=1, head_dim=8, n_ff=16)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    parse_corpus(out / "gguf_parse")
    model_headers(out / "model_load")
    state_model(out / "state_model.gguf")
    for sub in ("gguf_parse", "model_load"):
        files = sorted((out / sub).iterdir())
        print(f"{sub}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
