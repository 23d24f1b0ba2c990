"""Token ids as input (``TokenIds``): spliced into the prompt exactly as given, checked against
sequences built here by hand (each template piece tokenized on its own, the tokenizer's own special
tokens around), and embedded as their text where a template does not split (a tokenizer that adds
a dummy prefix space to every piece). Truncation keeps the first ids, ``chunk_mean`` cuts runs of
ids, Token Prepending inserts its placeholder, and every entry point keeps the ids."""

from __future__ import annotations

import asyncio
import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from helpers import CORPUS, PAPER, TEXTS, VOCAB_SIZE, make_model, make_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.prompts import DOCUMENT_PROMPT, ECHO_PROMPT, FAMILIES, PROMPTEOL_PROMPT
from kv_embeddings_integrations.core.running.inputs import TokenIds, prepare_texts, repair_surrogates, texts_to_embed
from kv_embeddings_integrations.core.running.tokenization import EncodedText, PromptTokenizer

BOS = 0
# Ids chosen by hand, not any text's tokenization (so only splicing can put them in the sequence).
IDS = [200, 17, 5, 301, 42, 42, 99, 150]


def bos_tokenizer() -> PreTrainedTokenizerFast:
    """The suite's byte-level BPE tokenizer, putting a BOS before every string (as Llama's do)."""
    backend = make_tokenizer().backend_tokenizer
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>")


def dummy_prefix_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style (Metaspace) BPE tokenizer that prefixes every string with a space, as
    SentencePiece's dummy prefix does: template pieces tokenized alone gain a space each."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    alphabet = [chr(c) for c in range(33, 127)] + ["▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - 2, special_tokens=["<bos>", "<eos>"], initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4 + [DOCUMENT_PROMPT], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return bos_tokenizer()


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


@pytest.fixture
def embedder(model, tok):
    return KVEmbedder(model, tok, layers=[1, 2], max_length=64, **PAPER)


def given(tok, ids=IDS) -> TokenIds:
    return TokenIds(ids, tok.decode(ids))


def piece_ids(tok, template: str) -> list[list[int]]:
    """The slow reference: each piece of the template tokenized by itself, no special tokens."""
    return [tok(piece, add_special_tokens=False)["input_ids"] for piece in template.split("{text}")]


def spliced(tok, template: str, ids: list[int]) -> EncodedText:
    """The expected encoding, by hand: BOS, then the pieces with ``ids`` between them; the text is
    the last copy."""
    pieces = piece_ids(tok, template)
    sequence = [BOS] + pieces[0]
    for piece in pieces[1:]:
        start = len(sequence)
        sequence += list(ids) + piece
    return EncodedText(sequence, start, start + len(ids))


def hand_vectors(embedder, encoded: list[EncodedText]) -> np.ndarray:
    """Unit vectors of hand-built encodings, one row each, through the embedder's own collate and
    the runner's forward (its seam: re-routing, Token Prepending and pooling as configured)."""
    rows = [embedder.runner.forward(embedder.collate([e]))[0] for e in encoded]
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1).numpy()


# -- the value ----------------------------------------------------------------------------------


def test_token_ids_is_its_text_and_carries_its_ids():
    item = TokenIds(np.array([3, 1, 4]), "pie")
    assert item == "pie" and isinstance(item, str) and item.ids == (3, 1, 4)
    assert all(type(i) is int for i in item.ids)
    assert repr(item) == "TokenIds([3, 1, 4], 'pie')"
    for copied in (pickle.loads(pickle.dumps(item)), copy.copy(item), copy.deepcopy(item)):
        assert type(copied) is TokenIds and copied.ids == item.ids and str(copied) == "pie"
    (back,) = pickle.loads(pickle.dumps([item]))
    assert type(back) is TokenIds and back.ids == (3, 1, 4)


@pytest.mark.parametrize(
    ("ids", "text", "error"),
    [([1, -2], "x", ValueError), ([1, 2.0], "x", TypeError), ([True], "x", TypeError), ("12", "x", TypeError)],
)
def test_bad_token_ids_are_refused(ids, text, error):
    with pytest.raises(error):
        TokenIds(ids, text)


