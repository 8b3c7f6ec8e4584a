"""Model and Session: the Python face of the engine (see docs/api.md and docs/streaming.md).

The Python layer validates arguments and holds handles to C++ objects; all compute happens in
`_core` with the GIL released.
"""
from __future__ import annotations

import inspect
import json
import os
import warnings
import weakref
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from . import _core
from .default_model import default_model_path
from .device import check_device
from .generation import DEFAULT, GenerationStats, SamplingParams, _Default, resolve_sampling_params

MODES = ("streaming", "window", "dense", "recompute")
KV_TYPES = ("f16", "f32", "q8_0")  # K/V cache storage: q8_0 is GGML's 8-bit blocks (head_dim % 32 == 0)
_LOGITS = ("last", "all", None)


_R = TypeVar("_R")
if TYPE_CHECKING:  # typing.ParamSpec is Python 3.10+; only type checkers need it
    from typing import ParamSpec

    _P = ParamSpec("_P")


def _options_of(sync: Callable[_P, object]) -> Callable[[Callable[..., _R]], Callable[_P, _R]]:
    """Declares that the decorated method (generate, or an async twin) takes exactly the arguments of `sync`:
    type checkers and help() see every option, and a misspelled one is an error. The method itself
    is unchanged (it forwards its arguments, which are checked when it is called)."""
    def declare(method: Callable[..., _R]) -> Callable[_P, _R]:
        method.__signature__ = inspect.signature(sync).replace(  # type: ignore[attr-defined]
            return_annotation=inspect.signature(method).return_annotation)
        return method
    return declare


def _check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def token_array(tokens: Sequence[int] | np.ndarray, n_vocab: int, name: str = "tokens") -> np.ndarray:
    """tokens as a contiguous int32 array, after checking it is a 1-D sequence of ids in the vocabulary."""
    if isinstance(tokens, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of token ids, not text (use model.tokenize)")
    if isinstance(tokens, list) and len(tokens) <= 4 and all(type(t) is int for t in tokens):
        # A decode step's one token: checked in Python, far cheaper than NumPy's reductions.
        for t in tokens:
            if not 0 <= t < n_vocab:
                raise ValueError(f"{name}: token id {t} is outside the vocabulary (0..{n_vocab - 1})")
        return np.array(tokens, dtype=np.int32)
    array = np.asarray(tokens)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {array.dtype}")
    if array.size:
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi >= n_vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name}: token id {bad} is outside the vocabulary (0..{n_vocab - 1})")
    return np.ascontiguousarray(array, dtype=np.int32)


def _decode_chat_state(app_data: bytes) -> tuple[list | None, tuple | None]:
    """The chat history and record saved with a session (Session.save), checked field by field."""
    try:
        fields = json.loads(app_data.decode("utf-8"))
        if not isinstance(fields, dict) or set(fields) != {"chat_history", "chat_record"}:
            raise ValueError(f"expected the fields chat_history and chat_record, got {fields!r:.80}")
        history, record = fields["chat_history"], fields["chat_record"]
        if history is not None:
            if not isinstance(history, list) or not all(
                    isinstance(m, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in m.items())
                    for m in history):
                raise ValueError("chat_history must be a list of {str: str} messages")
        if record is not None:
            if (not isinstance(record, list) or len(record) != 3 or not isinstance(record[0], str)
                    or not isinstance(record[1], str) or isinstance(record[2], bool) or not isinstance(record[2], int)
                    or not 0 <= record[2] < 2**64):
                raise ValueError(f"chat_record must be [text, hex bytes, n_past], got {record!r:.80}")
            record = (record[0], bytes.fromhex(record[1]), record[2])
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"session state is corrupt: chat state: {e}") from None
    return history, record


