"""KV re-routing against the explicit reference, for every covered family, with and without padding."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import FAMILIES, PAPER, TEXTS, make_model
from reference import reference_hidden_states

from kv_embeddings_integrations import KVEmbedder, UnsupportedModelError
from kv_embeddings_integrations.core.method import kernels, rerouting
from kv_embeddings_integrations.core.method.kernels import KernelTable


def _batch_hidden(embedder: KVEmbedder, texts: list[str], output_hidden_states: bool = False):
    encoded = embedder.tokenize(texts, "document")
    batch = embedder.collate(encoded)  # one padded batch, whatever the lengths
    return encoded, batch, embedder.forward(batch, output_hidden_states=output_hidden_states)


@pytest.mark.parametrize("layers,bias", [([1, 2], 1.0), ([3], 0.0), ([0, 1, 2, 3], 2.5)])
def test_matches_reference_with_padding(family, tokenizer, layers, bias):
    model = make_model(family)
    embedder = KVEmbedder(model, tokenizer, layers=layers, bias=bias, **PAPER)
    encoded, batch, out = _batch_hidden(embedder, TEXTS)
    width = batch.input_ids.shape[1]
    assert len({len(e) for e in encoded}) > 1, "the batch must actually be padded"
    for row, e in enumerate(encoded):
        expected = reference_hidden_states(model, e.input_ids, layers, bias)
        got = out.last_hidden_state[row, width - len(e) :]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_matches_reference_without_padding(family, tokenizer):
    model = make_model(family)
    embedder = KVEmbedder(model, tokenizer, layers=[1, 3], bias=1.0, **PAPER)
    encoded, _, out = _batch_hidden(embedder, [TEXTS[1]])
    expected = reference_hidden_states(model, encoded[0].input_ids, [1, 3], 1.0)
    torch.testing.assert_close(out.last_hidden_state[0], expected, atol=1e-5, rtol=1e-5)


def test_eager_and_sdpa_agree(tokenizer):
    # The same re-routing through either base implementation.
    sdpa = KVEmbedder(make_model("llama", "sdpa"), tokenizer, layers=[1, 2], **PAPER)
    eager = KVEmbedder(make_model("llama", "eager"), tokenizer, layers=[1, 2], **PAPER)
    torch.testing.assert_close(
        torch.from_numpy(sdpa.encode(TEXTS)), torch.from_numpy(eager.encode(TEXTS)), atol=1e-5, rtol=1e-5
    )


def test_no_layers_is_bit_for_bit_plain(family, tokenizer):
    model = make_model(family)
    plain_model = copy.deepcopy(model)
    # Install re-routing on the shared model first: with no plan active it must be invisible.
    KVEmbedder(model, tokenizer, layers=[1], **PAPER)
    embedder = KVEmbedder(model, tokenizer, layers=None, **PAPER)
    _, batch, out = _batch_hidden(embedder, TEXTS, output_hidden_states=True)
    with torch.no_grad():
        plain = plain_model.get_decoder()(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            output_hidden_states=True,
        )
    assert torch.equal(out.last_hidden_state, plain.last_hidden_state)


@pytest.mark.parametrize("layer", [1, 2])
def test_only_selected_layer_and_later_change(family, tokenizer, layer):
    model = make_model(family)
    plain = KVEmbedder(copy.deepcopy(model), tokenizer, layers=None, **PAPER)
    routed = KVEmbedder(model, tokenizer, layers=[layer], **PAPER)
    _, batch, before = _batch_hidden(plain, TEXTS, output_hidden_states=True)
    _, _, after = _batch_hidden(routed, TEXTS, output_hidden_states=True)
    mask = batch.attention_mask.bool()
    # hidden_states[i] is the input of layer i; the last entry is the normed final output.
    for i in range(layer + 1):
        assert torch.equal(before.hidden_states[i][mask], after.hidden_states[i][mask]), f"input of layer {i} changed"
    for i in range(layer + 1, len(before.hidden_states)):
        assert not torch.allclose(before.hidden_states[i][mask], after.hidden_states[i][mask]), f"layer {i} unchanged"


def test_batch_composition_does_not_change_embeddings(family, tokenizer):
    embedder = KVEmbedder(make_model(family), tokenizer, layers=[1, 2], **PAPER)
    batched = embedder.encode(TEXTS, batch_size=len(TEXTS))
    for i, text in enumerate(TEXTS):
        alone = embedder.encode(text)
        cosine = float(alone @ batched[i])
        assert cosine >= 0.99999, (text, cosine)


def test_unsupported_architecture_is_named(tokenizer):
    from transformers import MambaConfig, MambaModel

    model = MambaModel(MambaConfig(vocab_size=320, hidden_size=32, num_hidden_layers=2, state_size=4))
    with pytest.raises(UnsupportedModelError, match="MambaModel"):
        KVEmbedder(model, tokenizer, layers=[0], **PAPER)


def test_layer_bypassing_the_interface_is_an_error(tokenizer):
    model = make_model("llama")
    attention = model.model.layers[1].self_attn
    original = attention.forward

    def bypass(*args, **kwargs):
        implementation = model.config._attn_implementation
        model.config._attn_implementation = "sdpa"
        try:
            return original(*args, **kwargs)
        finally:
            model.config._attn_implementation = implementation

    attention.forward = bypass
    embedder = KVEmbedder(model, tokenizer, layers=[1, 2], **PAPER)
    with pytest.raises(UnsupportedModelError, match=r"LlamaForCausalLM: layers \[1\]"):
        embedder.encode("a text")


def test_flash_base_is_refused_with_a_clear_error(tokenizer):
    model = make_model("llama")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(UnsupportedModelError, match="attn_implementation='sdpa'"):
        KVEmbedder(model, tokenizer, layers=[1], **PAPER)


def test_families_cover_the_required_set():
    assert {"llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3"} <= set(FAMILIES)


def _matches_reference_through(
    table: KernelTable, family: str, tokenizer, texts: list[str], expected_kernel: str
) -> None:
    """Layers 0 and 2 re-routed with ``table``: each ran ``expected_kernel``, and every row is the reference's."""
    model = make_model(family)
    embedder = KVEmbedder(model, tokenizer, layers=[0, 2], bias=1.5, **PAPER)
    with kernels.use_kernels(table), rerouting.observe_plans() as plans:
        encoded, batch, out = _batch_hidden(embedder, texts)
    assert [plan.kernels for plan in plans] == [{0: expected_kernel, 2: expected_kernel}]
    width = batch.input_ids.shape[1]
    for row, e in enumerate(encoded):
        expected = reference_hidden_states(model, e.input_ids, [0, 2], 1.5)
        torch.testing.assert_close(out.last_hidden_state[row, width - len(e) :], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", ["merge", "concat"])
def test_both_kernel_paths_match_reference(family, tokenizer, path):
    # The CPU log-sum-exp merge and the concatenation used elsewhere (eager attention) are both exact.
    table = kernels.TORCH_KERNELS if path == "merge" else kernels.TORCH_KERNELS.unfused()
    if path == "merge" and make_model(family).config._attn_implementation != "sdpa":
        pytest.skip(f"{family} runs eager attention here (concatenation only)")
    _matches_reference_through(table, family, tokenizer, TEXTS, "cpu_flash" if path == "merge" else "concat")


def test_use_kernels_swaps_one_table_and_restores_it(tokenizer):
    embedder = KVEmbedder(make_model("llama"), tokenizer, layers=[1], **PAPER)
    unfused = kernels.active_kernels().unfused()
    with pytest.raises(RuntimeError), kernels.use_kernels(unfused):
        assert kernels.active_kernels() is unfused
        with rerouting.observe_plans() as plans:
            embedder.encode(TEXTS[0])
        assert plans[0].kernel_table is unfused and plans[0].kernels == {1: "concat"}
        raise RuntimeError
    assert kernels.active_kernels() is kernels.TORCH_KERNELS


@pytest.mark.parametrize("texts", [TEXTS[1:2], [TEXTS[0], TEXTS[0] + " again"]], ids=["unpadded", "padded"])
def test_rerouted_layers_run_the_fused_kernel(tokenizer, texts):
    # Every layer, re-routed or not, runs SDPA's fused CPU kernel once; no eager attention, which
    # would show as a softmax over materialised scores.
    from torch.profiler import profile

    embedder = KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], **PAPER)
    with profile() as prof:
        embedder.encode(texts)
    names = [event.name for event in prof.events()]
    assert names.count("aten::_scaled_dot_product_flash_attention_for_cpu") == embedder.num_layers
    assert not [n for n in names if n in ("aten::softmax", "aten::_softmax", "aten::_safe_softmax")]


