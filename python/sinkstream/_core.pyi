"""
sinkstream native engine (GGUF reader, quantized kernels, StreamingLLM decoder)
"""

from collections.abc import Mapping, Sequence
from typing import Annotated, overload

import numpy
from numpy.typing import NDArray


class GGUFError(ValueError):
    pass

class ModelError(GGUFError):
    pass

class Cancelled(RuntimeError):
    pass

class GgufFile:
    """
    A memory-mapped, validated GGUF file (low level; see sinkstream.GGUFFile).
    """

    @staticmethod
    def open(path: str) -> GgufFile:
        """Maps and validates a GGUF file; raises GGUFError naming the problem."""

    @staticmethod
    def from_bytes(name: str, data: bytes) -> GgufFile:
        """Parses a GGUF image held in memory."""

    @property
    def path(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def alignment(self) -> int: ...

    @property
    def data_offset(self) -> int: ...

    @property
    def file_size(self) -> int: ...

    def metadata(self) -> dict:
        """All metadata as a dict in file order (arrays as lists)."""

    def tensor_infos(self) -> list:
        """
        (name, dims in ggml order, type name, type id, absolute file offset, n_bytes) per tensor.
        """

    def tensor_f32(self, name: str) -> NDArray[numpy.float32]:
        """The tensor dequantized to float32, in numpy axis order."""

def dequantize(type_id: int, data: bytes, n: int) -> NDArray[numpy.float32]:
    """
    Dequantizes n elements of raw GGML blocks of the given type id to float32.
    """

def f32_to_fp16(x: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)]) -> NDArray[numpy.uint16]:
    """
    Test hook: float32 -> IEEE half bits with core/fp16.h (round to nearest even).
    """

def fp16_to_f32(h: Annotated[NDArray[numpy.uint16], dict(shape=(None,), order='C', device='cpu', writable=False)]) -> NDArray[numpy.float32]:
    """Test hook: IEEE half bits -> float32 with core/fp16.h."""

def matmul_test(type_id: int, weight: bytes, rows: int, cols: int, x: Annotated[NDArray[numpy.float32], dict(shape=(None, None), order='C', device='cpu', writable=False)], isa: str, n_threads: int = 1, packed: bool = True) -> NDArray[numpy.float32]:
    """
    Test hook: Y (n, rows) = X (n, cols) . W^T for raw GGML weight bytes, kernels of the given ISA level
    ('scalar', 'avx2', 'avx512', 'neon', 'dotprod', 'i8mm'; falls back level by level where a kernel is missing).
    packed: regroup the rows for the level's interleaved-row kernels where it has them, as a Model does.
    """

def matmul_shared_input_test(weights: Sequence[tuple[int, bytes, int, int]], x: Annotated[NDArray[numpy.float32], dict(shape=(None, None), order='C', device='cpu', writable=False)], isa: str, n_threads: int = 1, packed: bool = True) -> list:
    """
    Test hook: matmul_shared_input over (type_id, bytes, rows, cols) weights of one input X (n, cols);
    returns one (n, rows) array per weight. packed: as in matmul_test.
    """

def matmul_bench(type_id: int, weight: bytes, rows: int, cols: int, n: int, isa: str, n_threads: int, iterations: int, packed: bool = True) -> float:
    """
    Benchmark hook: seconds per matmul call (after one warm-up call) with a persistent thread pool;
    packed: as in matmul_test.
    """

def matmul_bench_sequence(weights: Sequence[tuple[int, bytes, int, int]], n: int, isa: str, n_threads: int, iterations: int, packed: bool = True) -> list[float]:
    """
    Benchmark hook: runs matmuls over a list of (type_id, bytes, rows, cols) weights in order, like a
    forward pass (weights stream from memory when they exceed the caches); returns the mean seconds
    per call of each entry after one warm-up pass.
    """

def quantize_activations_test(weight_type_id: int, x: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)], isa: str) -> bytes:
    """
    Test hook: the activation row matmul makes for weights of this type (raw bytes, vec_dot.h layout).
    """

def matmul_kernel_isa(type_id: int, isa: str, packed: bool = True) -> str:
    """
    The kernel that serves this weight type at level `isa`: its ISA level, and '+packed' when a Model's
    matrices of the type are regrouped for that level's interleaved-row kernels (packed: whether to
    consider those; a weight that is not packed uses the per-row kernels).
    """

