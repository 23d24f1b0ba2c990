"""Packed rows (padding-free batches): several texts in one row, ``position_ids`` restarting at each,
every text re-routed with its own final key and value; each text's hidden states must equal the
text run alone (which test_rerouting pins to the explicit reference), for every covered family,
through the log-sum-exp merge (SDPA) and the concatenation (eager)."""

from __future__ import annotations

import pytest
import torch
from helpers import TEXTS, make_model

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.method import rerouting
from kv_embeddings_integrations.core.running import packing

LAYERS, BIAS = [1, 2], 1.5


def _ids(model, tokenizer) -> list[list[int]]:
    embedder = KVEmbedder(model, tokenizer, layers=LAYERS, bias=BIAS, method="kv", postprocess="none")
    return [e.input_ids for e in embedder.tokenize(TEXTS[:4], "document")]


def _run(model, ids: list[int], **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.get_decoder()(input_ids=torch.tensor([ids]), use_cache=False, **kwargs).last_hidden_state[0]


def test_packed_rows_match_each_text_alone(family, tokenizer):
    model = make_model(family)
    sequences = _ids(model, tokenizer)  # installs re-routing
    lengths = [len(s) for s in sequences]
    assert len(set(lengths)) > 1, "sequences of different lengths"
    positions, ends = packing.packed_positions(lengths)
    packed = [token for s in sequences for token in s]
    alone = []
    for s in sequences:
        with rerouting.reroute(model, LAYERS, BIAS) as plan:
            alone.append(_run(model, s))
    with rerouting.reroute(model, LAYERS, BIAS, segment_ends=ends) as plan:
        together = _run(model, packed, position_ids=positions)
    assert plan.hits == set(LAYERS)
    # The merge on SDPA models, the concatenation where the model runs eager attention (Gemma 2).
    assert set(plan.kernels.values()) == ({"concat"} if family == "gemma2" else {"cpu_flash"}), plan.kernels
    start = 0
    for n, expected in zip(lengths, alone, strict=True):
        torch.testing.assert_close(together[start : start + n], expected, atol=1e-5, rtol=1e-5)
        start += n
    # Without its own final token as prefix (every position taking the row's last), a text is not itself.
    with rerouting.reroute(model, LAYERS, BIAS):
        shared_prefix = _run(model, packed, position_ids=positions)
    assert not torch.allclose(shared_prefix[: lengths[0]], alone[0], atol=1e-3)


def test_pack_rows_first_fit_longest_first():
    assert packing.pack_rows([30, 29, 19, 11, 1], 30) == [[0], [1, 4], [2, 3]]
    assert packing.pack_rows([5], 5) == [[0]]
    with pytest.raises(ValueError, match="does not fit rows of 4"):
        packing.pack_rows([5], 4)


def test_packed_positions():
    positions, ends = packing.packed_positions([3, 1, 2])
    assert positions.tolist() == [[0, 1, 2, 0, 0, 1]] and ends.tolist() == [[2, 2, 2, 3, 5, 5]]
    with pytest.raises(ValueError, match="at least one token each"):
        packing.packed_positions([2, 0])


@pytest.mark.parametrize(
    "options",
    [
        {"method": "kv", "layers": LAYERS},  # mean + last of the last layer
        {"method": "kv_pcot", "layers": [1]},  # last token of the layer before the last (no final norm)
        {"method": "echo", "postprocess": "none"},  # mean over the text's second copy, no re-routing
    ],
    ids=["kv", "kv_pcot", "echo"],
)
def test_packed_batching_gives_the_padded_vectors(family, tokenizer, options):
    model = make_model(family)
    padded = KVEmbedder(model, tokenizer, **options)
    packed = KVEmbedder(model, tokenizer, batching="packed", **options)
    for prompt_type in ("document", "query"):
        expected = padded.embed(TEXTS, prompt_type=prompt_type)
        got = packed.embed(TEXTS, prompt_type=prompt_type)
        torch.testing.assert_close(
            torch.from_numpy(got.vectors), torch.from_numpy(expected.vectors), atol=2e-5, rtol=1e-4
        )
        assert got.token_counts == expected.token_counts


def test_packed_batching_keeps_sparse_vectors(tokenizer):
    from helpers import tied_model_dir

    padded = KVEmbedder.from_pretrained(tied_model_dir(), method="kv", layers=[1], postprocess="none")
    packed = KVEmbedder(padded.model, padded.tokenizer, padded.config, batching="packed")
    got, expected = packed.embed(TEXTS, sparse=True), padded.embed(TEXTS, sparse=True)
    torch.testing.assert_close(torch.from_numpy(got.vectors), torch.from_numpy(expected.vectors), atol=2e-5, rtol=1e-4)
    for a, b in zip(got.sparse.indices, expected.sparse.indices, strict=True):
        assert a.tolist() == b.tolist()
    for a, b in zip(got.sparse.values, expected.sparse.values, strict=True):
        torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(b), atol=1e-4, rtol=1e-4)


def test_a_mixed_batch_runs_in_fewer_rows_with_the_same_states(tokenizer):
    model = make_model("qwen3")
    padded = KVEmbedder(model, tokenizer, layers=LAYERS, method="kv", postprocess="none")
    packed = KVEmbedder(model, tokenizer, layers=LAYERS, method="kv", postprocess="none", batching="packed")
    encoded = padded.tokenize(TEXTS)
    batch = padded.collate(encoded)  # one left-padded batch of every length
    lengths = [len(e) for e in encoded]
    shapes = []
    original = packed.decoder.forward

    def spy(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return original(*args, **kwargs)

    packed.decoder.forward = spy
    try:
        got = packed.forward(batch, output_hidden_states=True)
    finally:
        del packed.decoder.forward
    expected = padded.forward(batch, output_hidden_states=True)
    # Rows of the batch's width, first fit: fewer rows than texts, none wider than the padded batch.
    assert shapes == [(len(packing.pack_rows(lengths, max(lengths))), max(lengths))] and shapes[0][0] < len(TEXTS)
    real = batch.attention_mask.bool()
    for ours, theirs in zip(
        (got.last_hidden_state, *got.hidden_states), (expected.last_hidden_state, *expected.hidden_states), strict=True
    ):
        torch.testing.assert_close(ours[real], theirs[real], atol=2e-5, rtol=1e-4)


def test_packed_batching_refuses_token_prepending(tokenizer):
    with pytest.raises(ValueError, match="batching='packed' does not run Token Prepending"):
        KVEmbedder(make_model("llama"), tokenizer, method="tp", batching="packed")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_cuda_packed_batching_matches_the_cpu_padded_vectors(tokenizer, dtype):
    # The CUDA merge kernels on packed rows against the CPU reference path (padded, float32).
    model = make_model("qwen3")
    expected = KVEmbedder(model, tokenizer, layers=LAYERS, method="kv", postprocess="none").encode(TEXTS)
    cuda = make_model("qwen3").to("cuda", dtype)
    packed = KVEmbedder(cuda, tokenizer, layers=LAYERS, method="kv", postprocess="none", batching="packed")
    got = packed.encode(TEXTS)
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected), atol=tolerance, rtol=tolerance)
