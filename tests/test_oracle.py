"""The default model against llama.cpp's reference outputs (tests/data/smollm2_oracle, see its README)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import sinkstream

ORACLE = Path(__file__).resolve().parent / "data" / "smollm2_oracle"
pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def model(default_model_path):
    return sinkstream.Model(default_model_path)


@pytest.fixture(scope="module")
def prompts():
    return json.loads((ORACLE / "prompts.json").read_text())


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def kl_divergence(p_logits, q_logits):
    p, q = softmax(p_logits.astype(np.float64)), softmax(q_logits.astype(np.float64))
    return float(np.sum(p * (np.log(p + 1e-300) - np.log(q + 1e-300))))


@pytest.mark.parametrize("name", ["p1", "p3"])
def test_last_logits_match_llama_cpp(model, name):
    """The default session (f16 cache, as the oracle run): top-1 equal, KL < 0.01, max |logit
    difference| < 1 (oracle README). Like llama.cpp, the engine rounds matmul inputs to 8-bit
    blocks, so it sits about as far from the float32 reference as llama.cpp does."""
    tokens = np.load(ORACLE / f"{name}_tokens.npy")
    llama = np.load(ORACLE / f"{name}_last_logits.npy")
    got = model.session().eval(tokens, logits="last")
    kl = kl_divergence(llama, got)
    print(f"{name}: max|d| vs llama.cpp {np.abs(got - llama).max():.3f}, KL {kl:.2e}")
    assert got.argmax() == llama.argmax()
    assert kl < 0.01
    assert np.abs(got - llama).max() < 1.0


@pytest.mark.parametrize("name", ["p1", "p3"])
def test_last_logits_match_float32_reference(model, name):
    """A float32 cache against the float32 reference (transformers on the same GGUF)."""
    tokens = np.load(ORACLE / f"{name}_tokens.npy")
    f32ref = np.load(ORACLE / f"f32ref_{name}_last_logits.npy")
    got = model.session(kv_type="f32").eval(tokens, logits="last")
    kl = kl_divergence(f32ref, got)
    print(f"{name}: max|d| vs f32ref {np.abs(got - f32ref).max():.3f}, KL {kl:.2e}")
    assert got.argmax() == f32ref.argmax()
    assert kl < 0.01


def near_tie(step_top5, margin):
    return step_top5["logits"][0] - step_top5["logits"][1] < margin


# Our own top-2 gap at a step moves by up to ~0.1 between our ISA levels (kernels that sum in
# another order round other 8-bit codes; p1 step 14: gap 0.06 for 34 over 33 at one level, 0.006
# for 33 over 34 at another): below that, our argmax is a coin toss whatever llama.cpp says.
OWN_NEAR_TIE = 0.1


def test_free_running_greedy_p1_until_first_near_tie(model, prompts):
    """Our own greedy continuation of p1 (our tokens fed back) equals llama.cpp's up to the first
    near-tie of either engine: a top-2 gap below 0.05 in llama.cpp's, or below OWN_NEAR_TIE in ours."""
    case = prompts["p1"]
    session = model.session()
    logits = session.eval(case["tokens"], logits="last")
    got = []
    for step, want in enumerate(case["greedy_ids"]):
        top2 = np.sort(logits)[-2:]
        if near_tie(case["greedy_step_top5"][step], 0.05) or top2[1] - top2[0] < OWN_NEAR_TIE:
            break
        got.append(int(np.argmax(logits)))
        assert got[-1] == want, f"step {step} gave {got[-1]}, llama.cpp {want} (so far {got})"
        logits = session.eval([got[-1]], logits="last")
    print(f"p1: {len(got)} greedy tokens identical to llama.cpp before the first near-tie")
    assert len(got) >= 10


# The two engines' top-2 gaps differ by up to ~0.6 at some steps (median ~0.09): both round every
# matmul input to 8 bits, and which values round up flips with float summation order, then grows
# through 30 layers. A step whose llama.cpp gap is below that is a coin toss between the engines.
GAP_DISAGREEMENT = 0.6


@pytest.mark.parametrize("name", ["p1", "p3"])
def test_greedy_steps_follow_llama_cpp(model, prompts, name):
    """Along llama.cpp's greedy continuation (its tokens fed back), our top-1 equals llama.cpp's at
    every step that is not a coin toss, and the top-2 gaps agree closely throughout."""
    case = prompts[name]
    session = model.session()
    logits = session.eval(case["tokens"], logits="last")
    gap_differences, decided = [], 0
    for step, want in enumerate(case["greedy_ids"]):
        top = case["greedy_step_top5"][step]
        first, second = top["ids"][:2]
        gap_differences.append(abs((top["logits"][0] - top["logits"][1]) - float(logits[first] - logits[second])))
        if not near_tie(top, GAP_DISAGREEMENT):
            decided += 1
            assert int(np.argmax(logits)) == want, f"{name}: step {step} gave {int(np.argmax(logits))}, llama.cpp {want}"
        logits = session.eval([want], logits="last")
    print(f"{name}: top-1 equal on all {decided} decided steps; |gap difference| median "
          f"{np.median(gap_differences):.3f}, max {max(gap_differences):.3f}")
    assert decided >= 32
    assert np.median(gap_differences) < 0.2 and max(gap_differences) < 1.0