def _session_args(model: "Model", mode: str, n_sink: int | None, window: int | None, batch_size: int, kv_type: str,
                  n_threads: int | None, position_offset: int) -> dict[str, Any]:
    """Session options checked and with their defaults, as _core.Session takes them."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be a sinkstream.Model, got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if n_sink is None:
        n_sink = 4 if mode == "streaming" else 0
    n_sink = _check_int("n_sink", n_sink, 0, 2**63 - 1)
    if mode != "streaming" and n_sink != 0:
        raise ValueError(f"mode {mode!r} keeps no attention sinks: n_sink must be 0 (or None), got {n_sink}")
    # Upper bounds: the native sizes are int64 (past them nanobind would only dump its signature).
    window = -1 if window is None else _check_int("window", window, 1, 2**63 - 1)
    batch_size = _check_int("batch_size", batch_size, 1, 65536)
    if kv_type not in KV_TYPES:
        raise ValueError(f"kv_type must be 'f16', 'f32' or 'q8_0', got {kv_type!r}")
    n_threads = model.n_threads if n_threads is None else _check_int("n_threads", n_threads, 1, 1024)
    position_offset = _check_int("position_offset", position_offset, 0, 2**62)
    return dict(mode=mode, n_sink=n_sink, window=window, batch_size=batch_size, kv_type=kv_type, n_threads=n_threads,
                position_offset=position_offset)


class Model:
    """A GGUF model loaded once (weights memory-mapped) and shared by any number of sessions.

    path=None loads the default model (fetched once into the user cache). n_threads=None uses the
    physical cores for each session's compute. device: where its sessions compute by default, "cpu"
    or "cuda" (RuntimeError here, naming what is missing, when CUDA cannot run: docs/api.md, "GPU").
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, n_threads: int | None = None,
                 device: str = "cpu"):
        self.device = check_device(device)  # sessions' default: "cpu" or "cuda" (sinkstream/device.py)
        if path is None:
            path = default_model_path()
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"model file not found: {path}")
        if os.path.isdir(path):
            raise IsADirectoryError(f"expected a GGUF model file, got a directory: {path}")
        self.n_threads = _core.default_thread_count() if n_threads is None else _check_int("n_threads", n_threads, 1, 1024)
        self.path = path
        self._handle: _core.Model | None = _core.Model.load(path)
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._schedulers: weakref.WeakSet[Any] = weakref.WeakSet()  # BatchSchedulers of this model
        self._metadata: dict[str, Any] | None = None
        # device="cuda": the weights stay on the GPU between sessions (uploaded by the first one);
        # otherwise each generate() or session would upload them again.
        self._cuda_weights = _core.cuda_retain_weights(self._handle) if self.device == "cuda" else None

    @property
    def _core(self) -> Any:  # _core.Model
        handle = getattr(self, "_handle", None)
        if handle is None:
            raise RuntimeError(f"this Model ({self.path!r}) is closed: close() released its weights; "
                               "load it again with sinkstream.Model(path)")
        return handle

    # -- lifetime --------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return getattr(self, "_handle", None) is None

    def close(self) -> None:
        """Releases the model now: closes every session made from it (their K/V caches are freed
        and using them raises RuntimeError, as does using the model) and unmaps the weights, even
        while other Python references to the model or its sessions remain. A generator still
        running on one of its sessions raises RuntimeError at its next step. Idempotent.
        `with sinkstream.Model(path) as model:` closes it at the end of the block."""
        for scheduler in list(self._schedulers):
            scheduler.close()
        for session in list(self._sessions):
            session._close()
        self._sessions.clear()
        self._cuda_weights = None
        self._handle = None

    def __enter__(self) -> "Model":
        self._core  # raises if closed
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def _tokenizer(self) -> Any:  # _core.Tokenizer (the _core property shadows the module here)
        return self._core.tokenizer

    # -- facts -----------------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        """Rows of the token embedding: the length of each logits vector. May exceed
        n_tokenizer_vocab (padding rows past the tokenizer's tokens)."""
        return self._core.n_vocab

    @property
    def n_tokenizer_vocab(self) -> int:
        """Tokens the tokenizer knows (ids 0 .. n_tokenizer_vocab - 1): the only ids generation
        samples. Embedding rows past it are padding, masked in sampling."""
        return self._tokenizer.n_vocab

    @property
    def n_ctx_train(self) -> int:
        return self._core.n_ctx_train

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            from .gguf_file import GGUFFile

            self._metadata = GGUFFile(self.path).metadata
        return self._metadata

    @property
    def architecture(self) -> str:
        return self._core.architecture

    @property
    def layers(self) -> list[dict[str, Any]]:
        """Per-layer configuration: sliding_window (0: global), rope (None: NoPE; yarn_factor 0: no YaRN),
        qk_norm, post_norms, activation (swiglu, geglu, gelu, gelu_tanh, swiglu_oai), attention_scale,
        attention_softcap, learned_sinks, experts ((used, count) or None)."""
        return self._core.layers

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    @property
    def bos_id(self) -> int:
        return self._tokenizer.bos_id

    @property
    def eos_id(self) -> int:
        return self._tokenizer.eos_id

    @property
    def bos_token(self) -> str:
        return self.token_bytes(self.bos_id).decode("utf-8", "replace") if self.bos_id >= 0 else ""

    @property
    def eos_token(self) -> str:
        return self.token_bytes(self.eos_id).decode("utf-8", "replace") if self.eos_id >= 0 else ""

    # -- tokens ----------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True,
                 add_eos: bool | None = None) -> list[int]:
        """Text -> token ids. add_bos / add_eos = None: the GGUF metadata decides
        (tokenizer.ggml.add_bos_token / add_eos_token). special: parse special-token text such as
        <|im_start|> into its id (False: tokenize it as plain text)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if add_bos is None:
            add_bos = self._tokenizer.add_bos_default
        if add_eos is None:
            add_eos = self._tokenizer.add_eos_default
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            # A lone surrogate (from errors="surrogateescape" decoding, or JSON "\\ud800") is not
            # a character: UTF-8 has no bytes for it.
            raise ValueError(f"text[{e.start}] is a lone surrogate U+{ord(text[e.start]):04X}, which is not "
                             f"valid Unicode and has no UTF-8 form; replace it (e.g. decode bytes with "
                             f"errors='replace') before tokenizing") from None
        ids = self._tokenizer.encode(data, bool(add_bos), bool(special))
        if add_eos and self.eos_id >= 0:
            ids.append(self.eos_id)
        return ids

    def _check_token(self, name: str, token: Any) -> int:
        token = _check_int(name, token, 0, self.n_vocab - 1)
        if token >= self.n_tokenizer_vocab:
            raise ValueError(f"{name} {token} is a padding row of the embedding: the tokenizer has only "
                             f"{self.n_tokenizer_vocab} tokens, so it has no text")
        return token

    def token_bytes(self, token: int) -> bytes:
        """The exact bytes of one token's piece (may be an incomplete UTF-8 sequence)."""
        return self._tokenizer.token_to_piece(self._check_token("token", token), True)

    def detokenize(self, ids: Sequence[int]) -> str:
        ids = [self._check_token("token id", i) for i in ids]
        return self._tokenizer.decode(ids).decode("utf-8", "replace")

    def is_end_of_generation(self, token: int) -> bool:
        return self._tokenizer.is_end_of_generation(int(token))

    # -- sessions and generation -----------------------------------------------------------------
    def session(self, mode: str = "streaming", n_sink: int | None = None, window: int | None = None,
                *, batch_size: int = 256, kv_type: str = "f16", n_threads: int | None = None,
                allow_beyond_training_context: bool = False, position_offset: int = 0,
                max_bytes: int | None = None, device: str | None = None) -> "Session":
        return Session(self, mode=mode, n_sink=n_sink, window=window, batch_size=batch_size, kv_type=kv_type,
                       n_threads=n_threads, allow_beyond_training_context=allow_beyond_training_context,
                       position_offset=position_offset, max_bytes=max_bytes, device=device)

    def session_memory(self, mode: str = "streaming", n_sink: int | None = None, window: int | None = None,
                       *, batch_size: int = 256, kv_type: str = "f16", n_threads: int | None = None,
                       allow_beyond_training_context: bool = False) -> dict[str, int]:
        """Bytes a session of these options would allocate, without allocating them: kv_cache
        (sinks + each layer's ring, at the kv_type's element size), scratch (activations for
        batch_size tokens), attention (per-thread scores over the capacity), history (recompute)
        and total. Invalid options raise as session() would."""
        args = _session_args(self, mode, n_sink, window, batch_size, kv_type, n_threads, 0)
        return _core.session_memory(self._core, args["mode"], args["n_sink"], args["window"], args["batch_size"],
                                    args["kv_type"], args["n_threads"], bool(allow_beyond_training_context))

    def session_bytes(self, mode: str = "streaming", n_sink: int | None = None, window: int | None = None,
                      **options: Any) -> int:
        """Total bytes a session of these options would allocate (see session_memory)."""
        return self.session_memory(mode, n_sink, window, **options)["total"]

    def stream(self, prompt: str | Sequence[int] | np.ndarray, params: SamplingParams | None = None, *,
               mode: str = "streaming", n_sink: int | None = None, window: int | None = None,
               max_tokens: int | None | _Default = DEFAULT, temperature: float | _Default = DEFAULT,
            top_k: int | _Default = DEFAULT, top_p: float | _Default = DEFAULT, min_p: float | _Default = DEFAULT,
            repeat_penalty: float | _Default = DEFAULT, repeat_last_n: int | _Default = DEFAULT,
            frequency_penalty: float | _Default = DEFAULT, presence_penalty: float | _Default = DEFAULT,
            logit_bias: Mapping[int, float] | None | _Default = DEFAULT, seed: int | None | _Default = DEFAULT,
            stop: str | Sequence[str] | _Default = DEFAULT, add_bos: bool | None = None, special: bool = True,
            progress: bool = False) -> Iterator[str]:
        """Generates from a fresh session (mode, n_sink, window: see session()), yielding text
        pieces (UTF-8 complete). Options are checked before this returns.

        params: a sinkstream.SamplingParams (None: its defaults); the keyword options are its fields and
        override it one by one (DEFAULT: not given). add_bos (None: the model's default, only at the
        start of a stream) and special (parse special-token text) apply to a text prompt. progress:
        a bar on stderr while a long prompt is read (when stderr is a terminal).
        """
        resolved = resolve_sampling_params(params, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, logit_bias=logit_bias, seed=seed, stop=stop)
        return self.session(mode, n_sink, window).stream(prompt, resolved, add_bos=add_bos, special=special, progress=progress)

    @_options_of(stream)
    def generate(self, *args: Any, **options: Any) -> str:
        """stream() joined into one string (same arguments)."""
        return "".join(self.stream(*args, **options))

    # -- async (aio.py: generation in a worker thread; cancelled when the consumer goes away) -----
    @_options_of(stream)
    def astream(self, prompt: str | Sequence[int] | np.ndarray, params: SamplingParams | None = None,
                **options: Any) -> AsyncIterator[str]:
        """stream() as an async iterator (same arguments, checked now)."""
        from .aio import model_astream

        return model_astream(self, prompt, params, **options)

    @_options_of(generate)
    async def agenerate(self, prompt: str | Sequence[int] | np.ndarray, params: SamplingParams | None = None,
                        **options: Any) -> str:
        """generate() awaited off the event loop (same arguments)."""
        from .aio import model_agenerate

        return await model_agenerate(self, prompt, params, **options)

    def achat(self, messages: str | list[dict[str, str]], params: SamplingParams | None = None,
              **options: Any) -> AsyncIterator[str]:
        """One chat turn on a fresh session, as an async iterator (mode, n_sink, window: see session())."""
        from .aio import model_achat

        return model_achat(self, messages, params, **options)

    def chat_session(self, system_prompt: str, *, keep_system_prompt: bool = True, **options: Any) -> "Session":
        """A streaming session whose conversation starts with `system_prompt` (chat() continues it).
        keep_system_prompt=True makes the whole rendered system prompt the attention sinks (n_sink =
        its token count), so it is never evicted however long the conversation (llama.cpp's n_keep);
        False keeps the usual n_sink. options: those of session() but mode and n_sink."""
        from .system_sinks import chat_session

        return chat_session(self, system_prompt, keep_system_prompt=keep_system_prompt, **options)

    def __repr__(self) -> str:
        return f"Model({self.path!r}, arch={self.architecture!r}, n_vocab={self.n_vocab})"


