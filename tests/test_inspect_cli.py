"""`sinkstream inspect`: architecture, hyper-parameters, tokenizer, chat template and a tensor-type
summary, checked against counts computed independently with gguf-py's reader."""
from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import pytest

from sinkstream import cli


@pytest.mark.model
def test_inspect_default_model(default_model_path, default_model_reader):
    result = subprocess.run([sys.executable, "-m", "sinkstream", "inspect", default_model_path],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^architecture:\s+llama$", out, re.M), out
    assert re.search(r"^tensors:\s+272\b", out, re.M), out
    assert re.search(r"^chat template:\s+yes$", out, re.M), out
    assert re.search(r"^tokenizer:\s+gpt2\b", out, re.M), out

    fields = default_model_reader.fields
    for key in ("llama.block_count", "llama.embedding_length", "llama.attention.head_count_kv"):
        value = fields[key].contents()
        assert re.search(rf"^\s+{re.escape(key[len('llama.'):])}\s+{value}$", out, re.M), (key, out)

    counts = Counter(t.tensor_type.name for t in default_model_reader.tensors)
    nbytes = Counter()
    for t in default_model_reader.tensors:
        nbytes[t.tensor_type.name] += int(t.n_bytes)
    assert counts == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    for type_name, n in counts.items():
        line = rf"^\s+{type_name}\s+{n} tensors\s+{nbytes[type_name]} bytes\b"
        assert re.search(line, out, re.M), (line, out)


def test_inspect_reports_a_bad_file_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x63\x00\x00\x00" + bytes(16))
    assert cli.main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: unsupported GGUF version 99" in err and "Traceback" not in err

    assert cli.main(["inspect", str(tmp_path)]) == 1
    assert "directory" in capsys.readouterr().err
    assert cli.main(["inspect", str(tmp_path / "missing.gguf")]) == 1
    assert "missing.gguf" in capsys.readouterr().err


def test_inspect_says_whether_a_file_runs(tmp_path):
    """A runnable file lists its per-layer configuration; an unsupported one names what is missing."""
    from tiny_models import write_family_model

    gemma = write_family_model(tmp_path / "gemma3.gguf", "gemma3")
    result = subprocess.run([sys.executable, "-m", "sinkstream", "inspect", str(gemma)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^runs:\s+yes \(gemma3: ", result.stdout, re.M), result.stdout
    assert re.search(r"^\s+layers 0-4: sliding window 5, RoPE base 10000 .*QK-norm, post-norms, geglu$",
                     result.stdout, re.M), result.stdout
    assert re.search(r"^\s+layers 5: global, RoPE base 1e\+06 .*linear x8", result.stdout, re.M), result.stdout

    import gguf

    hybrid = tmp_path / "hybrid.gguf"
    w = gguf.GGUFWriter(str(hybrid), "jamba")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    result = subprocess.run([sys.executable, "-m", "sinkstream", "inspect", str(hybrid)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert re.search(r"^runs:\s+no: .*'jamba' is not supported: it is a hybrid of recurrent", result.stdout,
                     re.M), result.stdout
