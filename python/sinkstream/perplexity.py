"""Long-stream perplexity: the StreamingLLM paper's experiment (Xiao et al. 2023, section 4.1, Figure 3).

`perplexity(model, tokens, mode=...)` feeds one long token stream through a session of the given
mode and returns the per-token negative log-likelihood nll[i] = -log p(tokens[i+1] | A(i)), where
A(i) is what token i attends to in that mode (docs/streaming.md). Perplexity is exp(mean(nll)).

Logits are taken in chunks and turned into log-probabilities in float64 a few rows at a time, so
memory stays bounded whatever the stream length (one chunk of float32 logits at most).

The recompute baseline really re-encodes the last C tokens for every evaluated position (the
session does the work; nothing is approximated here), so timing it measures the paper's cost.
Because that is O(C^2) per token, `positions=` evaluates only a subset: positions not asked for are
fed with logits=None, which a recompute session skips after its first C tokens.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .model import MODES, Model, Session, _check_int, token_array

# Rows of float32 logits converted to float64 at once (bounds the float64 scratch to
# _ROWS_PER_BLOCK * n_vocab * 8 bytes, ~12 MB for a 49K vocabulary).
_ROWS_PER_BLOCK = 32

ProgressCallback = Callable[[int, int, float], Any]


@dataclass
class PerplexityRun:
    """Everything one perplexity() call measured (perplexity_run returns it)."""

    mode: str
    nll: np.ndarray          # float64, len(tokens) - 1; NaN where not evaluated
    n_tokens: int            # tokens in the stream (nll has one fewer entries)
    n_evaluated: int         # entries of nll computed
    seconds: float           # wall time of feeding and scoring
    n_sink: int
    window: int
    capacity: int
    kv_bytes: int

    @property
    def ppl(self) -> float:
        """exp(mean nll) over the evaluated positions (NaN if none)."""
        values = self.nll[~np.isnan(self.nll)]
        return float(math.exp(values.mean())) if values.size else math.nan


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits[r])[targets[r]] per row, in float64, a block of rows at a time.

    log softmax(z)[y] = z[y] - max(z) - log(sum(exp(z - max(z)))) (the max shift keeps exp finite).
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets, dtype=np.int64)
    out = np.empty(len(targets), dtype=np.float64)
    for start in range(0, len(targets), _ROWS_PER_BLOCK):
        block = logits[start:start + _ROWS_PER_BLOCK].astype(np.float64)
        rows = np.arange(len(block))
        peak = block.max(axis=1)
        log_norm = np.log(np.exp(block - peak[:, None]).sum(axis=1)) + peak
        out[start:start + len(block)] = log_norm - block[rows, targets[start:start + len(block)]]
    return out


def _token_array(model: Model, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    array = token_array(tokens, model.n_vocab)
    if array.size < 2:
        raise ValueError(f"tokens must hold at least 2 token ids (one to predict from, one to predict), got {array.size}")
    return array


def _wanted_mask(positions: Any, n_nll: int) -> np.ndarray:
    """Boolean mask over nll indices from positions=None | sequence of indices in 0..n_nll-1."""
    if positions is None:
        return np.ones(n_nll, dtype=bool)
    if isinstance(positions, (str, bytes)):
        raise TypeError("positions must be a sequence of nll indices, not text")
    array = np.asarray(positions)
    if array.ndim != 1:
        raise ValueError(f"positions must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"positions must be integers, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= n_nll):
        bad = int(array.min()) if array.min() < 0 else int(array.max())
        raise ValueError(f"positions: index {bad} is outside 0..{n_nll - 1} (nll has len(tokens) - 1 = {n_nll} entries)")
    mask = np.zeros(n_nll, dtype=bool)
    mask[array.astype(np.int64)] = True
    return mask


def _runs(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """Maximal runs [start, end) of equal values in mask, as (start, end, value)."""
    if mask.size == 0:
        return []
    edges = np.flatnonzero(mask[1:] != mask[:-1]) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [mask.size]])
    return [(int(a), int(b), bool(mask[a])) for a, b in zip(starts, ends)]


class _Progress:
    """Reports (done, total, running ppl): to a tqdm bar (progress=True) or a callable."""

    def __init__(self, progress: bool | ProgressCallback, total: int, mode: str):
        self.total = total
        self.callback: ProgressCallback | None = None
        self.bar = None
        if progress is True:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"ppl {mode}", unit="tok", dynamic_ncols=True, leave=True)
        elif callable(progress):
            self.callback = progress

    def update(self, done: int, step: int, running_ppl: float) -> None:
        if self.bar is not None:
            self.bar.update(step)
            self.bar.set_postfix(ppl=f"{running_ppl:.3f}", refresh=False)
        elif self.callback is not None:
            self.callback(done, self.total, running_ppl)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def perplexity_run(model: Model, tokens: Sequence[int] | np.ndarray, mode: str = "streaming",
                   n_sink: int | None = None, window: int | None = None, *, batch_size: int = 256,
                   chunk: int = 256, progress: bool | ProgressCallback = False, kv_type: str = "f16",
                   positions: Sequence[int] | np.ndarray | None = None, n_threads: int | None = None,
                   allow_beyond_training_context: bool = False) -> PerplexityRun:
    """perplexity() with its measurements: see PerplexityRun. Arguments as in perplexity()."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be a sinkstream.Model, got {type(model).__name__}")
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    chunk = _check_int("chunk", chunk, 1, 1 << 20)
    if not (isinstance(progress, bool) or callable(progress)):
        raise TypeError(f"progress must be a bool or a callable(done, total, running_ppl), got {type(progress).__name__}")
    array = _token_array(model, tokens)
    n_nll = len(array) - 1
    wanted = _wanted_mask(positions, n_nll)
    # The session validates mode, n_sink, window, batch_size, kv_type, n_threads (naming each).
    session = Session(model, mode=mode, n_sink=n_sink, window=window, batch_size=batch_size, kv_type=kv_type,
                      n_threads=n_threads, allow_beyond_training_context=allow_beyond_training_context)
    if mode == "dense" and n_nll > session.capacity:
        raise ValueError(f"tokens: dense mode holds at most {session.capacity} tokens (window={session.window}) and "
                         f"predicting {len(array)} tokens needs {n_nll}; use fewer tokens or mode='streaming'")

    nll = np.full(n_nll, np.nan, dtype=np.float64)
    targets = array[1:]
    # Only tokens 0..n-2 are fed: the last token is predicted, never used to predict.
    if mode == "recompute":
        # Each segment is fed as one eval: wanted runs with logits, the rest without (no recompute).
        segments = []
        for start, end, want in _runs(wanted):
            step = chunk if want else max(chunk, 1 << 16)
            segments += [(a, min(a + step, end), want) for a in range(start, end, step)]
    else:
        # Cached modes cost the same per token whatever is asked: feed whole chunks, and take
        # logits only for chunks that hold a wanted position (skips the output projection otherwise).
        segments = [(a, min(a + chunk, n_nll), bool(wanted[a:a + chunk].any())) for a in range(0, n_nll, chunk)]

    bar = _Progress(progress, n_nll, mode)
    total, count = 0.0, 0
    started = time.perf_counter()
    try:
        for start, end, want in segments:
            if want:
                logits = session.eval(array[start:end], logits="all")
                rows = np.flatnonzero(wanted[start:end])
                values = token_nll(logits[rows], targets[start + rows])
                del logits
                nll[start + rows] = values
                total += float(values.sum())
                count += len(values)
            else:
                session.eval(array[start:end], logits=None)
            bar.update(end, end - start, math.exp(total / count) if count else math.nan)
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    return PerplexityRun(mode=mode, nll=nll, n_tokens=len(array), n_evaluated=count, seconds=seconds,
                         n_sink=session.n_sink, window=session.window, capacity=session.capacity,
                         kv_bytes=session.kv_bytes)


