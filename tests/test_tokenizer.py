"""Tokenizer (cpp/runtime/tokenizer*.cc) against independent references:

- llama.cpp's own tokenization of the default model (tests/data/smollm2_oracle/tokenizer.json, both special modes);
- the `regex` package running the pre-tokenizer patterns llama.cpp lists per tokenizer.ggml.pre;
- a SentencePiece-style vocabulary written here with gguf.GGUFWriter, checked against a plain
  Python implementation of the SPM algorithm (below, written from its description) and hand cases;
- a tiny byte-level BPE vocabulary whose expected merges are worked out by hand.
"""
from __future__ import annotations

import codecs
import json
import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import gguf
import numpy as np
import pytest

import sinkstream
from sinkstream import _core

REPO = Path(__file__).resolve().parents[1]
ORACLE = REPO / "tests" / "data" / "smollm2_oracle" / "tokenizer.json"

# ---- the default model against llama.cpp ----------------------------------------------------------

oracle_cases = json.loads(ORACLE.read_text())["cases"]


@pytest.fixture(scope="module")
def smollm() -> _core.Tokenizer:
    return _core.Tokenizer.from_gguf(_core.GgufFile.open(sinkstream.default_model_path()))


def case_id(case: dict) -> str:
    return repr(case["text"])[:40]


@pytest.mark.model
@pytest.mark.parametrize("case", oracle_cases, ids=case_id)
def test_oracle_ids_both_special_modes(smollm, case):
    assert smollm.encode(case["text"], add_bos=False, parse_special=True) == case["ids_parse_special"]
    assert smollm.encode(case["text"], add_bos=False, parse_special=False) == case["ids_no_parse_special"]
    # The same from UTF-8 bytes.
    assert smollm.encode(case["text"].encode(), False, True) == case["ids_parse_special"]


@pytest.mark.model
@pytest.mark.parametrize("case", oracle_cases, ids=case_id)
def test_oracle_pieces_and_round_trip(smollm, case):
    ids = case["ids_parse_special"]
    assert [smollm.token_to_piece(i).hex() for i in ids] == case["piece_hex_parse_special"]
    assert [smollm.token_text(i).decode() for i in ids] == case["token_strs_parse_special"]
    text = bytes.fromhex(case["utf8_hex"])
    assert text == case["text"].encode()
    assert case["roundtrip_ok_parse_special"] and case["roundtrip_ok_no_parse_special"]
    assert smollm.decode(ids) == text
    assert smollm.decode(case["ids_no_parse_special"]) == text
    assert b"".join(smollm.token_to_piece(i) for i in case["ids_no_parse_special"]) == text


@pytest.mark.model
def test_default_model_special_tokens(smollm):
    assert smollm.n_vocab == 49152
    assert (smollm.bos_id, smollm.eos_id) == (1, 2)
    assert smollm.token_text(1) == b"<|im_start|>" and smollm.token_text(2) == b"<|im_end|>"
    assert smollm.add_bos_default is False and smollm.add_eos_default is False
    assert smollm.encode("Hi", add_bos=True) == [1] + smollm.encode("Hi", add_bos=False)
    # <|im_end|> is EOS; <|endoftext|> (id 0) ends generation too (llama.cpp's EOG list).
    assert smollm.is_end_of_generation(2) and smollm.is_end_of_generation(0)
    assert not smollm.is_end_of_generation(1) and not smollm.is_end_of_generation(19556)
    assert smollm.is_control(1) and not smollm.is_control(19556)
    assert smollm.token_to_piece(2, render_special=True) == b"<|im_end|>"
    assert smollm.token_to_piece(2, render_special=False) == b""
    assert smollm.decode([1, 4093, 2], render_special=False) == b"user"
    for bad in (-1, 49152):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            smollm.token_to_piece(bad)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            smollm.decode([5, bad])