def cpu_features() -> dict:
    """
    CPU features seen by the kernels, the best ISA level, the levels this CPU runs (lowest first) and the active one (after SINKSTREAM_ISA).
    """

def pack_roundtrip_test(type_id: int, weight: bytes, rows: int, cols: int, isa: str) -> bytes:
    """
    Test hook: packs raw GGML weight bytes into 16-row groups (packed_weights.h) laid out for the
    kernels of `isa` and unpacks every row again; returns the rows' bytes (equal to the input when the
    layout loses nothing).
    """

def glu_test(activation: str, gate: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)], up: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)], isa: str) -> NDArray[numpy.float32]:
    """
    Test hook: act(gate) * up with the function CpuBackend uses at ISA level `isa` (activations.h).
    """

def half_row_test(values: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)], isa: str) -> NDArray[numpy.uint16]:
    """
    Test hook: the half-precision bits the sink cache stores for float32 values at an ISA level.
    """

def attend_test(keys: Annotated[NDArray[numpy.float32], dict(shape=(None, None), order='C', device='cpu', writable=False)], values: Annotated[NDArray[numpy.float32], dict(shape=(None, None), order='C', device='cpu', writable=False)], q_sink: Annotated[NDArray[numpy.float32], dict(shape=(None, None), order='C', device='cpu', writable=False)], q_window: Annotated[NDArray[numpy.float32], dict(shape=(None, None), order='C', device='cpu', writable=False)], n_head_kv: int, n_sink: int, window: int, kv_type: str, isa: str, sink_logits: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)] | None = None) -> NDArray[numpy.float32]:
    """
    Test hook: stores keys/values (n_tokens, n_head_kv * head_dim) as tokens 0.. of a one-layer sink
    cache (n_sink, window), then returns the attention output (n_head, head_dim) of the last token's
    query (q_sink against the sinks, q_window against the window; scale 1/sqrt(head_dim)), computed
    with the kernels of the given ISA level ('scalar', 'avx2', 'avx512', 'neon', 'dotprod', 'i8mm'), or
    'cuda': the CUDA backend's attention kernel (a CUDA build with a GPU; RuntimeError otherwise).
    sink_logits (n_head): learned sink logits (gpt-oss), one softmax column each with no value.
    """

class Tokenizer:
    """
    Tokenizer built from GGUF metadata (tokenizer.ggml.*), exact with llama.cpp.
    """

    @staticmethod
    def from_gguf(file: GgufFile) -> Tokenizer:
        """
        Builds the tokenizer of a GGUF file; raises ModelError naming a missing or bad metadata key.
        """

    @overload
    def encode(self, text: str, add_bos: bool = False, parse_special: bool = True) -> list[int]:
        """
        Text -> token ids. parse_special: special-token text (e.g. <|im_end|>) becomes its token; otherwise it is tokenized as plain text.
        """

    @overload
    def encode(self, text: bytes, add_bos: bool = False, parse_special: bool = True) -> list[int]:
        """
        UTF-8 bytes -> token ids (malformed sequences are read as U+FFFD, as llama.cpp does).
        """

    def token_to_piece(self, id: int, render_special: bool = True) -> bytes:
        """
        The exact bytes a token stands for (may be part of a UTF-8 sequence). Control tokens give their text when render_special, else b''.
        """

    def decode(self, ids: Sequence[int], render_special: bool = True) -> bytes:
        """
        Token ids -> bytes, as llama.cpp detokenizes (SPM: the prefix space of the first piece is dropped).
        """

    def token_text(self, id: int) -> bytes:
        """The raw vocabulary entry of a token."""

    @property
    def n_vocab(self) -> int: ...

    @property
    def bos_id(self) -> int:
        """BOS token id, -1 if none."""

    @property
    def eos_id(self) -> int:
        """EOS token id, -1 if none."""

    @property
    def add_bos_default(self) -> bool:
        """tokenizer.ggml.add_bos_token (or its default)."""

    @property
    def add_eos_default(self) -> bool:
        """tokenizer.ggml.add_eos_token (or its default)."""

    def is_end_of_generation(self, id: int) -> bool:
        """EOS, EOT, EOM and tokens llama.cpp treats like them."""

    def is_control(self, id: int) -> bool: ...

