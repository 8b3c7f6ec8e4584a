"""The README opens with the two commands (run, test), and CI runs the test command verbatim."""
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_readme_opens_with_run_and_test_commands():
    run, test = readme_commands()[:2]
    assert "sinkstream generate" in run and run.startswith("pip install")
    assert "pytest" in test and test.startswith("pip install")


def test_ci_runs_the_readme_test_command():
    test = readme_commands()[1]
    assert test in (ROOT / ".ci" / "run").read_text()


@pytest.mark.model
def test_readme_main_command_runs_as_written(default_model_path):
    """The first command, after its install step, streams a reply from the default model."""
    run = readme_commands()[0].split("&&", 1)[1].strip()
    assert run.startswith("sinkstream ")
    argv = [sys.executable, "-m", "sinkstream", *shlex.split(run)[1:]]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.split()) >= 5 and "generation:" in result.stderr and "tok/s" in result.stderr
