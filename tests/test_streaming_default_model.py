"""streaming.md invariant 1 on the real model: 3,000 tokens through a 256-entry cache (4 sinks + 252),
fed in chunks of 1, 7, 64 and 512, give the same logits at every position."""
from __future__ import annotations

import numpy as np
import pytest

import sinkstream

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.ci]

N_TOKENS = 3000


def fingerprints(session, tokens, chunk, columns):
    """Per position: the logits of a fixed random set of vocabulary columns, the max logit and the
    log-sum-exp (the full (3000, 49152) logits would take 590 MB per run)."""
    rows = []
    for i in range(0, len(tokens), chunk):
        logits = session.eval(tokens[i:i + chunk], logits="all").astype(np.float64)
        top = logits.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        rows.append(np.concatenate([logits[:, columns], top, lse[:, None]], axis=1))
    return np.concatenate(rows)


def test_chunked_equals_token_by_token_on_default_model(default_model_path):
    model = sinkstream.Model(default_model_path)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.n_vocab, size=N_TOKENS).tolist()
    columns = rng.choice(model.n_vocab, size=512, replace=False)
    session = lambda: model.session(mode="streaming", n_sink=4, window=252)  # noqa: E731
    reference = fingerprints(session(), tokens, 1, columns)
    for chunk in (7, 64, 512):
        got = fingerprints(session(), tokens, chunk, columns)
        diff = np.abs(got - reference).max()
        print(f"chunk {chunk}: max |chunked - one by one| = {diff:.2e}")
        assert diff < 1e-3, f"chunk {chunk}"
