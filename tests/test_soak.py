"""Soak (slow): 100,000 tokens through one streaming session of the default model, prefill chunks
and decode steps alternating: memory and time per token stay flat, and no logit is ever NaN/inf.
(benchmarks/soak.py runs the same for 1,000,000 tokens and prints the figures.)"""
from __future__ import annotations

import pytest

import sinkstream
from sinkstream.bench import soak

pytestmark = [pytest.mark.model, pytest.mark.slow]


def test_hundred_thousand_tokens_flat(default_model_path):
    model = sinkstream.Model(default_model_path)
    rows = soak(model, n_tokens=100_000, every=10_000, chunk=512, decode_per_stretch=16)
    assert all(r["finite"] for r in rows)
    warm = rows[1:]
    rss = [r["rss_mib"] for r in warm]
    assert max(rss) - min(rss) < 8, f"RSS moved by {max(rss) - min(rss):.1f} MiB after warm-up: {rss}"
    assert len({r["kv_mib"] for r in rows}) == 1 and all(r["n_cached"] == 1024 for r in rows)
    # Time per token is printed, not asserted (timings belong in benchmarks: the machine is noisy).
    print("decode ms/token per 10k stretch:", [r["decode_ms_per_token"] for r in rows])