ROUND_TRIP_TEXTS = [
    "Once upon a time, there was a tiny model.",
    "emoji 😀👍🏽🇫🇷 and a family 👨\u200d👩\u200d👧",
    "中文、日本語のテキスト、한국어 텍스트",
    "combining: e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937 (NFD)",
    "digits 0123456789 9876543210 ١٢٣ ²³ Ⅻ",
    "spaces  \t  runs   \u00a0\u3000 and\u2028separators\u0085",
    "\n\n\nnew\r\nlines\n \n",
    "<|im_start|> not special <|im_end|><|endoftext|>",
    "mixed 'quotes' don't WON'T it's \"x\" — «ok»",
    "\x00\x01\x7f control",
]


@pytest.mark.model
@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS, ids=lambda t: repr(t)[:30])
def test_round_trip_and_streaming_pieces(smollm, text):
    for parse_special in (True, False):
        ids = smollm.encode(text, add_bos=False, parse_special=parse_special)
        assert smollm.decode(ids) == text.encode()
        # Streaming: pieces are exact bytes; an incremental UTF-8 decoder reassembles the text even
        # where a character is split across tokens.
        decoder = codecs.getincrementaldecoder("utf-8")()
        streamed = "".join(decoder.decode(smollm.token_to_piece(i)) for i in ids) + decoder.decode(b"", final=True)
        assert streamed == text


@pytest.mark.model
def test_pieces_split_characters_across_tokens(smollm):
    ids = smollm.encode("👨")  # one character, several byte-level tokens
    pieces = [smollm.token_to_piece(i) for i in ids]
    assert len(pieces) > 1 and b"".join(pieces) == "👨".encode()
    with pytest.raises(UnicodeDecodeError):
        pieces[0].decode()


@pytest.mark.model
def test_malformed_utf8_reads_as_replacement_character(smollm):
    # llama.cpp decodes each bad byte as U+FFFD before pre-tokenization.
    assert smollm.encode(b"a\xffb") == smollm.encode("a\ufffdb")
    assert smollm.encode(b"\xe4\xb8") == smollm.encode("\ufffd\ufffd")


@pytest.mark.model
def test_long_text_is_fast_and_exact(smollm):
    import time

    rng = random.Random(0)
    words = [smollm.token_to_piece(i).decode("utf-8", "replace").strip() for i in range(300, 5000)]
    text = " ".join(rng.choice(words) for _ in range(200_000))[:1_000_000]
    start = time.perf_counter()
    ids = smollm.encode(text)
    elapsed = time.perf_counter() - start
    assert smollm.decode(ids) == text.encode()
    assert elapsed < 1.0, f"encoding 1 MB took {elapsed:.2f} s"


def reference_byte_level_bpe(word: bytes, ranks: dict[tuple[str, str], int], ids: dict[str, int]) -> list[int]:
    """Byte-level BPE of one pre-tokenized word, from the algorithm: write the bytes in the GPT-2
    byte alphabet; while some adjacent pair has a merge rule, merge the pair with the lowest rank
    (the leftmost on ties); each final symbol is a token."""
    chars = gpt2_byte_chars()
    symbols = [chars[b] for b in word]
    while True:
        candidates = [(ranks[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in ranks]
        if not candidates:
            break
        _, i = min(candidates)
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return [ids[s] for s in symbols]


@pytest.mark.model
def test_default_model_merges_match_reference_bpe(smollm):
    metadata = _core.GgufFile.open(sinkstream.default_model_path()).metadata()
    ids = {t: i for i, t in enumerate(metadata["tokenizer.ggml.tokens"])}
    ranks = {}
    for rank, rule in enumerate(metadata["tokenizer.ggml.merges"]):
        ranks.setdefault(tuple(rule.split(" ", 1)), rank)
    rng = random.Random(11)
    texts = ROUND_TRIP_TEXTS + [c["text"] for c in oracle_cases]
    alphabet = "etaoinshrdlucmfwypvbgkqjxz ETAOIN,.;'!?0123456789\n\t-()éü中😀"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(150)]
    for text in texts:
        expected = []
        for word in _core.pre_tokenize("smollm", text):
            expected += reference_byte_level_bpe(word.encode(), ranks, ids)
        assert smollm.encode(text, parse_special=False) == expected, repr(text)


# ---- pre-tokenizers against the `regex` package ---------------------------------------------------

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
          r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
# o200k (tiktoken o200k_base; GPT-4o and gpt-oss, tokenizer.ggml.pre "gpt-4o")
O200K = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}", r" ?[^\s\p{L}\p{N}]+[\r\n/]*", r"\s*[\r\n]+", r"\s+(?!\S)", r"\s+"])
# llama-vocab.cpp: the regex list per tokenizer.ggml.pre; each splits the pieces of the previous one,
# keeping unmatched text as pieces.
PRE_TOKENIZER_REGEXES = {
    "gpt-2": [GPT2],
    "smollm": [r"\p{N}", GPT2],
    "llama-bpe": [LLAMA3],
    "qwen2": [QWEN2],
    "gpt-4o": [O200K],
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"],
}
# Characters whose classes agree between Unicode versions and whose \s the regex package reads as
# White_Space (it also counts U+001C..U+001F, which are not, so they are left out).
ALPHABET = (list("abcXYZ sStTmMdDlLrReEvV'''   \t\n\r\n0123456789.,;:!?$+<=>^~|`-_()[]{}\"#%&*/\\@")
            + ["é", "ß", "中", "Ж", "ا", "\u0301", "٣", "²", "。", "«", "—", "¿", "€", "😀", "©", "\xa0",
               "\u3000", "\u2028", "\x85", "\x00", "\u200b", "ǅ", "Ⅻ",
               # o200k's case classes: modifier letter (Lm), long s (folds to s), spacing mark (Mc)
               "ʰ", "ſ", "\u0903", "Ǆ", "ǆ"])