def pre_tokenize(pre: str, text: str) -> list[str]:
    """
    The words byte-level BPE merges within, for the pre-tokenizer tokenizer.ggml.pre = pre.
    """

unicode_version: str = '14.0.0'

class Model:
    """A loaded model (weights mapped once; share it between sessions)."""

    @staticmethod
    def load(path: str) -> Model: ...

    @property
    def n_vocab(self) -> int: ...

    @property
    def n_ctx_train(self) -> int: ...

    @property
    def n_layer(self) -> int: ...

    @property
    def n_embd(self) -> int: ...

    @property
    def n_head(self) -> int: ...

    @property
    def n_head_kv(self) -> int: ...

    @property
    def head_dim(self) -> int: ...

    @property
    def architecture(self) -> str: ...

    @property
    def layers(self) -> list:
        """
        Per-layer configuration as read from the GGUF file: sliding_window (0: global), rope (None: NoPE),
        qk_norm, post_norms, activation, attention_scale, attention_softcap.
        """

    @property
    def final_logit_softcap(self) -> float: ...

    @property
    def embedding_scale(self) -> float: ...

    @property
    def path(self) -> str: ...

    @property
    def fingerprint(self) -> int:
        """
        Hash of the GGUF header, metadata, tensor table and samples of every tensor: saved session states carry it and load only into the same model.
        """

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (built from the GGUF tokenizer.ggml.* metadata)."""

def heap_bytes_in_use() -> int:
    """
    Bytes the C heap has handed out now (glibc; -1 elsewhere): lets tests check that a stream allocates nothing per token.
    """

def heap_and_mmap_bytes_in_use() -> int:
    """
    Bytes malloc has handed out now, large (mmap'ed) blocks included (glibc; -1 elsewhere): lets tests compare a session's real allocation with its estimate.
    """

def supported_architectures() -> list:
    """
    The GGUF architectures (general.architecture) this build runs, each with what it adds to the
    llama block: a list of (architecture, features).
    """

def session_memory(model: Model, mode: str = 'streaming', n_sink: int = 4, window: int = -1, batch_size: int = 256, kv_type: str = 'f16', n_threads: int = 0, allow_beyond_training_context: bool = False) -> dict:
    """
    Bytes a Session of these options would allocate, by part (kv_cache, scratch, attention, history) and in total, computed without allocating.
    """

def physical_memory_bytes() -> int:
    """
    This machine's physical memory: the default limit on one session's allocation.
    """

def state_checksum(state: bytes) -> int:
    """
    The checksum a saved session state must end with (hash64 of all but its last 8 bytes); for tests that build states with one deliberate fault.
    """

def default_thread_count() -> int:
    """Threads a session uses by default: the physical cores."""

class Session:
    """One stream over a Model (see streaming.md for the modes)."""

    def __init__(self, model: Model, mode: str = 'streaming', n_sink: int = 4, window: int = -1, batch_size: int = 256, kv_type: str = 'f16', n_threads: int = 0, allow_beyond_training_context: bool = False, position_offset: int = 0, max_bytes: int = 0, device: str = 'cpu') -> None:
        """
        device: 'cpu', or 'cuda' (a CUDA build and a usable GPU; RuntimeError saying which is missing otherwise).
        """

    def eval(self, tokens: Annotated[NDArray, dict(shape=(None,), device='cpu')], all_logits: bool = False, want_logits: bool = True) -> object:
        """
        Feeds int32 token ids (a C-contiguous int32 array; no implicit conversion); returns (n_vocab,) logits of the last token, (n, n_vocab) with all_logits, or None with want_logits=False.
        """

    def reset(self) -> None: ...

    def save(self, pending: Sequence[int] = [], logits: object | None = None, logits_n_past: int = 0, app_data: bytes = ...) -> bytes:
        """
        The stream's exact state as bytes (sinks, window K/V, counter) with the given extras, fingerprinted and checksummed.
        """

    def load(self, state: bytes, accept: object | None = None) -> None:
        """
        Restores a state from save(), all or nothing: everything is checked first; accept(pending, logits, logits_n_past, app_data), if given, may refuse the extras by raising; the session changes only when nothing failed.
        """

    def request_cancel(self) -> None: ...

    def undo_last_token(self) -> None:
        """
        Takes back the token of the session's last batched step when it was one token and nothing changed the stream since (ValueError otherwise): the stream is as if that step had never run.
        """

    @property
    def n_past(self) -> int: ...

    @property
    def n_cached(self) -> int: ...

    def n_cached_at(self, n_past: int) -> int:
        """
        K/V entries a stream of n_past tokens holds in this session's geometry (<= capacity, but dense).
        """

    @property
    def kv_bytes(self) -> int: ...

    @property
    def capacity(self) -> int: ...

    @property
    def n_sink(self) -> int: ...

    @property
    def window(self) -> int: ...

    @property
    def n_threads(self) -> int: ...

    @property
    def device(self) -> str: ...

    @property
    def keys_rotated(self) -> int:
        """RoPE rotations of keys so far (one per key and layer)."""

    @property
    def entries_attended(self) -> int:
        """
        K/V entries read by attention so far (|A(t)| per query head and layer).
        """

    @property
    def mode(self) -> str: ...

class BatchRunner:
    """
    One forward pass for several sessions' tokens (see sinkstream.batching).
    """

    def __init__(self, model: Model, n_threads: int = 0, max_tokens: int = 256, max_sessions: int = 64) -> None: ...

    def step(self, sessions: Sequence[Session], tokens: Sequence[Annotated[NDArray, dict(shape=(None,), device='cpu')]], want_logits: Sequence[bool], samplers: Sequence[Sampler | None] | None = None) -> object:
        """
        Runs each session's int32 tokens (1..its batch_size) as one pass; returns the last-token logits of the sessions with want_logits, in order, as (count, n_vocab).
        samplers: one Sampler or None per session; then the step also draws each one's next token from its last logits (the sampler accepts it) and returns (logits, tokens: int32 (sessions,), -1 where no sampler, errors: a sampler's error message or None per session).
        """

    @property
    def n_threads(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...

    @property
    def max_sessions(self) -> int: ...

class Sampler:
    """
    Token sampler: logit bias -> penalties -> top-k -> top-p -> min-p -> temperature -> seeded draw (llama.cpp's chain order). temperature=0 is greedy. Not shared between threads without cost: calls on one Sampler are serialized.
    """

    def __init__(self, n_vocab: int, *, temperature: float = 0.800000011920929, top_k: int = 40, top_p: float = 0.949999988079071, min_p: float = 0.05000000074505806, repeat_penalty: float = 1.0, repeat_last_n: int = 64, frequency_penalty: float = 0.0, presence_penalty: float = 0.0, logit_bias: Mapping[int, float] | None = None, seed: object | None = None, n_allowed: int = 0) -> None:
        """
        n_allowed: only ids below it are drawn (0 = n_vocab): the tokenizer's vocabulary when the model's embedding has padding rows past it.
        """

    def sample(self, logits: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)]) -> int:
        """
        Draws a token id from a float32 vector of n_vocab logits (does not accept() it).
        """

    def probabilities(self, logits: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)]) -> NDArray[numpy.float32]:
        """
        The distribution sample() draws from (float32, n_vocab; zero for filtered tokens, one-hot when greedy). Does not advance the random stream.
        """

    def accept(self, token: int) -> None:
        """Records a token (prompt or generated) in the penalty window."""

    def reset(self) -> None:
        """
        Forgets the penalty window and restarts the random stream from the seed.
        """

    @property
    def n_vocab(self) -> int: ...

    @property
    def n_allowed(self) -> int:
        """Ids below this can be drawn; the rest (padding rows) never are."""

    @property
    def seed(self) -> int:
        """The seed in use (a random one when constructed with seed=None)."""

    @property
    def history(self) -> list[int]:
        """Accepted tokens inside the penalty window, oldest first."""

def cuda_decodable_types() -> list[str]:
    """
    GGUF weight types the CUDA backend reads directly (matmul, embedding lookup).
    """

def cuda_decode_row(raw: Annotated[NDArray[numpy.uint8], dict(order='C', device='cpu', writable=False)], type_name: str, cols: int) -> NDArray[numpy.float32]:
    """
    One row of raw GGUF blocks decoded by the CUDA kernels' own element decoder (block_decode.h), run
    on the CPU: the layouts the GPU reads, checkable without a GPU.
    """

def cuda_attention_plan(n_layer: int, n_head_kv: int, head_dim: int, n_sink: int, window: int, max_chunk: int, layer_windows: Sequence[int], evicts: bool, layer: int, t0: int, n: int) -> list:
    """
    The CUDA attention plan of queries t0 .. t0+n-1 of one layer, per query: the cache slots and ALiBi
    distances the kernel reads row by row (computed by the kernel's own row_slot / alibi_distance on
    the CPU) beside SinkCache's own span members, slot_of and distances, for tests without a GPU; and
    tile_slots / tile_rows: the rows the prefill kernels find for it among its tile's candidates.
    """

def cuda_op_test(op: str, device: str, a: Annotated[NDArray[numpy.float32], dict(shape=(None, None), order='C', device='cpu', writable=False)], b: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu', writable=False)], c: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu', writable=False)], p: float = 0.0) -> NDArray[numpy.float32]:
    """
    Test hook: one row-wise or elementwise op of the CUDA backend ('cuda') or its CPU twin in ops.h ('cpu') on
    a (rows, cols); b, c, p as the op needs (cuda_backend.h elementwise_host lists them; empty arrays when
    unused). RuntimeError for 'cuda' without a CUDA build or device.
    """

class CudaWeightsHandle:
    """
    Keeps a model's weights on the GPU while it lives (cuda_retain_weights).
    """

def cuda_retain_weights(model: Model) -> CudaWeightsHandle:
    """
    A handle that keeps `model`'s weights on the GPU (uploaded on first use) while it lives, also between
    sessions; Model(device='cuda') holds one. RuntimeError without a CUDA build or device.
    """

def cuda_resident_weight_bytes(model: Model) -> int:
    """
    Device memory the CUDA sessions of `model` hold for its weights now (0 before the first CUDA pass and
    without CUDA; on an integrated GPU only the float vectors: the file's pages are mapped, not copied).
    """

def cuda_upload_plan(path: str) -> list:
    """
    What a CUDA session uploads of a GGUF file, per tensor: name, type, bytes, matrix (2-D: read as raw
    blocks on the device), supported (the CUDA kernels read its type; vectors are always float32).
    """

def cuda_built() -> bool:
    """
    True when this build of sinkstream has the CUDA backend (CMake option SINKSTREAM_CUDA).
    """

def cuda_available() -> bool:
    """
    True when built with CUDA and a CUDA device is visible and initialises; never raises.
    """

def cuda_devices() -> list:
    """
    The visible CUDA devices as dicts (index, name, compute_capability (major, minor), total_memory in
    bytes, multiprocessors); [] without CUDA or without a device.
    """

@overload
def cuda_matmul(raw_weight_bytes: bytes, type_name: str, rows: int, cols: int, x: Annotated[NDArray[numpy.float32], dict(shape=(None, None), order='C', device='cpu', writable=False)]) -> NDArray[numpy.float32]: ...

@overload
def cuda_matmul(raw_weight_bytes: Annotated[NDArray[numpy.uint8], dict(order='C', device='cpu', writable=False)], type_name: str, rows: int, cols: int, x: Annotated[NDArray[numpy.float32], dict(shape=(None, None), order='C', device='cpu', writable=False)]) -> NDArray[numpy.float32]:
    """
    Y (n, rows) = X (n, cols) . W^T on the GPU, W given as raw GGUF blocks (bytes or a uint8 array of
    rows * cols / block_size * block_bytes bytes) of any type cuda_decodable_types() lists;
    x float32 (n, cols). Uploads W and X, runs, downloads Y (a test hook, not a fast path).
    ValueError for bad arguments; RuntimeError when built without CUDA or no device is usable.
    """

def cuda_rms_norm(x: Annotated[NDArray[numpy.float32], dict(shape=(None, None), order='C', device='cpu', writable=False)], weight: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)], eps: float = 1e-05) -> NDArray[numpy.float32]:
    """
    out (n, d) = x / sqrt(mean(x^2) + eps) * weight per row on the GPU; x float32 (n, d), weight (d,).
    RuntimeError when built without CUDA or no device is usable.
    """

def cuda_silu_mul(gate: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu', writable=False)], up: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu', writable=False)]) -> NDArray[numpy.float32]:
    """
    silu(gate) * up elementwise on the GPU (float32 arrays of one shape).
    RuntimeError when built without CUDA or no device is usable.
    """
