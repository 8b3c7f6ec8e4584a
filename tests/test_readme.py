"""The README opens with the two commands (run, test), and CI runs the test command verbatim."""
from pathlib import Path

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