def regex_split(regex_module, patterns: list[str], text: str) -> list[str]:
    pieces = [text] if text else []
    for pattern in patterns:
        out = []
        for piece in pieces:
            last = 0
            for m in regex_module.finditer(pattern, piece):
                if m.start() > last:
                    out.append(piece[last:m.start()])
                out.append(m.group())
                last = m.end()
            if last < len(piece):
                out.append(piece[last:])
        pieces = out
    return pieces


@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZER_REGEXES))
def test_pre_tokenizer_matches_regex_package(pre):
    regex = pytest.importorskip("regex")
    rng = random.Random(pre)
    texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 24))) for _ in range(3000)]
    texts += ROUND_TRIP_TEXTS + [c["text"] for c in oracle_cases]
    for text in texts:
        assert _core.pre_tokenize(pre, text) == regex_split(regex, PRE_TOKENIZER_REGEXES[pre], text), repr(text)


@pytest.mark.parametrize("pre, text, words", [
    # smollm: each digit alone, then GPT-2 (no leading space for a digit after the split)
    ("smollm", "x=12 +3.5", ["x", "=", "1", "2", " +", "3", ".", "5"]),
    ("smollm", "Hello  world\n", ["Hello", " ", " world", "\n"]),
    ("gpt-2", "Hello  world 123", ["Hello", " ", " world", " 123"]),
    ("gpt-2", "it's I'LL", ["it", "'s", " I", "'", "LL"]),
    ("llama-bpe", "it's I'LL 12345", ["it", "'s", " I", "'LL", " ", "123", "45"]),
    ("llama-bpe", "a \n\n b", ["a", " \n\n", " b"]),
    ("qwen2", "x 2024!\n\n", ["x", " ", "2", "0", "2", "4", "!\n\n"]),
    ("default", "a+b=12345", ["a", "+", "b", "=", "123", "45"]),
    # o200k: an uppercase run keeps its lowercase tail, camelCase splits, contractions stay attached
    ("gpt-4o", "HelloWorld it's DON'T 12345 a/b\n\n", ["Hello", "World", " it's", " DON'T", " ", "123", "45",
                                                    " a", "/b", "\n\n"]),
    ("gpt-4o", "<|start|>user", ["<|", "start", "|>", "user"]),
])
def test_pre_tokenizer_hand_cases(pre, text, words):
    assert _core.pre_tokenize(pre, text) == words