def test_the_input_checks_keep_token_ids():
    item, broken = TokenIds([1, 2], "ok"), TokenIds([3], "bad \ud800")
    items, single = texts_to_embed(item)
    assert single and items[0] is item
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        checked = prepare_texts([item, broken, "plain \ud800"])
    assert checked[0] is item
    assert type(checked[1]) is TokenIds and checked[1].ids == (3,) and checked[1] == "bad \ufffd"
    assert type(checked[2]) is str and checked[2] == "plain \ufffd"
    assert repair_surrogates(item) is item


# -- splicing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("template", [DOCUMENT_PROMPT, ECHO_PROMPT, PROMPTEOL_PROMPT, "{text}"])
def test_token_ids_are_spliced_exactly(embedder, tok, template):
    item = given(tok)
    (got,) = embedder.tokenize([item], template=template)
    assert got == spliced(tok, template, IDS)
    assert got.input_ids[got.text_start : got.text_end] == IDS


def test_the_bundled_families_split_with_a_byte_level_tokenizer(embedder, tok):
    prompt_tokenizer = PromptTokenizer(tok, 512)
    assert prompt_tokenizer.special_edges() == ([BOS], [])
    for family in FAMILIES.values():
        assert all(prompt_tokenizer.splits(t) for ts in family.templates.values() for t in ts)
    assert embedder.splices("document") and embedder.splices("query")


def test_token_ids_embed_as_their_spliced_sequence(embedder, tok):
    item = given(tok)
    reference = hand_vectors(embedder, [spliced(tok, DOCUMENT_PROMPT, IDS)])[0]
    alone = embedder.embed(item)  # one TokenIds is one string: one row
    np.testing.assert_allclose(alone.vectors[0], reference, atol=1e-6)
    assert alone.token_counts == (len(spliced(tok, DOCUMENT_PROMPT, IDS)),)
    # Beside plain texts (other lengths: padding), each row is its own.
    mixed = embedder.embed([TEXTS[1], item, TEXTS[2]])
    np.testing.assert_allclose(mixed.vectors[1], reference, atol=1e-5)
    np.testing.assert_allclose(mixed.vectors[[0, 2]], embedder.embed([TEXTS[1], TEXTS[2]]).vectors, atol=1e-5)
    # Not what the text gives: the ids are not its tokenization.
    assert not np.allclose(embedder.embed([str(item)]).vectors[0], reference, atol=1e-3)


def test_coalesced_requests_keep_the_ids(embedder, tok):
    item = given(tok)
    expected = embedder.embed([item, TEXTS[0]]).vectors
    submitted = embedder.submit_embed([item, TEXTS[0]]).result(timeout=60)
    np.testing.assert_allclose(submitted.vectors, expected, atol=1e-5)

    async def both():
        return await asyncio.gather(embedder.aembed([item]), embedder.aembed([TEXTS[0]]))

    first, second = asyncio.run(both())
    np.testing.assert_allclose(np.concatenate([first.vectors, second.vectors]), expected, atol=1e-5)


def test_sparse_vectors_cover_the_given_ids(embedder, tok):
    item = given(tok)
    (encoded,) = embedder.tokenize([item])
    batch = embedder.collate([encoded])
    assert batch.input_ids[batch.text_mask].tolist() == IDS
    result = embedder.embed([item, TEXTS[0]], sparse=True)
    assert result.sparse is not None
    assert len(result.sparse.indices[0]) and set(result.sparse.indices[0].tolist()) <= set(IDS)


def test_the_lexical_channel_reads_the_text(model, tok):
    embedder = KVEmbedder(model, tok, layers=[1], postprocess="none", lexical="bm25", lexical_dim=64)
    item = given(tok)
    dense = embedder.dimension - embedder.lexical.dim
    spliced_row, text_row = embedder.embed([item, str(item)]).vectors
    np.testing.assert_allclose(spliced_row[dense:], text_row[dense:], atol=1e-6)


# -- a template that does not split -------------------------------------------------------------


def test_a_template_that_does_not_split_embeds_the_text(model):
    tok = dummy_prefix_tokenizer()
    embedder = KVEmbedder(model, tok, layers=[1, 2], max_length=64, **PAPER)
    assert not embedder.splices("document")
    assert not PromptTokenizer(tok, 64).splits(DOCUMENT_PROMPT)
    # The raw template has no pieces to gain a space: it splits.
    assert PromptTokenizer(tok, 64).splits("{text}")
    text = "A man is playing a guitar."
    other = tok("Stocks fell.", add_special_tokens=False)["input_ids"]  # ids that are not the text's
    item = TokenIds(other, text)
    assert embedder.tokenize([item]) == embedder.tokenize([text])
    np.testing.assert_allclose(embedder.embed([item]).vectors, embedder.embed([text]).vectors, atol=1e-6)


