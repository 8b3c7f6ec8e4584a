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
