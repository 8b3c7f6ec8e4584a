"""Gated activations (ops.h silu_mul, gelu_tanh_mul, swiglu_oai_mul) at every ISA level this CPU runs,
against float64 NumPy written from their definitions. The AVX-512 and AVX2 levels replace libm's expf
with a polynomial exp (ops/cpu/activations.h): it must stay within a few float32 ulps of the exact value,
keep inf / NaN / underflow behaviour, and give each element the same bits wherever it sits in a call
(chunked evaluation equals one-shot evaluation)."""
from __future__ import annotations

import numpy as np
import pytest

from sinkstream import _core

LEVELS = _core.cpu_features()["levels"]
ACTIVATIONS = ["swiglu", "geglu", "swiglu_oai"]


def reference(activation: str, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    g, u = gate.astype(np.float64), up.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if activation == "swiglu":
            return g / (1 + np.exp(-g)) * u
        if activation == "geglu":  # gelu with the tanh approximation
            return 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3))) * u
        g, u = np.minimum(g, 7.0), np.clip(u, -7.0, 7.0)  # gpt-oss's clamped SwiGLU, alpha 1.702
        return (u + 1) * g / (1 + np.exp(-1.702 * g))


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_glu_matches_the_float64_definition(activation, isa):
    rng = np.random.default_rng(len(activation))
    gate = np.concatenate([rng.standard_normal(5000) * 4, rng.uniform(-95, 95, 1000)]).astype(np.float32)
    up = rng.standard_normal(gate.size).astype(np.float32)
    got = _core.glu_test(activation, gate, up, isa).astype(np.float64)
    want = reference(activation, gate, up)
    # float32 evaluation: a few ulps of g * (|u| + 1) (the sigmoid's rounding, and exp's own error,
    # move the result by about 2^-22 of it at most where the gate is not saturated).
    scale = np.abs(gate.astype(np.float64)) * (np.abs(up) + 1)
    err = np.abs(got - want)
    assert np.all(err <= 1e-6 * scale + 1e-36), f"max err / scale {np.max(err / (scale + 1e-36)):.3g}"


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
def test_glu_special_values(activation, isa):
    gate = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 89.0, -89.0, 105.0, -105.0, 1e-30, -1e-30, 3e38, -3e38],
                    np.float32)
    up = np.full(gate.shape, 2.0, np.float32)
    got = _core.glu_test(activation, gate, up, isa)
    with np.errstate(over="ignore"):
        want = reference(activation, gate, up).astype(np.float32)  # what float32 can hold: 6e38 is inf
    # NaN in, NaN out; -inf gives NaN too (-inf / inf in the formula, as with libm's expf).
    assert np.array_equal(np.isnan(got), np.isnan(want) | np.isneginf(gate)), (got, want)
    ok = ~np.isnan(got)
    # Results below 1e-36 may flush to zero: e^89 overflows float32, so silu(-89) is -0, not -4e-37.
    assert np.allclose(got[ok], want[ok], rtol=1e-6, atol=1e-36), (got, want)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_glu_value_does_not_depend_on_its_place_in_the_call(activation, isa):
    rng = np.random.default_rng(7)
    gate = (rng.standard_normal(1000) * 5).astype(np.float32)
    up = rng.standard_normal(1000).astype(np.float32)
    whole = _core.glu_test(activation, gate, up, isa)
    cuts = np.sort(rng.choice(np.arange(1, 1000), size=40, replace=False))
    pieces = [_core.glu_test(activation, g, u, isa) for g, u in zip(np.split(gate, cuts), np.split(up, cuts))]
    assert np.array_equal(np.concatenate(pieces), whole)
