"""`sinkstream bench` on a tiny model: it prints its table, and its progress bar advances by exactly
the tokens each run feeds (so the bar ends full, never past its end)."""
from __future__ import annotations

import contextlib

from sinkstream import cli
from sinkstream.commands import bench_cmd
from tiny_models import write_tiny_model


def test_bench_prints_the_table_and_fills_its_progress_bar(tmp_path, capsys, monkeypatch):
    path = write_tiny_model(tmp_path / "m.gguf", n_ctx=256)
    bars = []

    @contextlib.contextmanager
    def recording_bar(total, description):
        bar = type("Bar", (), {})()
        bar.total, bar.description, bar.done = total, description, 0

        def update(n):
            bar.done += n
        bar.update = update
        bars.append(bar)
        yield bar
    monkeypatch.setattr(bench_cmd, "progress_bar", recording_bar)
    assert cli.main(["bench", str(path), "--threads", "1,2", "--prompt-tokens", "16", "--decode-tokens", "4",
                     "--position", "60", "--repeats", "2", "--no-llama-cpp"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("sinkstream ")]
    assert [row[1] for row in rows] == ["1", "2"] and all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows)
    assert [b.description for b in bars] == ["sinkstream, 1 thread(s)", "sinkstream, 2 thread(s)"]
    assert all(b.total == 2 * (60 + 32) and b.done == b.total for b in bars)
