"""Compatibility shim: the NumPy reference forward now lives in reference_forward.py (every model
family, per-layer attention sets). ReferenceLlama is ReferenceModel."""
from __future__ import annotations

from reference_forward import (  # noqa: F401
    QUANTIZED_INPUT_32,
    ReferenceModel,
    attention_set,
    round_input_to_8bit_blocks,
)

ReferenceLlama = ReferenceModel

__all__ = ["QUANTIZED_INPUT_32", "ReferenceLlama", "ReferenceModel", "attention_set", "round_input_to_8bit_blocks"]