def test_unknown_pre_tokenizer_is_refused():
    with pytest.raises(sinkstream.ModelError, match="tokenizer.ggml.pre = 'no-such-pre'"):
        _core.pre_tokenize("no-such-pre", "x")


def test_unicode_tables_are_generated_by_the_script(tmp_path):
    script = REPO / "scripts" / "gen_unicode_tables.py"
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        subprocess.run([sys.executable, str(script), "--output-dir", str(tmp_path / run)], check=True,
                       capture_output=True)
    for name in ("unicode_tables.h", "unicode_tables.cc"):
        fresh = (tmp_path / "a" / name).read_text()
        assert fresh == (tmp_path / "b" / name).read_text()  # deterministic
        committed = (REPO / "cpp" / "runtime" / name).read_text()
        assert f"(Unicode {_core.unicode_version})" in committed
        if unicodedata.unidata_version == _core.unicode_version:
            assert fresh == committed


# ---- SentencePiece-style (SPM) vocabulary ---------------------------------------------------------

SPACE = "\u2581"
UNK, BOS, EOS = 0, 1, 2
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# (piece, score) of the normal tokens; deliberately with equal scores and competing pairs.
SPM_PIECES = [
    (SPACE, -2.0), ("a", -3.0), ("b", -3.0), ("c", -3.0), ("d", -3.0), ("e", -3.0), ("h", -3.0), ("l", -3.0),
    ("o", -3.0), ("r", -3.0), ("w", -3.0), ("t", -3.0), ("n", -3.0), ("s", -3.0),
    ("aa", -1.0), ("ab", -1.5), ("bc", -1.25), ("abc", -4.0), (SPACE + "a", -1.0), (SPACE + "ab", -2.5),
    ("he", -1.0), ("ll", -1.0), ("llo", -1.5), ("hello", -1.75), (SPACE + "h", -2.0), (SPACE + "hello", -0.5),
    ("wo", -1.25), ("or", -1.0), ("rl", -1.0), ("ld", -1.0), ("wor", -2.0), ("world", -2.0),
    (SPACE + "w", -2.0), (SPACE + "world", -0.75), ("th", -1.0), ("the", -1.0), (SPACE + "the", -0.25),
    (SPACE + "t", -1.5), ("an", -1.0), ("nd", -1.0), ("and", -1.0), (SPACE + "and", -0.5), ("é", -3.0),
    (SPACE + SPACE, -1.0),
]
SPM_SPECIAL = [("<tool>", USER_DEFINED), ("<|sep|>", CONTROL), ("<unused0>", UNUSED)]


