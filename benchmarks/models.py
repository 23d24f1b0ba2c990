"""The backbones the benchmarks run: a bundled pretrained model, or random weights in a real shape."""

from __future__ import annotations

import torch
from transformers import AutoModel, AutoTokenizer, LlamaConfig, Qwen3Config

from kv_embeddings_integrations.core.model.bundled import bundled_model_dir

# Published configurations (config.json of the hub repositories), for random-weight models of
# the real size and shape when the weights cannot be downloaded.
SHAPES = {
    "qwen3-4b": lambda: Qwen3Config(
        vocab_size=151936,
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "llama-3.1-8b": lambda: LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    ),
}
# Layers re-routed in a random-weight model (layer selection needs trained weights): the two
# middle layers, as the selection typically picks for these depths.
RANDOM_LAYERS = {"qwen3-4b": [17, 18], "llama-3.1-8b": [15, 16]}


def load_backbone(
    name: str, dtype: torch.dtype, device: str, attn_implementation: str = "sdpa", tokenizer: str | None = None
):
    """``(model, tokenizer, layers)``: ``random:<shape>`` builds random weights (with the bundled
    SmolLM2 tokenizer, whose ids all fall inside these vocabularies, or the one in the directory
    ``tokenizer``); else a bundled alias or path."""
    if name.startswith("random:"):
        shape = name.removeprefix("random:")
        config = SHAPES[shape]()
        config._attn_implementation = attn_implementation
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModel.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer or bundled_model_dir("smollm2-135m"))
        return model.eval(), tokenizer, RANDOM_LAYERS[shape]
    from kv_embeddings_integrations.core.model.bundled import BUNDLED_MODELS

    path = bundled_model_dir(name) if name in BUNDLED_MODELS else name
    model = AutoModel.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation).to(device)
    return model.eval(), AutoTokenizer.from_pretrained(path), "auto"


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters that take part in matrix products per token (the embedding table is a lookup)."""
    embedding = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not embedding)
