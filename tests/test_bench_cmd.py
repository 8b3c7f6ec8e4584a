"""`sinkstream bench` on tiny models: it prints one table per model, its progress bars advance by
exactly the tokens each run feeds (so a bar ends full, never past its end), its per-type table lists
the weight types a decode token reads with their bytes, and bad arguments fail before any
measurement. No timing is asserted: the machine may be busy."""
from __future__ import annotations

import contextlib
import os

import gguf
import pytest

from sinkstream import bench, cli
from sinkstream.commands import bench_cmd
from tiny_models import write_tiny_model

SMALL_ARGS = ["--prompt-tokens", "16", "--decode-tokens", "4", "--position", "60", "--no-llama-cpp"]


@pytest.fixture(autouse=True)
def small_bandwidth_buffer(monkeypatch):
    # 16 MiB instead of 1 GiB: the figure is not checked here, only that it is measured and shown.
    monkeypatch.setattr(bench, "BANDWIDTH_BUFFER_BYTES", 1 << 24)


@pytest.fixture
def bars(monkeypatch):
    """Records every progress bar the command opens (total, description, tokens advanced)."""
    opened = []

    @contextlib.contextmanager
    def recording_bar(total, description):
        bar = type("Bar", (), {})()
        bar.total, bar.description, bar.done = total, description, 0

        def update(n):
            bar.done += n
        bar.update = update
        opened.append(bar)
        yield bar
    monkeypatch.setattr(bench_cmd, "progress_bar", recording_bar)
    return opened


def engine_rows(out):
    return [line.split() for line in out.splitlines() if line.startswith("sinkstream ")]


def type_tables(out):
    """{model path: [row fields, ...]} of each model's per-type table."""
    tables, path, in_table = {}, None, False
    for line in out.splitlines():
        if line.startswith("== "):
            path, in_table = line[3:].split(": ", 1)[0], False
        elif line.startswith("weights ") and "MB/token" in line:
            tables[path], in_table = [], True
        elif in_table and line and not line.startswith(" "):
            tables[path].append(line.split())
        else:
            in_table = False
    return tables


def expected_decode_bytes(path):
    """Bytes per weight type a decode token reads, from the file with the gguf package: the 2-D
    weights but norms, token_embd only when there is no output.weight (tied head)."""
    tensors = gguf.GGUFReader(str(path)).tensors
    tied = "output.weight" not in {t.name for t in tensors}
    totals = {}
    for t in tensors:
        if len(t.shape) == 2 and "norm" not in t.name and (tied or t.name != "token_embd.weight"):
            totals[t.tensor_type.name] = totals.get(t.tensor_type.name, 0) + int(t.n_bytes)
    return totals


def test_bench_prints_the_table_and_fills_its_progress_bar(tmp_path, capsys, bars):
    path = write_tiny_model(tmp_path / "m.gguf", n_ctx=256)
    assert cli.main(["bench", str(path), "--threads", "1,2", "--repeats", "2", *SMALL_ARGS]) == 0
    out = capsys.readouterr().out
    rows = engine_rows(out)
    assert [row[1] for row in rows] == ["1", "2"] and all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows)
    assert [b.description for b in bars] == ["sinkstream, 1 thread(s)", "sinkstream, 2 thread(s)"]
    assert all(b.total == 2 * (60 + 32) and b.done == b.total for b in bars)
    assert "memory read bandwidth (mem bw): probed just before and after each measurement" in out
    # decode GB/s, the memory bandwidth around the run and the % of it beside tok/s
    assert "decode GB/s" in out and all(len(row) == 10 for row in rows)
    assert all(float(row[8]) > 0 and float(row[9]) == pytest.approx(100 * float(row[7]) / float(row[8]), abs=1)
               for row in rows)


def test_each_run_is_set_against_the_bandwidth_probed_around_it(tmp_path, capsys, bars, monkeypatch):
    """The VM's bandwidth drifts: each run's % of mem bw uses the mean of the probes just before and
    after it, at its own thread count, and the per-type table the probes around the matmul timings."""
    probes = []

    def fake_probe(threads):
        probes.append(threads)
        return 10e9 * len(probes)  # 10, 20, 30, ... GB/s: each probe differs
    monkeypatch.setattr(bench, "probe_bandwidth", fake_probe)
    path = write_tiny_model(tmp_path / "m.gguf", n_ctx=256)
    assert cli.main(["bench", str(path), "--threads", "1,2", "--repeats", "1", *SMALL_ARGS]) == 0
    out = capsys.readouterr().out
    # Engines: probes 1, 2 around the 1-thread run, 3, 4 around the 2-thread one; then the matmul
    # timings: 5, 6 (1 thread) and 7, 8 (2 threads).
    assert probes == [1, 1, 2, 2, 1, 1, 2, 2]
    rows = engine_rows(out)
    assert [float(row[8]) for row in rows] == [15.0, 35.0]
    assert all(float(row[9]) == pytest.approx(100 * float(row[7]) / float(row[8]), abs=1) for row in rows)
    table = type_tables(out)[str(path)]
    assert {int(row[-4]) for row in table} == {1, 2}
    for row in table:  # ... threads ms/token GB/s %
        threads, gb_per_s, percent = int(row[-4]), float(row[-2]), float(row[-1])
        assert percent == pytest.approx(100 * gb_per_s / {1: 55.0, 2: 75.0}[threads], abs=1)


