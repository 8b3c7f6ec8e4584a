"""Sampler against a NumPy reference written from the chain's definition (llama.cpp's order).

The reference applies the steps literally in llama.cpp's order (top-k -> top-p -> min-p) and sorts
the whole vocabulary; the engine reorders min-p before top-p and partially sorts, so agreement checks
both the equivalence argument and the partial-sort bookkeeping. The random stream is checked against
a pure-Python xoshiro256** (Blackman & Vigna) seeded with splitmix64.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from sinkstream._core import Sampler

F32 = np.float32
MASK64 = (1 << 64) - 1

# Options that switch every filter off: a plain softmax at temperature 1.
PLAIN = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)


# ---- the reference -------------------------------------------------------------------------------

def penalized_logits(logits, *, repeat_penalty=1.0, repeat_last_n=64, frequency_penalty=0.0,
                     presence_penalty=0.0, logit_bias=None, history=()):
    """Logit bias, then penalties over the distinct tokens of the last repeat_last_n accepted tokens."""
    w = np.array(logits, dtype=F32, copy=True)
    for token, bias in (logit_bias or {}).items():
        w[token] = w[token] + F32(bias)
    window = list(history)[-repeat_last_n:] if repeat_last_n > 0 else []
    if repeat_penalty != 1.0 or frequency_penalty != 0.0 or presence_penalty != 0.0:
        for token, count in Counter(window).items():
            if w[token] <= 0:
                w[token] = w[token] * F32(repeat_penalty)
            else:
                w[token] = w[token] / F32(repeat_penalty)
            w[token] = w[token] - (F32(count) * F32(frequency_penalty) + F32(presence_penalty))
    return w


def reference_chain(logits, *, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, history=(), **penalties):
    """Returns (probabilities float64 (n_vocab,), draw order of the survivors as the engine walks it)."""
    w = penalized_logits(logits, history=history, **penalties)
    n = len(w)
    probs = np.zeros(n)
    if temperature == 0:
        probs[int(np.argmax(w))] = 1.0  # np.argmax returns the first (lowest id) of tied maxima
        return probs, None
    ids = np.arange(n)
    finite = ids[w > -np.inf]
    # Sorted by logit descending, then id ascending.
    cand = finite[np.lexsort((finite, -w[finite].astype(np.float64)))]
    top_k_cut = 0 < top_k < len(cand)
    if top_k_cut:
        cand = cand[:top_k]
    if top_p < 1.0:
        p = np.exp(w[cand].astype(np.float64) - float(w[cand[0]]))
        p /= p.sum()
        cumulative = np.cumsum(p)
        reached = np.nonzero(cumulative >= top_p)[0]
        if len(reached):
            cand = cand[: reached[0] + 1]
    if min_p > 0.0:
        threshold = w[cand[0]] + np.log(F32(min_p))
        cand = cand[w[cand] >= threshold]
    weights = np.exp((w[cand] - w[cand[0]]).astype(np.float64) / float(F32(temperature)))
    probs[cand] = weights / weights.sum()
    order = cand if (top_k_cut or top_p < 1.0) else np.sort(cand)
    return probs, order


class Xoshiro256StarStar:
    """xoshiro256** 1.0 seeded by four splitmix64 outputs, as specified by its authors."""

    def __init__(self, seed: int):
        state = seed
        self.s = []
        for _ in range(4):
            state = (state + 0x9E3779B97F4A7C15) & MASK64
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
            self.s.append(z ^ (z >> 31))

    @staticmethod
    def _rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & MASK64

    def next(self) -> int:
        s = self.s
        result = (self._rotl((s[1] * 5) & MASK64, 7) * 9) & MASK64
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return result

    def uniform(self) -> float:
        return (self.next() >> 11) * 2.0**-53


def random_logits(n, seed, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(F32)


def make_sampler(n_vocab, history=(), **opts):
    s = Sampler(n_vocab, **opts)
    for token in history:
        s.accept(token)
    return s


def split_penalties(opts):
    keys = ("temperature", "top_k", "top_p", "min_p")
    return {k: opts[k] for k in keys if k in opts}, {k: v for k, v in opts.items() if k not in keys}


def assert_matches_reference(logits, history=(), **opts):
    sampler_opts = dict(opts)
    s = make_sampler(len(logits), history=history, seed=1, **sampler_opts)
    got = s.probabilities(logits)
    want, _ = reference_chain(logits, history=history, **opts)
    np.testing.assert_array_equal(np.nonzero(got)[0], np.nonzero(want)[0], err_msg=f"support differs for {opts}")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=f"probabilities differ for {opts}")
    return got


# ---- the distribution ----------------------------------------------------------------------------

CHAINS = [
    PLAIN,
    dict(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=1.0, top_k=5, top_p=1.0, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=0.3, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.05),
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),  # the defaults
    dict(temperature=1.5, top_k=200, top_p=0.8, min_p=0.01),
    dict(temperature=0.5, top_k=3, top_p=0.5, min_p=0.5),
    dict(temperature=1.0, top_k=0, top_p=0.999, min_p=0.0),  # the growing sorted prefix must pass 64, 256, ...
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=1.0),   # only the maximum survives
]


@pytest.mark.parametrize("opts", CHAINS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("seed", [0, 1])
def test_probabilities_match_reference(opts, seed):
    assert_matches_reference(random_logits(2000, seed), **opts)


def test_large_vocab_matches_reference():
    """A Qwen-sized vocabulary (its speed is benchmarks/bench_sampler.py's job, not a unit test's)."""
    logits = random_logits(151_936, 7, scale=2.0)
    for opts in (dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
                 dict(temperature=1.0, top_k=0, top_p=0.5, min_p=0.0)):
        assert_matches_reference(logits, **opts)


def test_draws_follow_the_distribution():
    """Empirical frequencies: only tokens of the reference support are drawn, at the reference rates."""
    logits = random_logits(60, 11, scale=1.5)
    for opts in (dict(temperature=1.0, top_k=12, top_p=0.9, min_p=0.02),
                 dict(temperature=0.6, top_k=0, top_p=1.0, min_p=0.1),
                 dict(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0)):
        want, _ = reference_chain(logits, **opts)
        s = Sampler(len(logits), seed=12345, **opts)
        n = 20_000
        counts = np.bincount([s.sample(logits) for _ in range(n)], minlength=len(logits))
        support = np.nonzero(want)[0]
        assert set(np.nonzero(counts)[0]) <= set(support), f"drew a filtered token with {opts}"
        expected = want[support] * n
        chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
        dof = len(support) - 1
        # Chi-square with dof degrees of freedom: mean dof, sd sqrt(2 dof); 6 sd is a p < 1e-6 bound.
        assert chi2 < dof + 6 * math.sqrt(2 * max(dof, 1)) + 10, f"chi2 {chi2:.1f} for {dof} dof with {opts}"


def test_draw_sequence_follows_xoshiro_and_canonical_order():
    """Token i = first survivor (in the documented order) whose cumulative weight exceeds u_i * total."""
    logits = random_logits(500, 5)
    for opts in (dict(PLAIN), dict(temperature=0.9, top_k=30, top_p=1.0, min_p=0.0),
                 dict(temperature=0.9, top_k=0, top_p=0.8, min_p=0.0),
                 dict(temperature=0.9, top_k=0, top_p=1.0, min_p=0.05)):
        for seed in (0, 42, 2**64 - 1):
            probs, order = reference_chain(logits, **opts)
            rng = Xoshiro256StarStar(seed)
            s = Sampler(len(logits), seed=seed, **opts)
            cumulative = np.cumsum(probs[order])
            for _ in range(200):
                u = rng.uniform()
                want = int(order[min(np.searchsorted(cumulative, u * cumulative[-1], side="right"), len(order) - 1)])
                assert s.sample(logits) == want, f"seed {seed}, {opts}"


def test_top_k_ties_keep_lowest_ids():
    logits = np.zeros(100, dtype=F32)
    logits[[70, 80]] = -1.0
    s = Sampler(100, temperature=1.0, top_k=3, top_p=1.0, min_p=0.0, seed=0)
    probs = s.probabilities(logits)
    assert set(np.nonzero(probs)[0]) == {0, 1, 2}
    assert {s.sample(logits) for _ in range(300)} == {0, 1, 2}


def top_k_cut_cases():
    """Logits where the engine's cut before top-k (the k-th largest of 64-entry block maxima: every
    one of the k best reaches it) meets ties, banned tokens and a short last block."""
    rng = np.random.default_rng(3)
    ties = np.zeros(1000, dtype=F32)               # every block maximum equal, ties everywhere
    ties[rng.choice(1000, 30, replace=False)] = 1.0
    few_blocks = np.full(300, -np.inf, dtype=F32)  # 5 blocks, finite values in 2 of them: k > blocks
    few_blocks[[1, 2, 3, 200, 201, 299]] = [0.5, 0.5, 0.1, 0.9, 0.5, 0.7]
    one_block = rng.standard_normal(1000).astype(F32) - 10.0  # the best all in one block
    one_block[128:192] = rng.standard_normal(64).astype(F32)
    quantized = np.round(rng.standard_normal(4099) * 2).astype(F32)  # coarse values: ties at the k-th
    banned = rng.standard_normal(4099).astype(F32)
    banned[rng.choice(4099, 4000, replace=False)] = -np.inf
    return {"ties": ties, "few_blocks": few_blocks, "one_block": one_block, "quantized": quantized,
            "banned": banned}


@pytest.mark.parametrize("case", sorted(top_k_cut_cases()))
@pytest.mark.parametrize("top_k", [1, 3, 40, 64, 99])
def test_top_k_cut_keeps_the_reference_support(case, top_k):
    logits = top_k_cut_cases()[case]
    assert_matches_reference(logits, temperature=1.0, top_k=top_k, top_p=1.0, min_p=0.0)
    assert_matches_reference(logits, temperature=0.8, top_k=top_k, top_p=0.95, min_p=0.05)


def test_top_k_larger_than_the_finite_candidates():
    logits = np.full(50, -np.inf, dtype=F32)
    logits[[3, 9]] = [1.0, 2.0]
    got = assert_matches_reference(logits, temperature=1.0, top_k=10, top_p=1.0, min_p=0.0)
    assert set(np.nonzero(got)[0]) == {3, 9}


def test_top_p_keeps_the_token_that_crosses_the_threshold():
    # Probabilities 0.5, 0.3, 0.2 (logits are their logs): top_p 0.6 needs the first two.
    logits = np.log(np.array([0.2, 0.5, 0.3], dtype=np.float64)).astype(F32)
    s = Sampler(3, temperature=1.0, top_k=0, top_p=0.6, min_p=0.0, seed=0)
    probs = s.probabilities(logits)
    np.testing.assert_allclose(probs, [0.0, 0.625, 0.375], rtol=1e-6)


def test_min_p_threshold_is_relative_to_the_best_token():
    # p = 0.5, 0.3, 0.15, 0.05 -> min_p 0.2 keeps p >= 0.1.
    p = np.array([0.05, 0.5, 0.15, 0.3])
    logits = np.log(p).astype(F32)
    probs = Sampler(4, temperature=1.0, top_k=0, top_p=1.0, min_p=0.2, seed=0).probabilities(logits)
    np.testing.assert_allclose(probs, [0.0, 0.5 / 0.95, 0.15 / 0.95, 0.3 / 0.95], rtol=1e-6)


def test_temperature_scales_log_probabilities():
    logits = random_logits(30, 3)
    for t in (0.25, 1.0, 3.0):
        probs = Sampler(30, temperature=t, top_k=0, top_p=1.0, min_p=0.0, seed=0).probabilities(logits)
        z = logits.astype(np.float64) / t
        want = np.exp(z - z.max())
        np.testing.assert_allclose(probs, want / want.sum(), rtol=1e-5, atol=1e-8)


# ---- greedy, penalties, bias ---------------------------------------------------------------------

def test_greedy_is_argmax_and_ignores_the_seed():
    logits = random_logits(1000, 9)
    for seed in (0, 1, 99):
        s = Sampler(1000, temperature=0.0, seed=seed)
        assert all(s.sample(logits) == int(np.argmax(logits)) for _ in range(5))
    probs = Sampler(1000, temperature=0.0).probabilities(logits)
    assert probs[int(np.argmax(logits))] == 1.0 and probs.sum() == 1.0


@pytest.mark.parametrize("n", [1, 7, 8, 63, 64, 65, 127, 129, 1000])
def test_greedy_finds_the_first_maximum_across_blocks(n):
    """The engine looks for the maximum block by block (64 ids each, the last one shorter): the
    first maximum must come out wherever it lies, ties in later blocks and banned ids around it."""
    rng = np.random.default_rng(n)
    for pos in sorted({0, n // 2, n - 1, min(n - 1, 63), min(n - 1, 64)}):
        logits = rng.standard_normal(n).astype(F32) - 10.0
        logits[rng.random(n) < 0.3] = -np.inf
        logits[pos] = 5.0
        logits[pos + 1:][rng.random(n - pos - 1) < 0.1] = 5.0  # ties after it
        assert Sampler(n, temperature=0.0).sample(logits) == pos, f"n {n}, first maximum at {pos}"
        assert int(np.argmax(Sampler(n, temperature=0.0).probabilities(logits))) == pos


def test_greedy_ties_pick_the_lowest_id():
    logits = np.zeros(10, dtype=F32)
    logits[[4, 7, 2]] = 5.0
    assert Sampler(10, temperature=0.0).sample(logits) == 2


def test_greedy_sees_bias_and_penalties():
    logits = np.array([1.0, 3.0, 2.5, -1.0], dtype=F32)
    assert Sampler(4, temperature=0.0, logit_bias={2: 1.0}).sample(logits) == 2
    s = Sampler(4, temperature=0.0, repeat_penalty=1.5)
    s.accept(1)  # 3.0 / 1.5 = 2.0 < 2.5
    assert s.sample(logits) == 2


def test_penalties_match_reference():
    logits = random_logits(300, 4)
    rng = np.random.default_rng(0)
    # Repeated tokens, positive and negative logits, and a window shorter than the history.
    history = [int(t) for t in rng.integers(0, 40, size=50)] + [int(np.argmax(logits)), int(np.argmin(logits))] * 3
    for penalties in (dict(repeat_penalty=1.3, repeat_last_n=8),
                      dict(repeat_penalty=0.8, repeat_last_n=64),
                      dict(frequency_penalty=0.5, presence_penalty=0.7, repeat_last_n=16),
                      dict(repeat_penalty=1.1, frequency_penalty=0.2, presence_penalty=-0.3, repeat_last_n=1000)):
        assert_matches_reference(logits, history=history, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, **penalties)
        assert_matches_reference(logits, history=history, temperature=0.7, top_k=20, top_p=0.9, min_p=0.01, **penalties)


def test_penalty_arithmetic_by_hand():
    # Token 0 (logit 2) seen twice, token 1 (logit -2) once; repeat 2, frequency 0.25, presence 0.5.
    logits = np.array([2.0, -2.0, 0.0], dtype=F32)
    s = make_sampler(3, history=[0, 1, 0], temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=2.0,
                     frequency_penalty=0.25, presence_penalty=0.5)
    expected_logits = np.array([2.0 / 2 - (2 * 0.25 + 0.5), -2.0 * 2 - (0.25 + 0.5), 0.0])
    want = np.exp(expected_logits - expected_logits.max())
    np.testing.assert_allclose(s.probabilities(logits), want / want.sum(), rtol=1e-6)


def test_penalty_window_and_history():
    s = Sampler(10, repeat_last_n=3)
    for t in (1, 2, 3, 4, 5):
        s.accept(t)
    assert s.history == [3, 4, 5]
    s.reset()
    assert s.history == []
    assert Sampler(10, repeat_last_n=0).history == []
    big = Sampler(10, repeat_last_n=2**31 - 1)  # the window fills as tokens come, no upfront buffer
    for t in range(20):
        big.accept(t % 10)
    assert big.history == [t % 10 for t in range(20)]
    off = Sampler(10, repeat_last_n=0, repeat_penalty=2.0, **PLAIN)
    off.accept(1)
    logits = random_logits(10, 1)
    np.testing.assert_allclose(off.probabilities(logits), reference_chain(logits, **PLAIN)[0], rtol=1e-6)


def test_logit_bias_shifts_and_bans():
    logits = random_logits(40, 2)
    bias = {int(np.argmax(logits)): -np.inf, 5: 2.5, 6: -1.25}
    got = assert_matches_reference(logits, logit_bias=bias, **PLAIN)
    assert got[int(np.argmax(logits))] == 0.0
    s = Sampler(40, logit_bias=bias, seed=4, **PLAIN)
    assert int(np.argmax(logits)) not in {s.sample(logits) for _ in range(2000)}


def test_logits_may_be_minus_inf():
    logits = np.full(8, -np.inf, dtype=F32)
    logits[6] = 0.0
    for opts in (PLAIN, dict(temperature=0.0), dict(temperature=1.0, top_k=2, top_p=0.5, min_p=0.5)):
        assert Sampler(8, seed=0, **opts).sample(logits) == 6


# ---- seeds ---------------------------------------------------------------------------------------

def test_same_seed_same_sequence_and_reset_restarts_it():
    logits = random_logits(1000, 8, scale=1.0)
    a = Sampler(1000, seed=1234, **PLAIN)
    b = Sampler(1000, seed=1234, **PLAIN)
    first = [a.sample(logits) for _ in range(100)]
    assert first == [b.sample(logits) for _ in range(100)]
    a.reset()
    assert [a.sample(logits) for _ in range(100)] == first
    c = Sampler(1000, seed=1235, **PLAIN)
    assert [c.sample(logits) for _ in range(100)] != first
    assert a.seed == 1234


def test_seed_none_draws_a_random_seed():
    seeds = {Sampler(10).seed for _ in range(4)}
    assert len(seeds) > 1


def test_probabilities_do_not_advance_the_stream():
    logits = random_logits(100, 8, scale=1.0)
    a = Sampler(100, seed=5, **PLAIN)
    b = Sampler(100, seed=5, **PLAIN)
    a.probabilities(logits)
    assert [a.sample(logits) for _ in range(20)] == [b.sample(logits) for _ in range(20)]


def test_accepts_non_contiguous_free_float64_input_by_conversion():
    logits64 = random_logits(64, 1).astype(np.float64)
    s = Sampler(64, temperature=0.0)
    assert s.sample(logits64) == int(np.argmax(logits64))


# ---- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    (dict(temperature=-0.1), ["temperature", "-0.1"]),
    (dict(temperature=float("nan")), ["temperature", "nan"]),
    (dict(top_k=-1), ["top_k", "-1"]),
    (dict(top_p=0.0), ["top_p", "0"]),
    (dict(top_p=1.5), ["top_p", "1.5"]),
    (dict(min_p=-0.01), ["min_p", "-0.01"]),
    (dict(min_p=1.01), ["min_p", "1.01"]),
    (dict(repeat_penalty=0.0), ["repeat_penalty", "0"]),
    (dict(repeat_penalty=-1.0), ["repeat_penalty", "-1"]),
    (dict(repeat_last_n=-1), ["repeat_last_n", "-1"]),
    (dict(frequency_penalty=float("inf")), ["frequency_penalty", "inf"]),
    (dict(presence_penalty=float("nan")), ["presence_penalty", "nan"]),
    (dict(logit_bias={100: 1.0}), ["logit_bias", "100"]),
    (dict(logit_bias={-1: 1.0}), ["logit_bias", "-1"]),
    (dict(logit_bias={3: float("inf")}), ["logit_bias", "inf"]),
    (dict(logit_bias={3: float("nan")}), ["logit_bias", "nan"]),
    (dict(seed=-5), ["seed", "-5"]),
    (dict(seed=2**64), ["seed", str(2**64)]),
])
def test_bad_parameters_name_the_parameter_and_value(kwargs, words):
    with pytest.raises(ValueError) as info:
        Sampler(100, **kwargs)
    for word in words:
        assert word in str(info.value), f"{info.value!r} does not mention {word!r}"


def test_bad_calls():
    with pytest.raises(ValueError, match="n_vocab"):
        Sampler(0)
    with pytest.raises(TypeError, match="seed"):
        Sampler(10, seed="1")
    s = Sampler(10, seed=0, **PLAIN)
    with pytest.raises(ValueError, match="11 entries.*n_vocab 10"):
        s.sample(np.zeros(11, dtype=F32))
    bad = np.zeros(10, dtype=F32)
    bad[4] = np.nan
    with pytest.raises(ValueError, match=r"logits\[4\] is nan"):
        s.sample(bad)
    bad[4] = np.inf
    with pytest.raises(ValueError, match=r"logits\[4\] is inf"):
        s.sample(bad)
    with pytest.raises(ValueError, match="-inf"):
        s.sample(np.full(10, -np.inf, dtype=F32))
    with pytest.raises(ValueError, match="-inf"):
        Sampler(10, temperature=0.0).sample(np.full(10, -np.inf, dtype=F32))
    with pytest.raises(ValueError, match="token id 10"):
        s.accept(10)
    with pytest.raises(TypeError):
        s.sample(np.zeros((2, 5), dtype=F32))
