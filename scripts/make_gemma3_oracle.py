#!/usr/bin/env python3
"""Writes tests/data/gemma3_oracle/: llama.cpp's outputs on Gemma 3 270M Q4_K_M (see its README.md).

The reference peer is llama.cpp through llama-cpp-python (`pip install llama-cpp-python==0.3.36`,
built natively): n_ctx 2048, 2 threads, f16 K/V cache, flash attention off. The model comes from
sinkstream.known_models ("gemma-3-270m"), the KJV text from sinkstream.texts (Debian's bible-kjv).

    python scripts/make_gemma3_oracle.py [--model PATH] [--out tests/data/gemma3_oracle] [--speed]

It takes ~40 s on 2 cores and is deterministic: a rerun writes the same files (run.json's timings
aside).

Neither the engine nor the package needs to be built: the two modules are loaded from python/.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "gemma3_oracle"

N_CTX = 2048
N_THREADS = 2
N_GREEDY = 48
N_PPL = 1280
N_PPL_SHORT = 512
LONG_PROMPT_TOKENS = 700   # p3: > 512, so the local layers' sliding window (512) matters
TOP = 5
N_TOP_STORED = 4096        # last logits stored for every prompt: the 4096 largest (ids and float32 values)
FULL_LOGITS = ("p2",)      # ... and the whole vector (float16 of logits - max) for these (p2: the flattest)


def import_sinkstream_helpers():
    """sinkstream.known_models and sinkstream.texts, without the compiled engine if it is not built."""
    try:
        from sinkstream import known_models, texts
    except (ImportError, OSError):  # no compiled engine (or a broken one): load the two modules alone
        for name in [n for n in sys.modules if n == "sinkstream" or n.startswith("sinkstream.")]:
            del sys.modules[name]
        package = types.ModuleType("sinkstream")
        package.__path__ = [str(ROOT / "python" / "sinkstream")]  # submodules import; __init__ does not run
        sys.modules["sinkstream"] = package
        from sinkstream import known_models, texts
    return known_models, texts


# Hard strings for the tokenizer (Gemma's is a SentencePiece BPE: "llama" in GGUF, byte fallback,
# no space prefix, user-defined HTML-ish tokens and runs of spaces/newlines/tabs in the vocabulary).
TOKENIZER_CASES = [
    "",
    " ",
    "\n",
    "Hello world",
    "Hello  world",
    " leading space",
    "trailing space ",
    "   leading and trailing spaces   ",
    " " * 40,
    "tabs\t\tand\ttab\t" + "\t" * 9,
    "\n \n  \n   \n",
    "line one\nline two\r\nline three\n\n\n\n\n",
    "\n" * 35,
    "12345 3.14159 -42 +7 1e-9 0x1F 1,000,000 2025-01-01",
    "x=1;y=22;z=333;w=4444",
    "DON'T I'LL WE'VE don't you're",
    "héllo wörld café naïve résumé Ångström Straße",
    "e\u0301 (NFD) vs \u00e9 (NFC), \ufb01 ligature, \xa0nbsp, zero\u200bwidth, \ufeffbom",
    "ＡＢＣ１２３！ full width",
    "中文分词测试，日本語のテキスト、한국어 텍스트",
    "مرحبا بالعالم שלום עולם",
    "Γειά σου Κόσμε и русский текст",
    "नमस्ते दुनिया สวัสดีชาวโลก",
    "Emoji 😀👍🏽🚀 family 👨\u200d👩\u200d👧\u200d👦 flags 🇫🇷🇯🇵",
    "rare scripts 𓀀𓀁 𐌰𐌱𐌲 \ue000\U000f0000 \u2fff",   # byte fallback: <0x..> tokens
    "control \x01\x02\x1b[0m\x7f chars",
    "a\x00b",
    "∑ᵢ xᵢ² ≤ ∞ → ∀ε>0 ∃δ",
    "▁literal▁ SentencePiece▁marker ▁",
    "<0x41> is not a byte token",
    "def foo(x):\n    return x**2  # square\n",
    'if __name__ == "__main__":\n\tmain()\n',
    "for (int i = 0; i < n; ++i) { a[i] = b[i] << 2; }",
    '{"key": [1, 2, {"nested": null}], "ok": true}',
    "https://example.com/path?q=1&r=2#frag",
    "$$\\frac{a}{b}$$ and `code` and **bold** ## Title",
    "<table><tr><td>1</td></tr></table> <b>bold</b> <br>",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos>",
    "<pad><unk><mask>",
    "a<start_of_turn>b <end_of_turn> <start_of_turn",
    "<start_of_image> <unused0> <|im_start|>",
    "What is 2+2?",
    "Pneumonoultramicroscopicsilicovolcanoconiosis aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
]

P1_TEXT = "The capital of France is"
P2_TEXT = ("<start_of_turn>user\nWhat is the capital of France? Answer in one sentence.<end_of_turn>\n"
           "<start_of_turn>model\n")
P3_START = "In the beginning was the Word"   # John 1:1, far from the KJV's start (the ppl text)


class Peer:
    """llama.cpp through llama-cpp-python, with logits read straight from the context."""

    def __init__(self, model_path: Path, logits_all: bool = False):
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=N_CTX, n_threads=N_THREADS,
                                   n_threads_batch=N_THREADS, logits_all=logits_all, flash_attn=False,
                                   verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def tokenize(self, text: str, add_bos: bool, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def piece(self, token: int, special: bool = True) -> bytes:
        """llama_token_to_piece, any length (llama-cpp-python's own detokenize uses a 32-byte buffer)."""
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.llama_cpp.llama_token_to_piece(self.llm._model.vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def detokenize(self, ids: list[int], special: bool) -> bytes:
        return b"".join(self.piece(i, special) for i in ids)

    def token_attr(self, token: int) -> int:
        return int(self.llama_cpp.llama_vocab_get_attr(self.llm._model.vocab, token))

    def end_of_generation_ids(self) -> list[int]:
        return [i for i in range(self.n_vocab) if self.llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, i)]

    def reset(self) -> None:
        self.llm.reset()

    def eval_last(self, tokens: list[int]) -> np.ndarray:
        """Feeds tokens after what was fed so far; the float32 logits after the last one."""
        self.llm.eval(tokens)
        ptr = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32).copy()