# --- CUDA kernels (log-sum-exp merge through the flash and memory-efficient kernels) -------------


def _math_attention(query, key, value, bias, causal, scale):
    """Plain attention in float64 for the emulated kernels: ``(out, lse)``."""
    scores = (query.double() @ key.double().transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.double()
    if causal:
        length = scores.shape[-1]
        scores = scores.masked_fill(~torch.ones(length, length, dtype=torch.bool).tril(), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return (torch.softmax(scores, dim=-1) @ value.double()).to(query.dtype), lse.float()


def _emulated_flash(query, key, value, dropout, causal, debug, scale=None):
    # Native grouped heads (query head h reads key/value head h // groups), as flash-attention does.
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out, lse = _math_attention(query, key, value, None, causal, scale)
    # The real kernel returns (batch, heads, length, dim) laid out as (batch, length, heads, dim).
    return (out.transpose(1, 2).contiguous().transpose(1, 2), lse, None, None, 0, 0, None, None, None)


def _emulated_efficient(query, key, value, bias, compute_lse, dropout, causal, scale=None):
    assert compute_lse and key.shape[1] == query.shape[1], "the memory-efficient kernel wants repeated heads"
    if bias is not None:
        assert bias.shape == (query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        assert bias.stride(-2) % kernels.BIAS_ALIGNMENT == 0, "unaligned bias rows"
    out, lse = _math_attention(query, key, value, bias, causal, scale)
    # Its log-sum-exp is padded to the kernel's block size (32): garbage past the real length.
    padded = torch.full((*lse.shape[:-1], -(-lse.shape[-1] // 32) * 32), float("nan"))
    padded[..., : lse.shape[-1]] = lse
    return out.transpose(1, 2).contiguous().transpose(1, 2), padded, None, None


def _emulated_cudnn(query, key, value, bias, compute_lse, dropout, causal, debug, scale=None):
    assert compute_lse and key.shape[1] == query.shape[1]
    out, lse = _math_attention(query, key, value, bias, causal, scale)
    return (out.transpose(1, 2).contiguous().transpose(1, 2), lse[..., None], None, None, 0, 0, None, None, None)


def _choose_flash_or_efficient(query, key, value, mask, causal):
    return "flash" if mask is None else "efficient"


def _refusing_cudnn(*args, **kwargs):
    raise RuntimeError("cuDNN refused the graph")


def _emulated_cuda(choice, cudnn) -> KernelTable:
    """The CUDA kernel table on the CPU: every tensor on "cuda", torch's checks passing, the kernels
    emulated in float64, flash alone taking grouped heads (as flash-attention does)."""
    return KernelTable(
        device=lambda tensor: "cuda",
        cpu_flash=None,
        flash=_emulated_flash,
        efficient=_emulated_efficient,
        cudnn=cudnn,
        sdpa_choice=choice,
        sdpa_allows=lambda *args: True,
        takes_grouped_heads=lambda kernel, device: kernel == "flash",
    )


@pytest.mark.parametrize(
    "choice,cudnn,ran",
    [
        # ran: the kernel without a mask, and with one (flash takes none).
        (_choose_flash_or_efficient, _emulated_cudnn, ("flash", "efficient")),
        (lambda *args: "cudnn", _emulated_cudnn, ("cudnn", "cudnn")),
        (lambda *args: "cudnn", _refusing_cudnn, ("efficient", "efficient")),  # the fallback
        (lambda *args: "", _emulated_cudnn, ("efficient", "efficient")),  # SDPA's math path: the fallback
    ],
    ids=["flash-efficient", "cudnn", "cudnn-refuses", "math"],
)
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_cuda_kernel_glue_matches_reference(family, tokenizer, padded, choice, cudnn, ran):
    # The CUDA branch (kernel choice, grouped heads, bias alignment, log-sum-exp shapes, output
    # layout) run on the CPU with the kernels emulated in float64; the real kernels are checked
    # against the same reference by the CUDA tests below.
    if make_model(family).config._attn_implementation != "sdpa":
        pytest.skip(f"{family} runs eager attention here (concatenation only)")
    texts = TEXTS if padded else TEXTS[1:2]
    masked = padded or family in ("mistral", "gemma3")  # sliding-window layers get a mask regardless
    _matches_reference_through(_emulated_cuda(choice, cudnn), family, tokenizer, texts, ran[masked])


def test_aligned_bias_keeps_values_and_aligns_rows():
    mask = torch.randn(2, 1, 13, 13)
    bias = kernels.aligned_bias(mask, heads=4, q_len=13, kv_len=13)
    assert bias.shape == (2, 4, 13, 13) and bias.stride(-2) % kernels.BIAS_ALIGNMENT == 0
    torch.testing.assert_close(bias, mask.expand(2, 4, 13, 13), rtol=0, atol=0)
    aligned = torch.randn(1, 1, 16, 16)
    assert kernels.aligned_bias(aligned, 2, 16, 16).data_ptr() == aligned.data_ptr()  # no copy needed


def _plan_kernels(embedder: KVEmbedder, texts: list[str]) -> dict[int, str]:
    with rerouting.observe_plans() as plans:
        embedder.encode(texts)
    return {layer: kernel for plan in plans for layer, kernel in plan.kernels.items()}


def test_plan_records_the_cpu_kernel(tokenizer):
    embedder = KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], **PAPER)
    assert _plan_kernels(embedder, TEXTS) == {1: "cpu_flash", 2: "cpu_flash"}


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("texts", [TEXTS[1:2], TEXTS], ids=["unpadded", "padded"])
def test_cuda_float32_matches_reference(family, tokenizer, texts):
    model = make_model(family)
    embedder = KVEmbedder(copy.deepcopy(model).to("cuda"), tokenizer, layers=[0, 2], bias=1.5, **PAPER)
    encoded, batch, out = _batch_hidden(embedder, texts)
    width = batch.input_ids.shape[1]
    for row, e in enumerate(encoded):
        expected = reference_hidden_states(model, e.input_ids, [0, 2], 1.5)
        got = out.last_hidden_state[row, width - len(e) :].cpu()
        # Float32 kernels sum in another order than the CPU: a relative error, not bit equality.
        assert ((got - expected).norm() / expected.norm()).item() < 5e-4
    if model.config._attn_implementation == "sdpa":
        assert set(_plan_kernels(embedder, texts).values()) == {"efficient"}


@needs_cuda
@pytest.mark.parametrize("texts", [TEXTS[1:2], TEXTS], ids=["unpadded", "padded"])
def test_cuda_bfloat16_merge_matches_concatenation(family, tokenizer, texts):
    # The fused merge against the concatenation path, both in bfloat16 on the GPU, both against the
    # float32 reference: the merge must be no further from it than concatenation is.
    model = make_model(family)
    fused = model.config._attn_implementation == "sdpa"
    gpu = copy.deepcopy(model).to("cuda", torch.bfloat16)
    embedder = KVEmbedder(gpu, tokenizer, layers=[0, 2], bias=1.5, **PAPER)
    ran = _plan_kernels(embedder, texts)
    merged = embedder.encode(texts)
    with kernels.use_kernels(kernels.TORCH_KERNELS.unfused()):
        concatenated = embedder.encode(texts)
    reference = KVEmbedder(model, tokenizer, layers=[0, 2], bias=1.5, **PAPER).encode(texts)
    merge_cosine = (merged * reference).sum(1).min()
    concat_cosine = (concatenated * reference).sum(1).min()
    assert merge_cosine > 0.99 and merge_cosine >= concat_cosine - 2e-3, (merge_cosine, concat_cosine)
    # SDPA's own pick for the plain layers (cuDNN or flash on recent GPUs), every re-routed layer alike.
    assert len(set(ran.values())) == 1 and set(ran.values()) <= (
        {"flash", "efficient", "cudnn"} if fused else {"concat"}
    ), ran
    print(f"{family} bfloat16 {len(texts)} texts: {ran}")
