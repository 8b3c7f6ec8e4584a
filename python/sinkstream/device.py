"""Where sessions compute: ``"cpu"`` (always) or ``"cuda"`` (a build with the CUDA backend and a
usable NVIDIA GPU). ``Model(path, device="cuda")`` and ``model.session(device=...)`` check here
first, so a missing build or device is one clear error naming what is missing (docs/api.md)."""
from __future__ import annotations

from . import _core

DEVICES = ("cpu", "cuda")

_NOT_BUILT = ("device='cuda': sinkstream was built without CUDA: reinstall with "
              "-C cmake.define.SINKSTREAM_CUDA=ON (e.g. pip install . -C cmake.define.SINKSTREAM_CUDA=ON, "
              "with the CUDA toolkit's nvcc on PATH)")


def cuda_unavailable_reason() -> str | None:
    """None when CUDA sessions can run here; otherwise why not (no CUDA build, no device, no driver)."""
    if not _core.cuda_built():
        return _NOT_BUILT
    if _core.cuda_available():
        return None
    try:  # a CUDA build says why the device is unusable in its compute calls' error
        import numpy as np
        _core.cuda_rms_norm(np.ones((1, 4), np.float32), np.ones(4, np.float32))
    except RuntimeError as e:
        return f"device='cuda': {e}"
    return "device='cuda': no usable CUDA device (no NVIDIA GPU visible, or no driver loaded)"


def check_device(device: str) -> str:
    """device checked: ValueError for an unknown name, RuntimeError when 'cuda' cannot run here."""
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(map(repr, DEVICES))}; got {device!r}")
    if device == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
    return device
