"""sinkstream: StreamingLLM (attention sinks) for GGUF models, constant memory and time per token.

Docs: the public API in docs/api.md, streaming semantics in docs/streaming.md, the command line in docs/cli.md.
"""
from importlib.metadata import PackageNotFoundError, version as _version

from . import _core
from ._core import Cancelled, GGUFError, ModelError
from .gguf_file import GGUFFile, TensorInfo, TensorNotFoundError
from .default_model import default_model_path
from .model import Model, Session
from .batching import BatchScheduler
from .generation import DEFAULT, GenerationStats, SamplingParams
from .chat_template import ChatTemplateError, TemplateLimits
from .perplexity import perplexity


def supported_architectures() -> list[str]:
    """The GGUF architectures (`general.architecture`) this build runs, e.g. "llama", "gemma3"."""
    return [name for name, _ in _core.supported_architectures()]


try:
    __version__ = _version("sinkstream")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["BatchScheduler", "Cancelled", "GGUFError", "ModelError", "GGUFFile", "TensorInfo", "TensorNotFoundError",
           "default_model_path", "Model", "Session",
           "GenerationStats", "SamplingParams", "DEFAULT", "ChatTemplateError", "TemplateLimits", "perplexity",
           "supported_architectures", "__version__"]
