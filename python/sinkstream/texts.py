"""Evaluation texts for `sinkstream ppl`: a file, or the King James Bible ("kjv").

The KJV comes from Debian's `bible-kjv` package (its `bible` command). It is public domain, about
4.4 MB / 820K words, long enough to stream far past any cache. Install it with KJV_INSTALL_COMMAND.
The extracted text (verse references stripped) is cached in the user cache directory.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from .default_model import cache_dir

if TYPE_CHECKING:
    from .model import Model

KJV_NAME = "kjv"
KJV_INSTALL_COMMAND = "apt-get update && apt-get install -y bible-kjv"
KJV_RANGE = "gen1:1-rev22:21"       # the whole book, Genesis 1:1 to Revelation 22:21
KJV_CACHE_FILE = "kjv.txt"
# `bible -f` prints one verse per line as "Ge1:1 In the beginning ..."; drop the reference
# (the equivalent of sed -E 's/^[^ ]+ //').
_VERSE_REFERENCE = re.compile(r"^[^ ]+ ", re.MULTILINE)
# Characters of text per token is ~4 for English BPE; tokenize_text starts from a generous guess.
_CHARS_PER_TOKEN_GUESS = 8


def install_kjv() -> None:
    """Installs Debian's bible-kjv package (needs root and apt; what CI runs): KJV_INSTALL_COMMAND."""
    subprocess.run(KJV_INSTALL_COMMAND, shell=True, check=True)


def kjv_text(cache: Path | None = None) -> str:
    """The whole King James Bible as plain text, one verse per line, from the `bible` command."""
    cache = cache_dir() if cache is None else Path(cache)
    cached = cache / KJV_CACHE_FILE
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    bible = shutil.which("bible")
    if bible is None:
        raise FileNotFoundError("--text kjv needs Debian's King James Bible: the `bible` command was not found; "
                                f"install it with: {KJV_INSTALL_COMMAND}")
    result = subprocess.run([bible, "-f", KJV_RANGE], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, check=False)
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(f"`bible -f {KJV_RANGE}` failed (exit status {result.returncode}): "
                           f"{result.stderr.decode('utf-8', 'replace').strip()}")
    text = _VERSE_REFERENCE.sub("", result.stdout.decode("utf-8", "replace"))
    try:  # best effort: an unwritable cache only means running `bible` again next time
        cache.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.partial{os.getpid()}")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, cached)
    except OSError:
        pass
    return text


def load_text(source: str | os.PathLike[str]) -> str:
    """Evaluation text from `source`: a path to a UTF-8 text file, or "kjv" (see kjv_text)."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"text source must be a path or 'kjv', got {type(source).__name__}")
    if isinstance(source, str) and source == KJV_NAME and not os.path.exists(source):
        return kjv_text()
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"text file not found: {path} (or pass 'kjv' for the King James Bible)")
    if path.is_dir():
        raise IsADirectoryError(f"expected a text file, got a directory: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text:
        raise ValueError(f"text file is empty: {path}")
    return text


def tokenize_text(model: "Model", text: str, max_tokens: int | None = None) -> list[int]:
    """Token ids of `text` for perplexity (BOS as the model's metadata says; special-token text
    such as "<|im_start|>" is read as plain text), at most max_tokens of them.

    With max_tokens, only a prefix of the text is tokenized (long texts take a while): a prefix
    cut at a line end, long enough to give a margin of tokens past max_tokens, so the cut cannot
    change the tokens kept.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if max_tokens is None:
        return list(model.tokenize(text, add_bos=None, special=False))
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2:
        raise ValueError(f"max_tokens must be an int >= 2, got {max_tokens!r}")
    margin = 64
    length = (max_tokens + margin) * _CHARS_PER_TOKEN_GUESS
    while True:
        if length >= len(text):
            return list(model.tokenize(text, add_bos=None, special=False))[:max_tokens]
        cut = text.rfind("\n", 0, length)
        prefix = text[:cut + 1] if cut > 0 else text[:length]
        ids = list(model.tokenize(prefix, add_bos=None, special=False))
        if len(ids) >= max_tokens + margin:
            return ids[:max_tokens]
        length *= 2