def top_k(logits: np.ndarray, k: int = TOP) -> tuple[list[int], list[float]]:
    ids = np.argsort(-logits.astype(np.float64), kind="stable")[:k]
    return [int(i) for i in ids], [float(logits[i]) for i in ids]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max()
    return x - m - math.log(np.exp(x - m).sum())


def tokenizer_oracle(peer: Peer) -> dict:
    cases, used = [], set()
    for text in TOKENIZER_CASES:
        case = {"text": text, "utf8_hex": text.encode("utf-8").hex()}
        for special in (True, False):
            for add_bos in (False, True):
                ids = peer.tokenize(text, add_bos=add_bos, special=special)
                case[f"ids{'_bos' if add_bos else ''}_{'special' if special else 'plain'}"] = ids
                used.update(ids)
        for special in (True, False):
            ids = case[f"ids_{'special' if special else 'plain'}"]
            # decoding the ids (pieces rendered with special=True) gives back the text exactly?
            case[f"roundtrip_{'special' if special else 'plain'}"] = peer.detokenize(ids, special=True) == text.encode()
        cases.append(case)
    pieces = {str(i): peer.piece(i).hex() for i in sorted(used)}
    attrs = {str(i): peer.token_attr(i) for i in sorted(used)}
    return {
        "notes": ("ids_special / ids_plain: llama_tokenize(parse_special=true / false), add_bos=false; "
                  "ids_bos_*: add_bos=true (BOS 2 prepended, even before a parsed '<bos>'). pieces: "
                  "llama_token_to_piece(special=true) bytes as hex, for every id used; attrs: "
                  "llama_vocab_get_attr bit flags (1 unknown, 2 unused, 4 normal, 8 control, 16 "
                  "user_defined, 32 byte, ...). roundtrip_*: detokenize(ids, special=true) == the UTF-8 text"),
        "bos_id": peer.llm.token_bos(), "eos_id": peer.llm.token_eos(),
        "end_of_generation_ids": peer.end_of_generation_ids(),
        "cases": cases, "pieces": pieces, "attrs": attrs,
    }