def test_decode_bandwidth_counts_the_cache_rows_attention_reads(tmp_path, capsys, bars):
    """Bytes read per decode token are the weights plus the K/V rows: at decode position t every
    layer reads the t + 1 cached tokens (the prompt is shorter than the cache), a key and a value
    of head_dim halves per KV head. Computed here from the file's geometry."""
    path = write_tiny_model(tmp_path / "m.gguf", n_ctx=256)
    assert cli.main(["bench", str(path), "--threads", "1", "--repeats", "1", *SMALL_ARGS]) == 0
    out = capsys.readouterr().out
    fields = {f.name: f.parts[f.data[0]] for f in gguf.GGUFReader(str(path)).fields.values() if f.data}
    arch = bytes(fields["general.architecture"]).decode()
    n_layer, n_head, n_head_kv = (int(fields[f"{arch}.{k}"][0]) for k in ("block_count", "attention.head_count",
                                                                         "attention.head_count_kv"))
    head_dim = int(fields[f"{arch}.embedding_length"][0]) // n_head
    prompt, decode = 16, 4
    entries = sum(t + 1 for t in range(prompt, prompt + decode)) / decode
    expected = entries * n_layer * n_head_kv * head_dim * 2 * 2
    line = next(line for line in out.splitlines() if line.startswith("K/V cache rows read per decode token"))
    assert float(line.split(": ")[1].split(" MB")[0]) == pytest.approx(expected / 1e6, abs=1e-3)
    weights = sum(expected_decode_bytes(path).values())
    row = engine_rows(out)[0]
    assert float(row[7]) == pytest.approx((weights + expected) * float(row[3]) / 1e9, abs=0.06)


def test_several_models_print_one_table_each(tmp_path, capsys, bars):
    first = write_tiny_model(tmp_path / "a.gguf", n_ctx=256)
    second = write_tiny_model(tmp_path / "b.gguf", n_ctx=256, weight_type="Q8_0", n_ff=64, seed=1)
    assert cli.main(["bench", str(first), str(second), "--threads", "1", "--repeats", "1", *SMALL_ARGS]) == 0
    out = capsys.readouterr().out
    headers = [line for line in out.splitlines() if line.startswith("== ")]
    assert [h[3:].split(": ")[0] for h in headers] == [str(first), str(second)]
    sections = out.split("\n== ")[1:]
    assert all(sum(line.startswith("engine ") for line in s.splitlines()) == 1 for s in sections)
    assert all(len(engine_rows(s)) == 1 for s in sections)
    assert out.count("memory read bandwidth (mem bw)") == 1  # said once; probed around each run
    assert [b.description for b in bars] == ["sinkstream, 1 thread(s)"] * 2
    assert all(b.total == 60 + 32 and b.done == b.total for b in bars)
    assert set(type_tables(out)) == {str(first), str(second)}


@pytest.mark.parametrize("tied", [False, True])
def test_type_table_lists_the_types_a_decode_token_reads(tmp_path, capsys, bars, tied):
    # Five types; token_embd's (Q4_1) is read by a decode step only as the tied head.
    types = {"ffn_down.weight": "Q4_0", "ffn_up.weight": "Q5_0", "attn_v.weight": "F16",
             "token_embd.weight": "Q4_1", "output.weight": "F32"}
    path = write_tiny_model(tmp_path / "mixed.gguf", n_ctx=256, n_embd=64, n_ff=128, weight_type="Q8_0",
                            weight_types=types, tied=tied)
    expected = expected_decode_bytes(path)
    assert ("Q4_1" in expected) == tied and ("F32" in expected) == (not tied)
    assert cli.main(["bench", str(path), "--threads", "1,2", "--repeats", "1", *SMALL_ARGS]) == 0
    out = capsys.readouterr().out
    rows = type_tables(out)[str(path)]
    for threads in ("1", "2"):
        typed = {row[0]: row for row in rows if row[0] != "all" and row[3] == threads}
        assert set(typed) == set(expected)
        assert {name: row[2] for name, row in typed.items()} == {
            name: f"{n / 1e6:.3f}" for name, n in expected.items()}
        assert all(float(row[4]) >= 0 and float(row[5]) >= 0 for row in typed.values())  # figures, not checked
        (total,) = [row for row in rows if row[0] == "all" and row[2] == threads]  # no kernel column
        assert total[1] == f"{sum(expected.values()) / 1e6:.3f}"
    header = next(line for line in out.splitlines() if line.startswith("== "))
    assert f"{sum(expected.values()) / 1e6:.3f} MB of weights read per decode token" in header
    assert bench.bytes_per_type(bench.decode_matrices(str(path))) == expected