def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [UNKNOWN, CONTROL, CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>"), scores.append(0.0), types.append(BYTE)
    for piece, score in SPM_PIECES:
        tokens.append(piece), scores.append(score), types.append(NORMAL)
    for piece, kind in SPM_SPECIAL:
        tokens.append(piece), scores.append(0.0), types.append(kind)
    return tokens, scores, types


def write_gguf(path: Path, kv: dict) -> Path:
    """A GGUF with only metadata, written by the gguf package (the reference writer)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in kv.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, tuple):  # (values, GGUFValueType of the elements)
            values, element_type = value
            writer.add_key_value(key, values, gguf.GGUFValueType.ARRAY, sub_type=element_type)
        else:
            writer.add_array(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def spm_kv(**overrides) -> dict:
    tokens, scores, types = spm_vocab()
    kv = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": (scores, gguf.GGUFValueType.FLOAT32),
        "tokenizer.ggml.token_type": (types, gguf.GGUFValueType.INT32),
        "tokenizer.ggml.bos_token_id": BOS,
        "tokenizer.ggml.eos_token_id": EOS,
        "tokenizer.ggml.unknown_token_id": UNK,
    }
    kv.update(overrides)
    return {k: v for k, v in kv.items() if v is not None}


def load(path: Path) -> _core.Tokenizer:
    return _core.Tokenizer.from_gguf(_core.GgufFile.open(str(path)))


@pytest.fixture(scope="module")
def spm(tmp_path_factory) -> _core.Tokenizer:
    return load(write_gguf(tmp_path_factory.mktemp("spm") / "spm.gguf", spm_kv()))


def reference_spm(text: str, add_space_prefix: bool = True) -> list[int]:
    """SentencePiece BPE encoding, written from the algorithm: spaces become U+2581 (one is added in
    front); start from single characters; while some adjacent pair concatenates to a vocabulary entry,
    merge the pair whose entry has the highest score (the leftmost such pair on ties); characters
    left that are no entry become their UTF-8 bytes as <0xNN> tokens."""
    tokens, scores, _ = spm_vocab()
    ids = {t: i for i, t in enumerate(tokens)}
    score = np.asarray(scores, dtype=np.float32)  # as stored in the file
    symbols = list(((" " if add_space_prefix else "") + text).replace(" ", SPACE))
    while True:
        best = None
        for i in range(len(symbols) - 1):
            merged = symbols[i] + symbols[i + 1]
            if merged in ids and (best is None or score[ids[merged]] > score[ids[symbols[best] + symbols[best + 1]]]):
                best = i
        if best is None:
            break
        symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]
    out = []
    for s in symbols:
        out.extend([ids[s]] if s in ids else [ids[f"<0x{b:02X}>"] for b in s.encode()])
    return out


def spm_id(piece: str) -> int:
    return spm_vocab()[0].index(piece)


def test_spm_hand_cases(spm):
    # "▁hello": he (-1) leftmost of the -1.0 pairs, then ll, then llo (-1.5), hello (-1.75), ▁hello.
    assert spm.encode("hello", parse_special=False) == [spm_id(SPACE + "hello")]
    # "▁world": or (-1, leftmost of or/rl/ld), then ld (-1); then ▁w and w+or=wor tie at -2 and the
    # leftmost, ▁w, wins; ▁w+or and or+ld are no entries, so ▁world is never reached.
    assert spm.encode("hello world") == [spm_id(SPACE + "hello"), spm_id(SPACE + "w"), spm_id("or"), spm_id("ld")]
    # "▁aaa": ▁a and aa both score -1.0; the leftmost pair (▁a) merges first, then a+a -> aa.
    assert spm.encode("aaa") == [spm_id(SPACE + "a"), spm_id("aa")]
    # "▁abc": ▁a (-1.0) beats bc (-1.25) and ab (-1.5); then ▁a+b -> ▁ab (-2.5) competes with b+c (-1.25).
    assert spm.encode("abc") == [spm_id(SPACE + "a"), spm_id("bc")]
    # Byte fallback: "ü" is not in the vocabulary -> its two UTF-8 bytes; "é" is.
    assert spm.encode("ü") == [spm_id(SPACE), spm_id("<0xC3>"), spm_id("<0xBC>")]
    assert spm.encode("é") == [spm_id(SPACE), spm_id("é")]


def test_spm_matches_reference_implementation(spm):
    rng = random.Random(7)
    alphabet = list("abcdehlorwtns  ") + ["é", "ü", "中", "😀", "\n"]
    texts = ["hello world", "the and then", "  leading", "trailing  ", "abcabc aab", "wörld ☃"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(500)]
    for text in texts:
        assert spm.encode(text, add_bos=False, parse_special=True) == reference_spm(text), repr(text)


def test_spm_special_tokens_and_space_prefix(spm):
    sep, tool = spm_id("<|sep|>"), spm_id("<tool>")
    # A control token parsed from text; the text after it gets the prefix space again.
    assert spm.encode("<s>hello<|sep|>world") == [BOS] + reference_spm("hello") + [sep] + reference_spm("world")
    # Not parsed: "<s>" is plain text (only the first fragment gets the prefix space).
    assert spm.encode("hello<|sep|>", parse_special=False) == reference_spm("hello<|sep|>")
    # User-defined tokens are matched in both modes.
    for parse_special in (True, False):
        assert spm.encode("a<tool>b", parse_special=parse_special) == reference_spm("a") + [tool] + reference_spm("b")
    assert spm.add_bos_default is True  # SPM default when the file has no add_bos_token key
    assert spm.encode("hello", add_bos=True) == [BOS] + reference_spm("hello")
    assert spm.is_end_of_generation(EOS) and spm.is_control(BOS) and not spm.is_control(tool)


def test_spm_pieces_and_decode(spm):
    assert spm.token_to_piece(spm_id(SPACE + "hello")) == b" hello"
    assert spm.token_to_piece(spm_id("<0xC3>")) == b"\xc3"
    assert spm.token_to_piece(spm_id("<tool>"), render_special=False) == b"<tool>"  # user-defined: text
    assert spm.token_to_piece(BOS, render_special=False) == b""
    assert spm.token_to_piece(BOS) == b"<s>"
    assert spm.token_to_piece(spm_id("<unused0>")) == b""
    for text in ["hello world", "  two spaces", "wörld ☃ 😀", "a\nb"]:
        ids = spm.encode(text)
        assert spm.decode(ids) == text.encode()  # the prefix space is dropped again
        assert b"".join(spm.token_to_piece(i) for i in ids) == b" " + text.encode()


def test_spm_without_space_prefix(tmp_path):
    tok = load(write_gguf(tmp_path / "p.gguf", spm_kv(**{"tokenizer.ggml.add_space_prefix": False,
                                                           "tokenizer.ggml.add_bos_token": False})))
    assert tok.add_bos_default is False
    assert tok.encode("hello world") == reference_spm("hello world", add_space_prefix=False)
    assert tok.decode(tok.encode("hello")) == b"hello"


# ---- a tiny byte-level BPE vocabulary ----------------------------------------------------------------

def gpt2_byte_chars() -> list[str]:
    """openai/gpt-2 encoder.py bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
    other bytes take U+0100.. in order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


NO_MERGES = ["q z"]  # GGUF arrays cannot be empty; this rule never applies in the tests' texts


def bpe_kv(merges: list[str], extra_tokens: list[str], pre: str = "gpt-2", **overrides) -> dict:
    tokens = ["<|endoftext|>"] + gpt2_byte_chars() + extra_tokens
    kv = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": ([CONTROL] + [NORMAL] * (len(tokens) - 1), gguf.GGUFValueType.INT32),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.eos_token_id": 0,
    }
    kv.update(overrides)
    return {k: v for k, v in kv.items() if v is not None}