def kjv_prefix_tokens(peer: Peer, text: str, n_tokens: int, margin: int = 64) -> tuple[str, list[int]]:
    """A prefix of text, cut at a line end, that tokenizes (BOS first) to >= n_tokens + margin ids,
    and its ids, all of them (margin=0) or the first n_tokens (then the cut cannot change them)."""
    length = (n_tokens + margin) * 4
    while True:
        cut = text.find("\n", length) + 1 or len(text)
        prefix = text[:cut]
        ids = peer.tokenize(prefix, add_bos=True, special=False)
        if len(ids) >= n_tokens + margin or cut == len(text):
            return prefix, (ids if margin == 0 else ids[:n_tokens])
        length = cut + max(16, (n_tokens + margin - len(ids)) * 2)


def prompt_oracle(peer: Peer, name: str, text: str, tokens: list[int], out: Path) -> dict:
    peer.reset()
    logits = peer.eval_last(tokens)
    np.save(out / f"{name}_tokens.npy", np.asarray(tokens, dtype=np.int32))
    peak = float(logits.max())
    if name in FULL_LOGITS:
        np.save(out / f"{name}_last_logits_f16.npy", (logits - peak).astype(np.float16))
    logprobs = log_softmax(logits)
    top_ids, top_vals = top_k(logits, N_TOP_STORED)
    np.save(out / f"{name}_last_top_ids.npy", np.asarray(top_ids, dtype=np.int32))
    np.save(out / f"{name}_last_top_logits.npy", np.asarray(top_vals, dtype=np.float32))
    ids, vals = top_ids[:TOP], top_vals[:TOP]
    greedy, steps = [], []
    for _ in range(N_GREEDY):
        step_ids, step_vals = top_k(logits)
        steps.append({"ids": step_ids, "logits": step_vals})
        greedy.append(step_ids[0])
        logits = peer.eval_last([step_ids[0]])
    eos = [i for i, t in enumerate(greedy) if t in (peer.llm.token_eos(), 106)]  # <eos>, <end_of_turn>
    return {
        "text": text,
        "n_tokens": len(tokens),
        "tokens": tokens,
        "last_logits_max": peak,
        "last_logsumexp": peak - float(logprobs.max()),
        "last_top_stored_mass": float(np.exp(logprobs[top_ids]).sum()),
        "last_logits_top5": [[i, v] for i, v in zip(ids, vals)],
        "last_logprob_top5": [[i, float(logprobs[i])] for i in ids],
        "greedy_ids": greedy,
        "greedy_text": peer.detokenize(greedy, special=True).decode("utf-8", "replace"),
        "greedy_first_end_index": eos[0] if eos else None,
        "greedy_step_top5": steps,
    }


def perplexity_oracle(model_path: Path, tokens: list[int]) -> np.ndarray:
    """Dense nll over tokens in one evaluation with logits for every position (logits_all)."""
    peer = Peer(model_path, logits_all=True)
    peer.llm.eval(tokens)
    scores = peer.llm.scores[:len(tokens) - 1]
    nll = np.empty(len(tokens) - 1, dtype=np.float64)
    for start in range(0, len(nll), 64):
        block = scores[start:start + 64].astype(np.float64)
        peak = block.max(axis=1)
        log_norm = np.log(np.exp(block - peak[:, None]).sum(axis=1)) + peak
        rows = np.arange(len(block))
        nll[start:start + len(block)] = log_norm - block[rows, np.asarray(tokens[start + 1:start + 1 + len(block)])]
    del peer
    return nll


