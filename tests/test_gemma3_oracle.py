"""Gemma 3 270M Q4_K_M against llama.cpp's reference outputs (tests/data/gemma3_oracle, see its README).

The tokenizer must agree id for id. The logits cannot agree bit for bit (both engines round matmul
inputs to 8 bits, in blocks and orders of their own), so they are compared with bounds: the bounds
below come from how far three float64 forward passes of the same weights (exact, and with two kinds
of 8-bit rounding) sit from llama.cpp (README, "Expected agreement"), with a margin.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import sinkstream
from sinkstream.device import cuda_unavailable_reason
from sinkstream.texts import tokenize_text

from gemma3_model import gemma3_model  # noqa: F401  (the module-scoped fixture)

ORACLE = Path(__file__).parent / "data" / "gemma3_oracle"
TOKENIZER = json.loads((ORACLE / "tokenizer.json").read_text())
PROMPTS = json.loads((ORACLE / "prompts.json").read_text())
KJV = json.loads((ORACLE / "kjv_ppl.json").read_text())
PROMPT_NAMES = ["p1", "p2", "p3"]  # plain text, Gemma chat turn, 728 KJV tokens (past the 512 window)
WINDOW = 2048  # dense sessions hold every token of these tests
# The logits tests run on the GPU too where one is (tests/test_cuda_forward.py says how the CUDA
# backend differs: float32 matmul inputs, like the exact float64 pass the bounds below were set by).
CUDA_REASON = cuda_unavailable_reason()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(CUDA_REASON is not None, reason=CUDA_REASON or ""))]

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def model(gemma3_model):  # noqa: F811
    return gemma3_model


# -- tokenizer ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", TOKENIZER["cases"], ids=[f"case{i:02d}" for i in range(len(TOKENIZER["cases"]))])
def test_tokenize_matches_llama_cpp(model, case):
    """Every hard string, special-token text parsed and not, with and without BOS."""
    for special in (True, False):
        for add_bos in (False, True):
            key = f"ids{'_bos' if add_bos else ''}_{'special' if special else 'plain'}"
            got = model.tokenize(case["text"], add_bos=add_bos, special=special)
            assert got == case[key], f"{case['text']!r} {key}: got {got}, llama.cpp {case[key]}"
    # tokenizer.ggml.add_bos_token is true: add_bos=None prepends BOS (2), as llama.cpp does
    assert model.tokenize(case["text"]) == case["ids_bos_special"]


def test_special_ids_and_pieces_match_llama_cpp(model):
    assert (model.bos_id, model.eos_id) == (TOKENIZER["bos_id"], TOKENIZER["eos_id"]) == (2, 1)
    wrong = {}
    for token, piece in TOKENIZER["pieces"].items():
        got = model.token_bytes(int(token))
        if got != bytes.fromhex(piece):
            wrong[int(token)] = (got, bytes.fromhex(piece))
    assert not wrong, (f"{len(wrong)} of {len(TOKENIZER['pieces'])} pieces differ (ours, llama.cpp): "
                       f"{dict(list(wrong.items())[:10])}")


def test_detokenize_round_trips_where_llama_cpp_does(model):
    checked = 0
    for case in TOKENIZER["cases"]:
        if case["roundtrip_plain"]:
            assert model.detokenize(case["ids_plain"]) == case["text"]
            checked += 1
    assert checked >= 40


# -- logits after a prompt ------------------------------------------------------------------------

def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    peak = x.max()
    return x - peak - math.log(np.exp(x - peak).sum())


def reference_last(name: str) -> tuple[np.ndarray, np.ndarray, float]:
    """llama.cpp's largest last logits (ids, float64 values; 4096 of them, or all for p2) and the
    log-sum-exp of the whole vector."""
    case = PROMPTS[name]
    full = ORACLE / f"{name}_last_logits_f16.npy"
    if full.exists():
        values = np.load(full).astype(np.float64) + case["last_logits_max"]
        return np.arange(len(values)), values, case["last_logsumexp"]
    ids = np.load(ORACLE / f"{name}_last_top_ids.npy").astype(np.int64)
    values = np.load(ORACLE / f"{name}_last_top_logits.npy").astype(np.float64)
    return ids, values, case["last_logsumexp"]


def kl_divergence(ref_ids: np.ndarray, ref_logprobs: np.ndarray, ours_logprobs: np.ndarray) -> float:
    """KL(llama.cpp || ours). Where only llama.cpp's largest logits are stored, the rest of the
    vocabulary is one bin (holding under 1e-4 of llama.cpp's probability here): a lower bound,
    tight to that mass."""
    p = np.exp(ref_logprobs)
    kl = float(np.sum(p * (ref_logprobs - ours_logprobs[ref_ids])))
    p_rest = 1.0 - p.sum()
    q_rest = 1.0 - np.exp(ours_logprobs[ref_ids]).sum()
    if len(ref_ids) < len(ours_logprobs) and p_rest > 1e-12:
        kl += p_rest * (math.log(p_rest) - math.log(max(q_rest, 1e-300)))
    return kl


# How close two engines that round differently get (README, "Expected agreement"): three float64
# NumPy forward passes of the same weights (exact; with llama.cpp's 8-bit activation rounding
# emulated; with another 8-bit rounding) sit from llama.cpp at KL 0.0046-0.0093, |log-prob
# difference| on llama.cpp's 4096 likeliest tokens up to 0.84 (over p2's whole vocabulary up to 1.0),
# |logit difference| up to 2.0 (p2's logits shift together by up to 1.06, which changes no
# probability). Our engine rounds in its own way too: the bounds are about twice those.
MAX_KL = 0.02
MAX_LOGPROB_DIFF = 1.5
MAX_LOGIT_DIFF = 3.0
# A top-2 gap (llama.cpp's or ours) below NEAR_TIE is a coin toss between engines: the top-2 gaps of
# those three passes differ from llama.cpp's by up to 1.1 at some step (median 0.06-0.16), and their
# top-1 differed at steps where llama.cpp's gap was 0.0, 0.11, 0.22, 0.23 and 0.24, never above.
NEAR_TIE = 0.5


def gap(values) -> float:
    top2 = np.sort(np.asarray(values, dtype=np.float64))[-2:]
    return float(top2[1] - top2[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", PROMPT_NAMES)
def test_last_logits_match_llama_cpp(model, name, device):
    """A dense session with the f16 cache (as the oracle run): the same top-1 (where llama.cpp's is
    not a near-tie), llama.cpp's top 5 among our top 10, KL < MAX_KL, log-probabilities within
    MAX_LOGPROB_DIFF, logits within MAX_LOGIT_DIFF."""
    tokens = np.load(ORACLE / f"{name}_tokens.npy")
    assert tokens.tolist() == PROMPTS[name]["tokens"]
    got = model.session(mode="dense", window=WINDOW, device=device).eval(tokens, logits="last")
    assert got.shape == (model.n_vocab,) == (262144,)
    ids, values, lse = reference_last(name)
    ref_lp = values - lse
    ours_lp = log_softmax(got)
    kl = kl_divergence(ids, ref_lp, ours_lp)
    likeliest = np.argsort(-values, kind="stable")[:4096]
    lp_diff = np.abs(ours_lp[ids] - ref_lp)  # all of p2's vocabulary, the 4096 likeliest of the others
    logit_diff = np.abs(got.astype(np.float64)[ids] - values)
    print(f"{name} ({device}): KL {kl:.2e}, max |log-prob diff| {lp_diff.max():.3f} (top 4096: {lp_diff[likeliest].max():.3f}), "
          f"max |logit diff| {logit_diff.max():.3f} over {len(ids)} ids")
    want_top5 = [i for i, _ in PROMPTS[name]["last_logits_top5"]]
    want_gap = PROMPTS[name]["last_logits_top5"][0][1] - PROMPTS[name]["last_logits_top5"][1][1]
    ours_top10 = np.argsort(-got.astype(np.float64), kind="stable")[:10].tolist()
    if want_gap >= NEAR_TIE:
        assert ours_top10[0] == want_top5[0]
    else:
        assert ours_top10[0] in want_top5[:2]
    assert set(want_top5) <= set(ours_top10), f"llama.cpp's top 5 {want_top5}, our top 10 {ours_top10}"
    assert kl < MAX_KL
    assert lp_diff.max() < MAX_LOGPROB_DIFF
    assert logit_diff.max() < MAX_LOGIT_DIFF


# -- greedy continuations -------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_free_running_greedy_p2_until_first_near_tie(model, device):
    """Our own greedy continuation of p2 (our tokens fed back) equals llama.cpp's up to the first
    near-tie of either engine (llama.cpp's first is at step 12; p1 and p3 have one within 1-4 steps)."""
    case = PROMPTS["p2"]
    session = model.session(mode="dense", window=WINDOW, device=device)
    logits = session.eval(case["tokens"], logits="last")
    got = []
    for step, want in enumerate(case["greedy_ids"]):
        top = case["greedy_step_top5"][step]
        if top["logits"][0] - top["logits"][1] < NEAR_TIE or gap(logits) < NEAR_TIE:
            break
        got.append(int(np.argmax(logits)))
        assert got[-1] == want, f"step {step} gave {got[-1]}, llama.cpp {want} (so far {got})"
        logits = session.eval([got[-1]], logits="last")
    print(f"p2: {len(got)} greedy tokens identical to llama.cpp before the first near-tie: {model.detokenize(got)!r}")
    assert len(got) >= 10


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", PROMPT_NAMES)
def test_greedy_steps_follow_llama_cpp(model, name, device):
    """Along llama.cpp's greedy continuation (its tokens fed back), our top-1 equals llama.cpp's at
    every step that is not a near-tie, and the top-2 gaps agree throughout."""
    case = PROMPTS[name]
    session = model.session(mode="dense", window=WINDOW, device=device)
    logits = session.eval(case["tokens"], logits="last")
    gap_differences, decided = [], 0
    for step, want in enumerate(case["greedy_ids"]):
        top = case["greedy_step_top5"][step]
        first, second = top["ids"][:2]
        want_gap = top["logits"][0] - top["logits"][1]
        gap_differences.append(abs(want_gap - float(logits[first] - logits[second])))
        if want_gap >= NEAR_TIE:
            decided += 1
            top1 = int(np.argmax(logits))
            assert top1 == want, f"{name}: step {step} gave {top1}, llama.cpp {want}"
        logits = session.eval([want], logits="last")
    print(f"{name} ({device}): top-1 equal on all {decided} decided steps; |gap difference| median "
          f"{np.median(gap_differences):.3f}, max {max(gap_differences):.3f}")
    assert decided >= 32
    # the three float64 passes: median 0.06-0.16, max 1.12; our engine: max 2.1 at p3 step 27 (" Jesus",
    # second at 35.5 in llama.cpp, 33.1 in our f16 cache, 35.4 in our f32 cache)
    assert np.median(gap_differences) < 0.3 and max(gap_differences) < 2.5


# -- perplexity -----------------------------------------------------------------------------------

def test_kjv_tokens_match_llama_cpp(model):
    """The perplexity text tokenizes (BOS first, as `sinkstream ppl` does) to llama.cpp's ids."""
    tokens = np.load(ORACLE / "kjv_tokens.npy")
    assert len(tokens) == KJV["n_tokens"] == 1280 and tokens[0] == model.bos_id
    assert tokenize_text(model, KJV["text"], max_tokens=len(tokens)) == tokens.tolist()


# llama.cpp's 8-bit activation rounding costs it 1.3 % of perplexity against exact float64
# arithmetic (README); the float64 pass with that rounding emulated is 0.1 % from llama.cpp, with
# another 8-bit rounding 0.6-0.7 %. An engine that rounds matmul inputs to 8 bits lands within 1 %;
# one that keeps activations in float32 would sit ~1.3 % below and fail this bound.
MAX_PPL_RATIO = 0.01


def test_kjv_dense_perplexity_matches_llama_cpp(model):
    """Dense perplexity over 1,280 KJV tokens (the local layers' 512-token window cuts in after
    token 512) within 1 % of llama.cpp's; the first 512 tokens too; per-token NLLs close."""
    tokens = np.load(ORACLE / "kjv_tokens.npy")
    want = np.load(ORACLE / "kjv_nll.npy")
    nll = sinkstream.perplexity(model, tokens, mode="dense", window=WINDOW)
    assert nll.shape == want.shape == (len(tokens) - 1,)
    ppl, ppl_512 = math.exp(nll.mean()), math.exp(nll[:511].mean())
    diff = np.abs(nll - want)
    print(f"ppl {ppl:.4f} (llama.cpp {KJV['ppl']:.4f}), first 512: {ppl_512:.4f} (llama.cpp "
          f"{KJV['ppl_first_512']:.4f}); |nll diff| median {np.median(diff):.4f}, max {diff.max():.3f}")
    assert abs(ppl / KJV["ppl"] - 1) < MAX_PPL_RATIO
    assert abs(ppl_512 / KJV["ppl_first_512"] - 1) < MAX_PPL_RATIO
    assert abs(math.exp(nll[511:].mean()) / KJV["ppl_positions_512_on"] - 1) < MAX_PPL_RATIO
    # the three float64 passes: median 0.024-0.031, max 1.5-2.2 (a few unlikely tokens move most)
    assert np.median(diff) < 0.06 and diff.max() < 4.0


def test_end_of_generation_tokens_match_llama_cpp(model):
    """Generation stops where llama.cpp's does: <eos>, <end_of_turn> and </s> for Gemma 3."""
    ours = [i for i in range(model.n_vocab) if model.is_end_of_generation(i)]
    assert ours == TOKENIZER["end_of_generation_ids"]