def bpe_ids(tok: _core.Tokenizer, text: str, **kw) -> list[str]:
    return [tok.token_text(i).decode() for i in tok.encode(text, **kw)]


def test_bpe_merges_by_rank(tmp_path):
    extra = ["ab", "bc", "abc"]
    first_bc = load(write_gguf(tmp_path / "a.gguf", bpe_kv(["b c", "a b", "a bc"], extra)))
    first_ab = load(write_gguf(tmp_path / "b.gguf", bpe_kv(["a b", "b c", "ab c"], extra)))
    no_third = load(write_gguf(tmp_path / "c.gguf", bpe_kv(["b c", "a b"], extra)))
    assert bpe_ids(first_bc, "abc") == ["abc"]  # b+c (rank 0), then a+bc (rank 2)
    assert bpe_ids(first_ab, "abc") == ["abc"]  # a+b (rank 0), then ab+c (rank 2)
    assert bpe_ids(no_third, "abc") == ["a", "bc"]
    assert bpe_ids(no_third, "abab") == ["ab", "ab"]
    # Words are merged separately: the space joins the next word ("Ġ" is the byte-level space).
    assert bpe_ids(no_third, "ab bc") == ["ab", "Ġ", "bc"]


def test_bpe_merge_result_missing_from_vocabulary_falls_back_to_bytes(tmp_path):
    tok = load(write_gguf(tmp_path / "m.gguf", bpe_kv(["a b"], [])))  # "ab" itself is no token
    assert bpe_ids(tok, "ab") == ["a", "b"]