def perplexity(model: Model, tokens: Sequence[int] | np.ndarray, mode: str = "streaming",
               n_sink: int | None = None, window: int | None = None, *, batch_size: int = 256, chunk: int = 256,
               progress: bool | ProgressCallback = False, kv_type: str = "f16",
               positions: Sequence[int] | np.ndarray | None = None, n_threads: int | None = None,
               allow_beyond_training_context: bool = False) -> np.ndarray:
    """Per-token negative log-likelihood of a token stream under one attention mode (docs/api.md).

    Returns a float64 array of len(tokens) - 1: nll[i] = -log p(tokens[i+1] | A(i)), A(i) being what
    token i attends to in `mode` (docs/streaming.md); perplexity = exp(nll.mean()).

    mode, n_sink, window, batch_size, kv_type, n_threads: as in Model.session (None: its defaults).
    chunk: tokens fed per eval call; bounds memory to chunk * n_vocab float32 logits.
    progress: True for a tqdm bar with the running perplexity, or a callable(done, total,
      running_ppl) called after each chunk (done and total count nll entries).
    positions: nll indices to evaluate (others are NaN). In recompute mode positions not asked for
      are fed without logits, so no re-encoding happens for them: the baseline's cost can be
      measured honestly on a strided subset, e.g. positions=range(0, len(tokens) - 1, 64).
    """
    return perplexity_run(model, tokens, mode, n_sink, window, batch_size=batch_size, chunk=chunk,
                          progress=progress, kv_type=kv_type, positions=positions, n_threads=n_threads,
                          allow_beyond_training_context=allow_beyond_training_context).nll
