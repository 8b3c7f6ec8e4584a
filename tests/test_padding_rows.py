"""A GGUF whose token embedding has more rows than its tokenizer has tokens (converters pad it to a
multiple of 64 or 128): it loads, its logits keep every row, and generation never samples a padding
id (issue 17, item 3; it used to fail mid-generation in token_to_piece). A tokenizer with more
tokens than the embedding has rows is refused at load."""
from __future__ import annotations

import numpy as np
import pytest

import sinkstream
from sinkstream.generation import make_sampler
from tiny_models import write_tiny_model

N_TOKENS = 261   # the tiny models' byte-level vocabulary
PADDING = 20
HOT = dict(temperature=50.0, top_k=0, top_p=1.0, min_p=0.0)  # close to uniform over what is allowed


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_tiny_model(tmp_path_factory.mktemp("pad") / "padded.gguf", padding_rows=PADDING)
    return sinkstream.Model(path, n_threads=1)


def test_the_logits_keep_every_row_and_padding_would_win(model):
    assert model.n_vocab == N_TOKENS + PADDING
    assert model.n_tokenizer_vocab == N_TOKENS
    session = model.session(mode="streaming", n_sink=2, window=60)
    winners = [int(np.argmax(session.eval([t], logits="last"))) for t in model.tokenize("the cat sat on it")]
    assert len(session.eval([1], logits="last")) == N_TOKENS + PADDING
    # The fixture is meaningful: unmasked greedy decoding would pick padding ids.
    assert sum(w >= N_TOKENS for w in winners) >= len(winners) // 2, winners


@pytest.mark.parametrize("options", [dict(temperature=0.0), dict(HOT, seed=1), dict(HOT, seed=2),
                                     dict(temperature=0.8, top_k=5, seed=3)], ids=["greedy", "hot1", "hot2", "topk"])
def test_generation_never_samples_a_padding_id(model, options):
    session = model.session(mode="streaming", n_sink=2, window=60)
    text = session.generate("the", max_tokens=150, **options)  # used to raise in token_to_piece
    tokens = session.last_stats.tokens
    assert tokens and max(tokens) < N_TOKENS
    assert isinstance(text, str)


def test_chat_never_samples_a_padding_id(model):
    session = model.session(mode="streaming", n_sink=2, window=120)
    reply = "".join(session.chat("hi", max_tokens=60, **dict(HOT, seed=4)))
    assert max(session.last_stats.tokens) < N_TOKENS and isinstance(reply, str)


def test_samplers_mask_the_padding_ids():
    logits = np.zeros(N_TOKENS + PADDING, np.float32)
    logits[N_TOKENS + 3] = 100.0  # the best logit is a padding row's
    logits[7] = 1.0
    greedy = make_sampler(len(logits), n_allowed=N_TOKENS, temperature=0.0)
    assert greedy.sample(logits) == 7
    hot = make_sampler(len(logits), n_allowed=N_TOKENS, seed=0, **HOT)
    probs = hot.probabilities(logits)
    assert np.all(probs[N_TOKENS:] == 0) and abs(float(probs.sum()) - 1.0) < 1e-5
    assert all(hot.sample(logits) < N_TOKENS for _ in range(500))
    assert hot.n_allowed == N_TOKENS and hot.n_vocab == N_TOKENS + PADDING
    # Without n_allowed every entry may be drawn (plain logits have no padding).
    assert make_sampler(len(logits), temperature=0.0).sample(logits) == N_TOKENS + 3
    with pytest.raises(ValueError, match="n_allowed must be <= n_vocab"):
        make_sampler(10, n_allowed=11)


def test_padding_ids_are_refused_where_text_is_needed(model):
    with pytest.raises(ValueError, match=f"token {N_TOKENS + 1} is a padding row of the embedding: the "
                                         f"tokenizer has only {N_TOKENS} tokens"):
        model.token_bytes(N_TOKENS + 1)
    with pytest.raises(ValueError, match="padding row"):
        model.detokenize([1, N_TOKENS])
    session = model.session(mode="streaming", n_sink=2, window=60)
    with pytest.raises(ValueError, match=f"logit_bias token id {N_TOKENS} is outside the vocabulary \\[0, {N_TOKENS}\\)"):
        session.generate("the", max_tokens=2, logit_bias={N_TOKENS: 5.0})
    # Feeding a padding id is allowed (its row exists): only sampling and text exclude them.
    assert session.eval([N_TOKENS + 2], logits="last").shape == (N_TOKENS + PADDING,)


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    path = write_tiny_model(tmp_path / "short.gguf", padding_rows=-10)
    with pytest.raises(sinkstream.ModelError, match=f"the tokenizer has {N_TOKENS} tokens but token_embd.weight "
                                                    f"only {N_TOKENS - 10} rows"):
        sinkstream.Model(path)
