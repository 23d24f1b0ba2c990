"""``embed`` and ``EmbedResult`` (``core/results.py``), what every front end reports from: each
text's token count, truncation and ``chunk_mean`` pieces, per request when requests share a pass;
slicing and concatenation."""

from __future__ import annotations

import asyncio
import warnings

import numpy as np
import pytest
from helpers import PAPER, TEXTS, make_model

from kv_embeddings_integrations import EmbedResult, KVEmbedder

LONG = " ".join(TEXTS * 6)


@pytest.fixture
def embedder(tokenizer):
    return KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], max_length=48, **PAPER)


def test_embed_reports_each_texts_tokens_and_truncation(embedder):
    texts = [TEXTS[0], LONG, ""]
    result = embedder.embed(texts, prompt_type="query")
    assert isinstance(result, EmbedResult) and len(result) == 3
    # Token counts are the prompted sequences the model saw (after truncation), padding excluded.
    assert result.token_counts == tuple(len(e) for e in embedder.tokenize(texts, "query"))
    assert result.truncated == (False, True, False) and result.num_truncated == 1
    assert result.pieces == (1, 1, 1) and result.total_tokens == sum(result.token_counts)
    assert result.token_counts[1] == 48  # cut to max_length, prompt kept
    with pytest.warns(UserWarning, match="1 of 3 texts were longer than max_length=48"):
        vectors = embedder.encode(texts, prompt_type="query")
    np.testing.assert_array_equal(vectors, result.vectors)  # encode is embed's vectors


def test_embed_of_one_string_and_of_nothing(embedder):
    one = embedder.embed(TEXTS[0])
    assert one.vectors.shape == (1, 64) and one.token_counts == (len(embedder.tokenize([TEXTS[0]])[0]),)
    np.testing.assert_array_equal(one.vectors[0], embedder.encode(TEXTS[0]))
    empty = embedder.embed([])
    assert empty.vectors.shape == (0, 64) and empty.total_tokens == 0


def test_chunk_mean_counts_every_piece(tokenizer):
    chunked = KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], max_length=48, long_text="chunk_mean", **PAPER)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is truncated: the long text is split
        result = chunked.embed([LONG, TEXTS[0]])
    pieces = chunked._prompt_tokenizer.split(LONG, chunked.template())  # the splitter, on purpose
    assert result.pieces == (len(pieces), 1) and result.num_split == 1 and result.num_truncated == 0
    assert result.token_counts[0] == sum(len(e) for e in chunked.tokenize(pieces))


def test_result_slices_and_concatenates():
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = EmbedResult(vectors, (5, 6, 7), (False, True, False), (1, 1, 2))
    tail = result[1:]
    assert tail.token_counts == (6, 7) and tail.num_truncated == 1 and tail.num_split == 1
    joined = EmbedResult.concatenate([result[:1], tail])
    np.testing.assert_array_equal(joined.vectors, vectors)
    assert joined.token_counts == result.token_counts
    with pytest.raises(ValueError, match="one count, flag and piece count per vector row"):
        EmbedResult(vectors, (1,), (False,), (1,))
    with pytest.raises(TypeError, match="sliced by a slice"):
        result[0]


async def test_concurrent_requests_learn_their_own_usage_and_truncation(embedder):
    # Both requests land in one coalesced forward pass; each gets its own texts' counts back.
    short, long = await asyncio.gather(
        embedder.aembed([TEXTS[0], TEXTS[2]], prompt_type="query"), embedder.aembed([LONG], prompt_type="query")
    )
    assert sum(embedder.requests.batch_sizes) == 3  # the request queue's record, on purpose
    assert short.truncated == (False, False) and long.truncated == (True,)
    assert short.token_counts == tuple(len(e) for e in embedder.tokenize([TEXTS[0], TEXTS[2]], "query"))
    np.testing.assert_allclose(long.vectors[0], embedder.embed(LONG, prompt_type="query").vectors[0], atol=1e-6)
    # aencode warns in its own caller, only for its own texts.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await embedder.aencode([TEXTS[0]])
    with pytest.warns(UserWarning, match="1 of 1 texts") as caught:
        await embedder.aencode([LONG])
    assert caught[0].filename == __file__  # the caller's line, not the library's
    assert embedder.submit_embed([LONG, TEXTS[0]]).result(10).truncated == (True, False)


def test_a_warning_turned_error_fails_the_future_instead_of_hanging(embedder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        future = embedder.submit([LONG])
        with pytest.raises(UserWarning, match="were truncated"):
            future.result(10)
