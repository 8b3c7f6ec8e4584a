"""Test doubles with the Model/Session contract the generation layer relies on.

FakeModel: a byte-level vocabulary (specials, all 256 single bytes, a few multi-byte pieces) with a
greedy longest-match tokenizer. FakeSession: records every evaluated token and answers each eval()
with logits peaked on the next token of a script, so greedy decoding reproduces the script.
"""
from __future__ import annotations

import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bos>"]
MULTI_BYTE_PIECES = ["Hello", " world", "STOP", "ST", "OP", "user", "assistant", "system", " is", " 4", "aSTOPb",
                     "\n\n", "é"]


class FakeModel:
    def __init__(self, *, add_bos_default: bool = False, chat_template: str | None = None,
                 end_of_generation=("<|im_end|>", "<|endoftext|>"), eos_token: str = "<|im_end|>"):
        self.pieces: list[bytes] = [s.encode() for s in SPECIALS]
        self.pieces += [bytes([b]) for b in range(256)]
        self.pieces += [s.encode() for s in MULTI_BYTE_PIECES]
        self.n_vocab = len(self.pieces)
        self._ids = {}
        for i, piece in enumerate(self.pieces):
            self._ids.setdefault(piece, i)
        self._special_ids = {self._ids[s.encode()] for s in SPECIALS}
        self._max_len = max(len(p) for p in self.pieces)
        self.add_bos_default = add_bos_default
        self.chat_template = chat_template
        self.bos_token = "<bos>"
        self.eos_token = eos_token
        self.end_of_generation = {self._ids[s.encode()] for s in end_of_generation}
        self.metadata = {"general.name": "fake"}
        self.tokenize_calls: list[tuple] = []
        self.sessions: list[FakeSession] = []

    # -- the contract --
    def id(self, piece: str | bytes) -> int:
        return self._ids[piece.encode() if isinstance(piece, str) else piece]

    def ids(self, *pieces: str | bytes) -> list[int]:
        return [self.id(p) for p in pieces]

    def tokenize(self, text: str, add_bos=None, special: bool = True) -> list[int]:
        self.tokenize_calls.append((text, add_bos, special))
        data = text.encode("utf-8")
        out = []
        i = 0
        while i < len(data):
            for n in range(min(self._max_len, len(data) - i), 0, -1):
                token = self._ids.get(data[i:i + n])
                if token is not None and (special or token not in self._special_ids):
                    out.append(token)
                    i += n
                    break
        if add_bos is None:
            add_bos = self.add_bos_default
        return ([self.id(self.bos_token)] if add_bos else []) + out

    def token_bytes(self, token: int) -> bytes:
        return self.pieces[token]

    def detokenize(self, ids) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", "replace")

    def is_end_of_generation(self, token: int) -> bool:
        return token in self.end_of_generation

    def session(self, **kwargs) -> "FakeSession":
        s = FakeSession(self, **kwargs)
        self.sessions.append(s)
        return s


class FakeSession:
    def __init__(self, model: FakeModel, script=None, **kwargs):
        self.model = model
        self.kwargs = kwargs
        self.fed: list[int] = []
        self.eval_calls: list[list[int]] = []
        self.script: list[int] = list(script or [])
        self.fail_on_eval: int | None = None  # raise on this eval call (index), before feeding
        self.fail_with: BaseException = RuntimeError("eval failed")
        self.flat = False  # answer with nearly flat logits instead of the script (for sampling tests)

    @property
    def n_past(self) -> int:
        return len(self.fed)

    def say(self, *pieces: str | bytes) -> None:
        """Appends to the script the tokens the 'model' will produce next."""
        self.script += self.model.ids(*pieces)

    def eval(self, tokens, logits="last"):
        assert logits == "last"
        tokens = [int(t) for t in tokens]
        assert tokens, "eval() called with no tokens"
        if self.fail_on_eval is not None and len(self.eval_calls) == self.fail_on_eval:
            self.fail_on_eval = None
            raise self.fail_with
        self.fed.extend(tokens)
        self.eval_calls.append(tokens)
        out = np.zeros(self.model.n_vocab, dtype=np.float32)
        if self.flat:
            out[:] = np.linspace(0.0, 1.0, self.model.n_vocab, dtype=np.float32)
            return out
        target = self.script.pop(0) if self.script else self.model.id("<|endoftext|>")
        out[target] = 30.0
        return out

    def reset(self) -> None:
        from sinkstream.generation import reset_generation_state

        self.fed.clear()
        reset_generation_state(self)