class Session:
    """One stream over a Model: its own K/V cache (sinks + rolling window), counter and scratch.

    mode: "streaming" (n_sink sinks + window), "window" (window only), "dense" (everything up to
    the capacity), "recompute" (re-encode the last `window` tokens per token). Defaults: n_sink 4
    in streaming mode (0 otherwise), capacity n_sink + window = 2048 capped at the training context.
    batch_size: tokens per forward chunk (prefill speed vs. ring slack of batch_size - 1 slots).
    position_offset: absolute index of the stream's first token (RoPE angles start there; only
    differences of positions matter, so the logits do not change: docs/streaming.md invariant 4).
    max_bytes: the most memory the session may allocate (None: this machine's physical memory);
    above it the constructor raises ValueError before allocating anything. Model.session_memory()
    tells the cost in advance.
    """

    def __init__(self, model: Model, mode: str = "streaming", n_sink: int | None = None, window: int | None = None,
                 batch_size: int = 256, kv_type: str = "f16", n_threads: int | None = None,
                 allow_beyond_training_context: bool = False, position_offset: int = 0,
                 max_bytes: int | None = None, device: str | None = None):
        args = _session_args(model, mode, n_sink, window, batch_size, kv_type, n_threads, position_offset)
        self.device = model.device if device is None else check_device(device)
        if max_bytes is not None:
            max_bytes = _check_int("max_bytes", max_bytes, 1, 2**64 - 1)
        capacity = args["n_sink"] + max(args["window"], 0)
        if allow_beyond_training_context and capacity > model.n_ctx_train:
            warnings.warn(f"n_sink + window = {capacity} exceeds the training context {model.n_ctx_train}: "
                          "positions past it were never trained", stacklevel=3)
        self.model = model
        self._handle: _core.Session | None = _core.Session(model._core, args["mode"], args["n_sink"], args["window"], args["batch_size"],
                                   args["kv_type"], args["n_threads"], bool(allow_beyond_training_context),
                                   args["position_offset"], 0 if max_bytes is None else max_bytes, self.device)
        # Generation state kept on the session by generation.py / chat_template.py.
        self._pending: list[int] = []     # the last sampled token, not fed yet
        self._last_logits: tuple[int, np.ndarray] | None = None  # (n_past then, logits)
        self._chat_history: list[dict[str, str]] | None = None
        self._chat_record = None
        self._batch_size = args["batch_size"]
        self._kv_type = args["kv_type"]
        self._scheduler: Any = None  # a sinkstream.BatchScheduler that runs this session's evals
        self.last_stats: GenerationStats | None = None  # the last stream/generate/chat call's
        model._sessions.add(self)

    @property
    def _core(self) -> Any:  # _core.Session
        handle = getattr(self, "_handle", None)
        if handle is None:
            raise RuntimeError("this Session is closed: its Model was closed (Model.close()), which released "
                               "the session's cache and the weights")
        return handle

    @property
    def closed(self) -> bool:
        """True once its Model has been closed (the session can no longer be used)."""
        return getattr(self, "_handle", None) is None

    def _close(self) -> None:
        self._handle = None
        self._last_logits = None

    # -- the stream ------------------------------------------------------------------------------
    def eval(self, tokens: Sequence[int] | np.ndarray, logits: str | None = "last") -> np.ndarray | None:
        """Feeds tokens (any count; chunked internally). logits="last" -> (n_vocab,) float32,
        "all" -> (len(tokens), n_vocab), None -> nothing returned."""
        if logits not in _LOGITS:
            raise ValueError(f"logits must be 'last', 'all' or None, got {logits!r}")
        array = token_array(tokens, self.model.n_vocab)
        if len(array) == 0 and logits is not None:
            raise ValueError("tokens is empty: there are no logits to return")
        self._settle()
        scheduler = self._scheduler
        if scheduler is None or scheduler.closed:
            return self._core.eval(array, logits == "all", logits is not None)
        if logits == "all":  # a batched step returns last-token logits only
            core = self._core
            return scheduler.exclusive(lambda: core.eval(array, True, True))
        return scheduler.eval(self, array, logits is not None)

    def _samples_in_step(self) -> bool:
        """Whether generation draws its tokens inside the BatchScheduler's steps (_eval_sample):
        when a running scheduler serves this session and no per-token hook needs the logits (a
        hook says so with needs_logits = False; then it gets None for them)."""
        scheduler = self._scheduler
        hook = getattr(self, "_on_token", None)
        return (scheduler is not None and not scheduler.closed
                and (hook is None or not getattr(hook, "needs_logits", True)))

    def _eval_sample(self, tokens: Sequence[int], sampler: Any, draws_left: int | None = 0,
                     fed: Any = None) -> int:
        """eval() through the session's BatchScheduler whose last step also draws the next token
        with `sampler` (a _core.Sampler, which accepts it); returns it. The logits stay in the
        engine, so the session holds no fresh logits afterwards. draws_left and fed: see
        BatchScheduler.eval (with draws_left != 0 the drawn token's eval runs ahead: the generation
        ends with _settle)."""
        array = token_array(tokens, self.model.n_vocab)
        self._last_logits = None
        return int(self._scheduler.eval(self, array, False, sampler, draws_left, fed))

    def _settle(self, generation_ended: bool = False) -> None:
        """Takes back an eval that its BatchScheduler ran ahead of a generation that has not asked
        for it (BatchScheduler.drop_run_ahead): whatever changes or saves the stream sees exactly
        what the generation has seen, and a generation paused meanwhile goes on as it would have."""
        if self._scheduler is not None:
            self._scheduler.drop_run_ahead(self, generation_ended)

    def cancel(self) -> None:
        """Asks an eval running in another thread (directly or through a BatchScheduler) to stop
        after its current chunk or step; it raises sinkstream.Cancelled there, with every token
        fed so far kept (n_past counts them)."""
        scheduler = self._scheduler
        if scheduler is not None and not scheduler.closed:
            scheduler.cancel(self)
        else:
            self._core.request_cancel()

    @property
    def n_past(self) -> int:
        """Tokens the stream holds (not counting the pending token). Safe to read from another
        thread while the session generates."""
        if self._scheduler is not None:
            return self._scheduler.visible_n_past(self)
        return self._core.n_past

    @property
    def n_cached(self) -> int:
        """K/V entries the next token attends over (at most the capacity), as n_past counts them."""
        return self._core.n_cached_at(self.n_past)

    @property
    def kv_bytes(self) -> int:
        return self._core.kv_bytes

    @property
    def mode(self) -> str:
        return self._core.mode

    @property
    def n_sink(self) -> int:
        return self._core.n_sink

    @property
    def window(self) -> int:
        return self._core.window

    @property
    def capacity(self) -> int:
        return self._core.capacity

    @property
    def kv_type(self) -> str:
        """The K/V cache's storage: "f16", "f32" or "q8_0"."""
        return self._kv_type

    def reset(self) -> None:
        """Starts a new stream: empty cache, counter 0, no pending token or chat history."""
        from .generation import reset_generation_state

        self._settle()
        self._core.reset()
        reset_generation_state(self)

    # -- park and resume ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str] | None = None) -> bytes | None:
        """The stream's exact state (K/V of the sinks and window, counter, pending token, chat
        history and record, last logits) with the model's and the geometry's fingerprints and a
        checksum: bytes, or written to `path`. Restore with load() on a session made with the same
        model and settings. (Samplers live per generate()/stream() call, seeded by their options:
        there is no sampler state between calls to keep.)"""
        self._settle()
        record = getattr(self, "_chat_record", None)
        last = getattr(self, "_last_logits", None)  # (n_past when computed, logits): see generation.py
        app_data = json.dumps({
            "chat_history": getattr(self, "_chat_history", None),
            # (rendered prompt text, bytes of the reply tokens read since, n_past): see chat_template.py
            "chat_record": [record[0], record[1].hex(), record[2]] if record is not None else None,
        }).encode()
        logits = None if last is None else np.ascontiguousarray(last[1], dtype=np.float32).reshape(-1)
        blob = self._core.save([int(t) for t in self._pending], logits, 0 if last is None else int(last[0]), app_data)
        if path is None:
            return blob
        tmp = os.fspath(path) + ".partial"
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
        return None

    def load(self, state: bytes | str | os.PathLike[str]) -> None:
        """Restores a state from save() (bytes or a file path), all or nothing: a state that is
        corrupted (checksum), from another model (fingerprint) or other settings, or malformed in
        any field raises ValueError and leaves this session exactly as it was."""
        if isinstance(state, (str, os.PathLike)):
            with open(state, "rb") as f:
                state = f.read()
        if not isinstance(state, (bytes, bytearray, memoryview)):
            raise TypeError(f"state must be bytes or a path, got {type(state).__name__}")
        decoded: dict[str, Any] = {}

        def accept(pending: list[int], logits: np.ndarray | None, logits_n_past: int, app_data: bytes) -> None:
            # Runs inside _core.load after the engine's checks and before anything changes: raising
            # here refuses the whole state.
            decoded["fields"] = (pending, logits, logits_n_past, *_decode_chat_state(app_data))

        self._settle()
        self._core.load(bytes(state), accept)
        pending, logits, logits_n_past, history, record = decoded["fields"]
        self._pending = list(pending)
        self._chat_history = history
        self._chat_record = record
        self._last_logits = (int(logits_n_past), logits) if logits is not None else None

    # -- generation (generation.py and chat_template.py do the work) -----------------------------
    def stream(self, prompt: str | Sequence[int] | np.ndarray | None = None, params: SamplingParams | None = None,
               *, max_tokens: int | None | _Default = DEFAULT, temperature: float | _Default = DEFAULT,
            top_k: int | _Default = DEFAULT, top_p: float | _Default = DEFAULT, min_p: float | _Default = DEFAULT,
            repeat_penalty: float | _Default = DEFAULT, repeat_last_n: int | _Default = DEFAULT,
            frequency_penalty: float | _Default = DEFAULT, presence_penalty: float | _Default = DEFAULT,
            logit_bias: Mapping[int, float] | None | _Default = DEFAULT, seed: int | None | _Default = DEFAULT,
            stop: str | Sequence[str] | _Default = DEFAULT, add_bos: bool | None = None, special: bool = True,
            progress: bool = False) -> Iterator[str]:
        """Continues this session's stream: feeds the prompt, yields generated text pieces (UTF-8
        complete). prompt None (or empty) continues from what the session holds: its pending
        token (the last one sampled) or its fresh logits; on an empty session it raises
        ValueError. Options are checked before this returns; see also
        sinkstream.generation.stream_text.

        params: a sinkstream.SamplingParams (None: its defaults); the keyword options are its fields and
        override it one by one (DEFAULT: not given). add_bos (None: the model's default, only at the
        start of a stream) and special (parse special-token text) apply to a text prompt. progress:
        a bar on stderr while a long prompt is read (when stderr is a terminal).
        """
        from .generation import stream_text

        resolved = resolve_sampling_params(params, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, logit_bias=logit_bias, seed=seed, stop=stop)
        return stream_text(self, prompt, resolved, add_bos=add_bos, special=special, progress=progress)

    @_options_of(stream)
    def generate(self, *args: Any, **options: Any) -> str:
        """stream() joined into one string (same arguments)."""
        return "".join(self.stream(*args, **options))

    def chat(self, messages: str | list[dict[str, str]], params: SamplingParams | None = None, *,
             history: list[dict[str, str]] | None = None,
             max_tokens: int | None | _Default = DEFAULT, temperature: float | _Default = DEFAULT,
            top_k: int | _Default = DEFAULT, top_p: float | _Default = DEFAULT, min_p: float | _Default = DEFAULT,
            repeat_penalty: float | _Default = DEFAULT, repeat_last_n: int | _Default = DEFAULT,
            frequency_penalty: float | _Default = DEFAULT, presence_penalty: float | _Default = DEFAULT,
            logit_bias: Mapping[int, float] | None | _Default = DEFAULT, seed: int | None | _Default = DEFAULT,
            stop: str | Sequence[str] | _Default = DEFAULT, add_bos: bool | None = None, special: bool = True,
            progress: bool = False) -> Iterator[str]:
        """One chat turn: renders the GGUF chat template over the conversation so far plus
        `messages` (a user text or a list of {"role", "content"}), feeds only what is new, and
        streams the reply. The session remembers the conversation (constant memory); history:
        the conversation so far instead of the session's own (see chat_template.chat_turn).

        params: a sinkstream.SamplingParams (None: its defaults); the keyword options are its fields and
        override it one by one (DEFAULT: not given). add_bos (None: the model's default, only at the
        start of a stream) and special (parse special-token text) apply to a text prompt. progress:
        a bar on stderr while a long prompt is read (when stderr is a terminal).
        """
        from .chat_template import chat_turn

        resolved = resolve_sampling_params(params, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, logit_bias=logit_bias, seed=seed, stop=stop)
        return chat_turn(self, messages, history, params=resolved, add_bos=add_bos, special=special,
                         progress=progress)

    # -- async (aio.py: generation in a worker thread; cancelled when the consumer goes away) -----
    @_options_of(stream)
    def astream(self, prompt: str | Sequence[int] | np.ndarray | None = None, params: SamplingParams | None = None,
                **options: Any) -> AsyncIterator[str]:
        """stream() as an async iterator (same arguments, checked now)."""
        from .aio import astream

        return astream(self, prompt, params, **options)

    @_options_of(generate)
    async def agenerate(self, prompt: str | Sequence[int] | np.ndarray | None = None,
                        params: SamplingParams | None = None, **options: Any) -> str:
        """generate() awaited off the event loop (same arguments)."""
        from .aio import agenerate

        return await agenerate(self, prompt, params, **options)

    @_options_of(chat)
    def achat(self, messages: str | list[dict[str, str]], params: SamplingParams | None = None,
              **options: Any) -> AsyncIterator[str]:
        """chat() as an async iterator (same arguments, checked now)."""
        from .aio import achat

        return achat(self, messages, params, **options)

    def __repr__(self) -> str:
        return (f"Session(mode={self.mode!r}, n_sink={self.n_sink}, window={self.window}, "
                f"n_past={self.n_past}, n_cached={self.n_cached})")
