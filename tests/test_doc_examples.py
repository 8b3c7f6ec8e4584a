"""Every ```python block of README.md and docs/*.md runs, pasted as is, with the default model; every
`sinkstream ...` line of a ```bash block parses with the real CLI parser. A block preceded by
`<!-- not tested: reason -->` is skipped, and the skip names it and its reason."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sinkstream.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!--\s*not tested:\s*(?P<why>.*?)-->\s*\n)?```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)


def blocks(lang):
    for path in DOCS:
        text = path.read_text()
        for m in BLOCK.finditer(text):
            if m["lang"] == lang:
                line = text.count("\n", 0, m.start("code"))
                yield pytest.param(m["code"], m["why"], id=f"{path.relative_to(ROOT)}:{line}")


@pytest.mark.model
@pytest.mark.parametrize("code, why", list(blocks("python")))
def test_python_block_runs(code, why, default_model_path, tmp_path):
    if why:
        pytest.skip(f"not tested: {why.strip()}")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]


def sinkstream_commands():
    for param in blocks("bash"):
        code, why = param.values
        joined = re.sub(r"\\\n\s*", " ", code)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip() if not line.strip().startswith("pip") else ""
            if line.startswith("sinkstream "):
                yield pytest.param(line, why, id=f"{param.id}: {line[:40]}")


@pytest.mark.parametrize("line, why", list(sinkstream_commands()))
def test_bash_sinkstream_command_parses(line, why):
    if why:
        pytest.skip(f"not tested: {why.strip()}")
    argv = [a for a in shlex.split(line)[1:] if a != "[MODEL]"]
    build_parser().parse_args(argv)  # argparse exits (SystemExit) on anything it does not accept


def test_docs_are_found():
    assert len(list(blocks("python"))) >= 3 and len(list(sinkstream_commands())) >= 5