def peer_speed(peer: Peer, tokens: list[int]) -> dict:
    peer.reset()
    started = time.perf_counter()
    logits = peer.eval_last(tokens[:512])
    prefill = 512 / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(64):
        logits = peer.eval_last([int(np.argmax(logits))])
    decode = 64 / (time.perf_counter() - started)
    return {"prefill_512_tok_per_s": round(prefill, 1), "decode_tok_per_s": round(decode, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="the GGUF file (default: known_models 'gemma-3-270m')")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--speed", action="store_true",
                        help="also time llama.cpp (prefill 512 tokens, 64 decode steps) into run.json "
                             "(on a quiet machine)")
    args = parser.parse_args()
    known_models, texts = import_sinkstream_helpers()
    import llama_cpp

    model_path = args.model or known_models.model_path("gemma-3-270m")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    peer = Peer(model_path)

    tokenizer = tokenizer_oracle(peer)
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, indent=1, ensure_ascii=True) + "\n")
    print(f"tokenizer: {len(tokenizer['cases'])} cases, {len(tokenizer['pieces'])} distinct ids")

    kjv = texts.kjv_text()
    # p3: whole verses from John 1:1 on, the first that reach LONG_PROMPT_TOKENS tokens (BOS included).
    p3_text, _ = kjv_prefix_tokens(peer, kjv[kjv.index(P3_START):], LONG_PROMPT_TOKENS, margin=0)
    prompts = {}
    for name, text in (("p1", P1_TEXT), ("p2", P2_TEXT), ("p3", p3_text)):
        tokens = peer.tokenize(text, add_bos=True, special=True)
        prompts[name] = prompt_oracle(peer, name, text, tokens, out)
        case = prompts[name]
        print(f"{name}: {case['n_tokens']} tokens, top-1 {case['last_logits_top5'][0]}, greedy "
              f"{case['greedy_text'][:80]!r}")
    prompts["notes"] = ("Each prompt: tokenize(text, add_bos=true, parse_special=true), one eval, then "
                        f"{N_GREEDY} greedy steps fed one token at a time (EOS and <end_of_turn> do not stop). "
                        f"{{name}}_last_top_ids.npy / _last_top_logits.npy: the {N_TOP_STORED} largest logits "
                        "after the prompt "
                        "(int32 ids, float32 values, largest first), holding last_top_stored_mass of the probability; "
                        "last_logsumexp: log(sum(exp(logits))) over the whole vocabulary; p2_last_logits_f16.npy: "
                        "the whole vector as float16(logits - last_logits_max).")
    (out / "prompts.json").write_text(json.dumps(prompts, indent=1, ensure_ascii=True) + "\n")

    kjv_text_used, ppl_tokens = kjv_prefix_tokens(peer, kjv, N_PPL)
    speed = peer_speed(peer, ppl_tokens) if args.speed else None
    del peer
    nll = perplexity_oracle(model_path, ppl_tokens)
    np.save(out / "kjv_tokens.npy", np.asarray(ppl_tokens, dtype=np.int32))
    np.save(out / "kjv_nll.npy", nll)
    ppl = math.exp(nll.mean())
    ppl_short = math.exp(nll[:N_PPL_SHORT - 1].mean())
    summary = {
        "n_tokens": len(ppl_tokens),
        "bos_first": True,
        "ppl": ppl,
        "mean_nll": float(nll.mean()),
        "ppl_first_512": ppl_short,
        "mean_nll_first_512": float(nll[:N_PPL_SHORT - 1].mean()),
        "ppl_positions_512_on": math.exp(nll[N_PPL_SHORT - 1:].mean()),
        "notes": ("tokens = tokenize(kjv_text, add_bos=true, parse_special=false)[:1280] (BOS 2 first, as "
                  "sinkstream's tokenize_text and llama.cpp's perplexity do for Gemma); one eval of all 1280 "
                  "tokens with logits for every position (llama-cpp-python logits_all, n_batch 512); "
                  "nll[i] = -log softmax(logits[i])[tokens[i+1]] in float64 (kjv_nll.npy, 1279 entries). "
                  "ppl_first_512: exp(mean(nll[:511])), the first 512 tokens alone (the same logits: the model "
                  "is causal and the first 512 tokens are the first batch). ppl_positions_512_on: nll[511:], "
                  "where the local layers' 512-token sliding window cuts off the start."),
        "text": kjv_text_used,
    }
    (out / "kjv_ppl.json").write_text(json.dumps(summary, indent=1, ensure_ascii=True) + "\n")
    print(f"kjv: ppl {ppl:.4f} over {len(ppl_tokens)} tokens, {ppl_short:.4f} over the first 512")

    meta = {"llama_cpp_python": llama_cpp.__version__,
            "system_info": llama_cpp.llama_cpp.llama_print_system_info().decode(),
            "machine": platform.machine(), "n_ctx": N_CTX, "n_threads": N_THREADS,
            "flash_attn": False, "kv_type": "f16", "model": Path(model_path).name}
    if speed is not None:
        meta["peer_speed"] = speed
    (out / "run.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(meta)


if __name__ == "__main__":
    main()