def test_bpe_llama3_keeps_whole_word_tokens(tmp_path):
    # Llama 3 (ignore_merges): a word that is a token is taken whole even with no merge path to it.
    kv = dict(merges=["a b"], extra_tokens=["ab", "abc"])
    assert bpe_ids(load(write_gguf(tmp_path / "g.gguf", bpe_kv(**kv))), "abc") == ["ab", "c"]
    llama3 = load(write_gguf(tmp_path / "l.gguf", bpe_kv(pre="llama-bpe", **kv, **{
        "tokenizer.ggml.bos_token_id": 0})))
    assert bpe_ids(llama3, "abc") == ["abc"]
    assert llama3.add_bos_default is True  # llama.cpp's default for Llama 3 vocabularies


def test_bpe_byte_pieces_and_clean_spaces(tmp_path):
    gpt2 = load(write_gguf(tmp_path / "g.gguf", bpe_kv(NO_MERGES, [])))
    smollm_like = load(write_gguf(tmp_path / "s.gguf", bpe_kv(NO_MERGES, [], pre="smollm")))
    chars = gpt2_byte_chars()
    for b in (0, 9, 10, 32, 0x41, 0xAD, 0xFF):
        assert gpt2.token_to_piece(1 + b) == bytes([b])
        assert gpt2.token_text(1 + b).decode() == chars[b]
    # gpt-2 detokenizes with clean_up_tokenization_spaces (as llama.cpp); smollm does not.
    text = "x , y . it 's"
    assert gpt2.decode(gpt2.encode(text)) == b"x, y. it's"
    assert smollm_like.decode(smollm_like.encode(text)) == text.encode()
    assert b"".join(gpt2.token_to_piece(i) for i in gpt2.encode(text)) == text.encode()


# ---- metadata errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, key", [
    ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens"),
    ({"tokenizer.ggml.model": None}, "tokenizer.ggml.model"),
    ({"tokenizer.ggml.model": "bert"}, "tokenizer.ggml.model"),
    ({"tokenizer.ggml.bos_token_id": 100000}, "tokenizer.ggml.bos_token_id"),
    ({"tokenizer.ggml.eos_token_id": 100000}, "tokenizer.ggml.eos_token_id"),
    ({"tokenizer.ggml.scores": ([0.0] * 3, gguf.GGUFValueType.FLOAT32)}, "tokenizer.ggml.scores"),
    ({"tokenizer.ggml.token_type": ([1] * 3, gguf.GGUFValueType.INT32)}, "tokenizer.ggml.token_type"),
    ({"tokenizer.ggml.tokens": spm_vocab()[0][:-1] + ["a"]}, "tokenizer.ggml.tokens"),  # "a" twice
])
def test_bad_spm_metadata_names_the_key(tmp_path, overrides, key):
    with pytest.raises(sinkstream.ModelError, match=key.replace(".", r"\.")):
        load(write_gguf(tmp_path / "bad.gguf", spm_kv(**overrides)))


@pytest.mark.parametrize("kv, key", [
    (bpe_kv(["a b"], [], **{"tokenizer.ggml.merges": None}), "tokenizer.ggml.merges"),
    (bpe_kv(["a zz"], []), "tokenizer.ggml.merges"),  # "zz" is no token
    (bpe_kv(["ab"], []), "tokenizer.ggml.merges"),    # no separator
    (bpe_kv(NO_MERGES, [], pre="no-such-pre"), "tokenizer.ggml.pre"),
    (bpe_kv(NO_MERGES, [], **{"tokenizer.ggml.add_bos_token": True}), "tokenizer.ggml.add_bos_token"),
    (bpe_kv(NO_MERGES, [], **{"tokenizer.ggml.bos_token_id": 5000}), "tokenizer.ggml.bos_token_id"),
])
def test_bad_bpe_metadata_names_the_key(tmp_path, kv, key):
    with pytest.raises(sinkstream.ModelError, match=key.replace(".", r"\.")):
        load(write_gguf(tmp_path / "bad.gguf", kv))


def test_add_bos_without_bos_token_is_a_value_error(tmp_path):
    tok = load(write_gguf(tmp_path / "n.gguf", bpe_kv(NO_MERGES, [])))
    assert tok.bos_id == -1
    with pytest.raises(ValueError, match="no BOS token"):
        tok.encode("x", add_bos=True)