@pytest.mark.parametrize("argv, message", [
    (["--threads", "1,x"], "--threads must be comma-separated integers"),
    (["--threads", "0"], "--threads must be thread counts >= 1"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["MISSING"], "not found"),
    (["DIRECTORY"], "directory"),
    (["NOT_GGUF"], "NOT_GGUF"),
])
def test_bad_arguments_fail_before_measuring(tmp_path, capsys, bars, argv, message):
    good = write_tiny_model(tmp_path / "good.gguf", n_ctx=256)
    (tmp_path / "not_gguf.bin").write_bytes(b"hello, not a GGUF file")
    (tmp_path / "dir").mkdir()
    places = {"MISSING": tmp_path / "missing.gguf", "DIRECTORY": tmp_path / "dir",
              "NOT_GGUF": tmp_path / "not_gguf.bin"}
    argv = [str(places[a]) if a in places else a for a in argv]
    message = os.fspath(places[message]) if message in places else message
    assert cli.main(["bench", str(good), *argv, *SMALL_ARGS]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("sinkstream bench: error: ") and message in captured.err
    assert bars == [] and "sinkstream, " not in captured.out  # the good model was not benchmarked


@pytest.mark.model
def test_default_model_type_table(default_model_path, capsys, bars):
    assert cli.main(["bench", "--threads", "1", "--repeats", "1", "--prompt-tokens", "8", "--decode-tokens", "2",
                     "--position", "16", "--no-llama-cpp"]) == 0
    out = capsys.readouterr().out
    (rows,) = type_tables(out).values()
    expected = expected_decode_bytes(default_model_path)
    assert {row[0]: row[2] for row in rows if row[0] != "all"} == {
        name: f"{n / 1e6:.3f}" for name, n in expected.items()}


# -- llama.cpp runs in a child process ----------------------------------------------------------

FAKE_LLAMA_CPP = '''
"""A stand-in for llama-cpp-python: the calls bench_llama_cpp makes, logits from a ctypes array."""
import ctypes, os, signal

N_VOCAB = 256
_logits = (ctypes.c_float * N_VOCAB)(*range(N_VOCAB))

def llama_get_logits_ith(ctx, i):
    return ctypes.cast(_logits, ctypes.POINTER(ctypes.c_float))

class Llama:
    def __init__(self, model_path, **kwargs):
        self.ctx, self.n_tokens = object(), 0
    def n_vocab(self):
        return N_VOCAB
    def reset(self):
        self.n_tokens = 0
    def eval(self, tokens):
        if os.environ.get("FAKE_LLAMA_CRASH") and len(tokens) > 1:
            os.kill(os.getpid(), signal.SIGSEGV)  # as llama.cpp's AMX matmul did on prompts
        self.n_tokens += len(tokens)
'''


@pytest.fixture
def fake_llama_cpp(tmp_path, monkeypatch):
    """A `llama_cpp` package that shadows any installed one in the child process."""
    package = tmp_path / "fake_site" / "llama_cpp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_LLAMA_CPP)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(package.parent), os.environ.get("PYTHONPATH")])))
    return package


def test_llama_cpp_is_measured_in_a_child_process(tmp_path, fake_llama_cpp):
    advanced = []
    result = bench.bench_llama_cpp(str(tmp_path / "any.gguf"), 2, 16, 4, 60, 2, progress=advanced.append)
    assert result is not None and result.engine == "llama.cpp" and result.threads == 2
    assert len(result.runs["decode"]) == 2 and result.prefill_tok_s > 0 and result.decode_tok_s > 0
    assert sum(advanced) == 2 * (60 + 32)  # the child's progress reaches the parent's bar
    assert result.peak_rss_mib > 0  # the child's own peak


def test_a_crashing_llama_cpp_does_not_take_the_bench_down(tmp_path, fake_llama_cpp, monkeypatch, capsys, bars):
    monkeypatch.setenv("FAKE_LLAMA_CRASH", "1")
    with pytest.raises(bench.PeerCrashed, match="llama.cpp .2 thread.s.. died with signal SIGSEGV"):
        bench.bench_llama_cpp(str(tmp_path / "any.gguf"), 2, 16, 4, 60, 1)
    path = write_tiny_model(tmp_path / "m.gguf", n_ctx=256)
    small = [a for a in SMALL_ARGS if a != "--no-llama-cpp"]
    assert cli.main(["bench", str(path), "--threads", "1", "--repeats", "1", *small]) == 0
    out = capsys.readouterr().out
    assert "no llama.cpp figures: llama.cpp (1 thread(s)) died with signal SIGSEGV" in out
    assert len(engine_rows(out)) == 1 and "ratio" not in out  # sinkstream's figures are all there
