"""Slow, explicit references of KV re-routing and Token Prepending, written for the tests,
independent of the package.

It runs one text at a time (no padding), with transformers' eager attention everywhere except in
the selected layers, whose attention module is replaced by a hand-written loop: project, norm and
rotate as the model does, then, for each head and each query position, softmax over
[final token's key with bias b] + [the causal (and sliding-window) keys], soft-capped as the model does.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys

import torch


def _reference_attention(module, bias: float):
    modeling = sys.modules[type(module).__module__]

    def forward(hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        batch, n, _ = hidden_states.shape
        assert batch == 1, "the reference runs one unpadded text at a time"
        head_dim = module.head_dim
        q = module.q_proj(hidden_states).view(1, n, -1, head_dim)
        k = module.k_proj(hidden_states).view(1, n, -1, head_dim)
        v = module.v_proj(hidden_states).view(1, n, -1, head_dim).transpose(1, 2)
        if hasattr(module, "q_norm"):
            q, k = module.q_norm(q), module.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        cos, sin = position_embeddings
        q, k = modeling.apply_rotary_pos_emb(q, k, cos, sin)
        window = getattr(module, "sliding_window", None)
        if window is None and type(module).__name__.startswith("Mistral"):
            window = module.config.sliding_window
        softcap = getattr(module, "attn_logit_softcapping", None)
        heads, kv_heads = q.shape[1], k.shape[1]
        out = torch.zeros(1, heads, n, head_dim, dtype=torch.float64)

        def logit(qi, kj):
            s = float(qi.double() @ kj.double()) * module.scaling
            return math.tanh(s / softcap) * softcap if softcap else s

        for h in range(heads):
            kv = h // (heads // kv_heads)
            for i in range(n):
                visible = [j for j in range(i + 1) if window is None or j > i - window]
                logits = [logit(q[0, h, i], k[0, kv, n - 1]) + bias] + [logit(q[0, h, i], k[0, kv, j]) for j in visible]
                weights = torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=0)
                values = torch.stack([v[0, kv, n - 1]] + [v[0, kv, j] for j in visible]).double()
                out[0, h, i] = weights @ values
        out = out.to(hidden_states.dtype).transpose(1, 2).reshape(1, n, -1)
        return module.o_proj(out), None

    return forward


def reference_hidden_states(
    model, input_ids: list[int], layers: list[int], bias: float, output_layer: int | None = None
) -> torch.Tensor:
    """Hidden states ``(n, dim)`` of one unpadded token sequence, re-routed by hand: the final
    layer's (after the final norm), or with ``output_layer`` that layer's output as it is."""
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    decoder = ref.get_decoder()
    with contextlib.ExitStack() as stack:
        for layer in layers:
            attention = decoder.layers[layer].self_attn
            stack.enter_context(_patched(attention, "forward", _reference_attention(attention, bias)))
        with torch.no_grad():
            out = decoder(input_ids=torch.tensor([input_ids]), use_cache=False, output_hidden_states=True)
    if output_layer is None:
        return out.last_hidden_state[0]
    return out.hidden_states[output_layer + 1][0]


def token_prepending_hidden_states(
    model, input_ids: list[int], placeholder: int, start: int, stop: int, output_layer: int
) -> torch.Tensor:
    """Token Prepending by hand, for a Llama-layout decoder and one unpadded sequence: run the
    decoder layers one by one (eager attention, an explicit causal mask) and, entering layers
    ``start .. stop - 1``, overwrite position ``placeholder`` with the last position's state, as
    the official code's loop does. Returns layer ``output_layer``'s output ``(n, dim)``, no norm."""
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    decoder = ref.get_decoder()
    n = len(input_ids)
    ids = torch.tensor([input_ids])
    positions = torch.arange(n)[None]
    causal = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)[None, None]
    with torch.no_grad():
        hidden = decoder.embed_tokens(ids)
        rotary = decoder.rotary_emb(hidden, positions)
        for index, layer in enumerate(decoder.layers[: output_layer + 1]):
            if start <= index < stop:
                hidden = hidden.clone()
                hidden[0, placeholder] = hidden[0, -1]
            hidden = layer(hidden, attention_mask=causal, position_ids=positions, position_embeddings=rotary)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden[0]


@contextlib.contextmanager
def _patched(obj, name, value):
    original = obj.__dict__.get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if original is None:
            delattr(obj, name)
        else:
            setattr(obj, name, original)