# -- over-long ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("template", [DOCUMENT_PROMPT, ECHO_PROMPT])
def test_truncation_keeps_the_first_ids(model, tok, template):
    embedder = KVEmbedder(model, tok, layers=[1, 2], max_length=48, **PAPER)
    long_ids = list(range(5, 105))
    prompt = len(spliced(tok, template, []).input_ids)
    copies = template.count("{text}")
    keep = (48 - prompt) // copies
    (got,) = embedder.tokenize([given(tok, long_ids)], template=template)
    expected = spliced(tok, template, long_ids[:keep])
    assert (got.input_ids, got.text_start, got.text_end, got.truncated) == (
        expected.input_ids,
        expected.text_start,
        expected.text_end,
        True,
    )
    assert len(got) <= 48
    if template == DOCUMENT_PROMPT:
        result = embedder.embed([given(tok, long_ids)])
        assert result.truncated == (True,) and result.token_counts == (len(expected),)
        np.testing.assert_allclose(result.vectors[0], hand_vectors(embedder, [expected])[0], atol=1e-6)


def test_ids_over_a_too_small_max_length(tok):
    prompt_tokenizer = PromptTokenizer(tok, 8)
    with pytest.raises(ValueError, match="too small"):
        prompt_tokenizer.encode([given(tok)], DOCUMENT_PROMPT)
    # Not truncating: left whole, only flagged (for the caller to split).
    (whole,) = PromptTokenizer(tok, 20).encode([given(tok, list(range(5, 50)))], DOCUMENT_PROMPT, truncate=False)
    expected = spliced(tok, DOCUMENT_PROMPT, list(range(5, 50)))
    assert whole == EncodedText(expected.input_ids, expected.text_start, expected.text_end, truncated=True)


def test_chunk_mean_cuts_runs_of_ids(model, tok):
    embedder = KVEmbedder(model, tok, layers=[1, 2], max_length=40, long_text="chunk_mean", **PAPER)
    long_ids = [5 + (7 * i) % 300 for i in range(70)]
    item = given(tok, long_ids)
    budget = 40 - len(spliced(tok, DOCUMENT_PROMPT, []).input_ids)
    pieces = embedder._prompt_tokenizer.split(item, DOCUMENT_PROMPT)
    runs = [long_ids[i : i + budget] for i in range(0, len(long_ids), budget)]
    assert [p.ids for p in pieces] == [tuple(r) for r in runs]
    for piece, run in zip(pieces, runs, strict=True):
        assert type(piece) is TokenIds and piece == tok.decode(run, clean_up_tokenization_spaces=False)
    # The text's vector: the pieces' mean weighted by their ids, normalised.
    encoded = [spliced(tok, DOCUMENT_PROMPT, r) for r in runs]
    raw = torch.stack([embedder.runner.forward(embedder.collate([e]))[0] for e in encoded])
    weights = torch.tensor([float(len(r)) for r in runs])[:, None]
    reference = torch.nn.functional.normalize((raw * weights).sum(0) / weights.sum(), dim=-1).numpy()
    result = embedder.embed([TEXTS[0], item])
    assert result.pieces == (1, len(runs)) and result.truncated == (False, False)
    assert result.token_counts[1] == sum(len(e) for e in encoded)
    np.testing.assert_allclose(result.vectors[1], reference, atol=1e-5)


# -- Token Prepending ---------------------------------------------------------------------------


def test_token_prepending_places_its_placeholder_in_spliced_ids(model, tok):
    embedder = KVEmbedder(model, tok, method="tp", max_length=64, postprocess="none", lexical="none")
    placeholder = tok.eos_token_id  # no pad token: the eos is the placeholder
    base = spliced(tok, PROMPTEOL_PROMPT, IDS)
    at = base.text_start - 1
    expected = EncodedText(
        base.input_ids[:at] + [placeholder] + base.input_ids[at:], base.text_start + 1, base.text_end + 1, marker=at
    )
    (got,) = embedder.tokenize([given(tok)])
    assert got == expected
    assert got.input_ids[got.text_start : got.text_end] == IDS
    result = embedder.embed([given(tok), TEXTS[0]])
    np.testing.assert_allclose(result.vectors[0], hand_vectors(embedder, [expected])[0], atol=1e-5)
