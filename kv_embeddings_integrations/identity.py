"""What decides an embedder's vectors, as a small JSON record to keep beside stored vectors.

A vector store filled by one configuration and queried with another (another model, prompt,
set of layers, post-processing...) returns neighbours that look plausible and are wrong. Storing
this record with the vectors, and comparing it with the querying embedder's, turns that silent
failure into an error that names what changed (:func:`check_identity`).

Only what changes the vectors is compared. The weights are told apart by a fingerprint that does
not depend on the dtype they were loaded in (bfloat16 on a GPU, float32 on a CPU: the same
checkpoint, vectors equal to rounding); the dtype, the model's name or path, ``max_length`` and
the package version are recorded for people and not compared.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from .layer_selection import builtin_calibration_texts, joined_texts_digest
from .version import __version__

# Bump when the record's meaning changes; a record of another version is refused, not guessed at.
IDENTITY_FORMAT = 1
# Recorded, not compared: they do not change a vector (beyond rounding), or only for texts cut short.
# The key a record is stored under in a store's metadata (Chroma collection, Arrow field).
METADATA_KEY = "kv_embed_identity"
INFORMATIONAL = frozenset({"format", "model", "dtype", "max_length", "long_text", "package_version", "fingerprint"})


class EmbedderMismatchError(ValueError):
    """Vectors stored by one embedder configuration are being compared with another's."""


class IdentifiedEmbedder(Protocol):
    """What :func:`embedder_identity` reads (a :class:`~kv_embeddings_integrations.KVEmbedder` has it)."""

    model: torch.nn.Module
    name: str
    layers: list[int]
    output_layer: int
    max_length: int
    dimension: int


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over every tensor's name and shape and up to 128 sampled values, rounded to bfloat16.

    The rounding makes a checkpoint loaded in float32 and the same one in bfloat16 agree, while
    other weights (another checkpoint, a fine-tune) differ. Sampling keeps it fast on 8B models.
    """
    digest = hashlib.sha256()
    for name, param in model.state_dict().items():
        digest.update(f"{name}:{tuple(param.shape)}".encode())
        if param.device.type == "meta" or param.numel() == 0 or not param.is_floating_point():
            continue
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // 64)
        sample = torch.cat([flat[:64], flat[::step][:64]]).to("cpu", torch.bfloat16).to(torch.float32)
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def embedder_identity(embedder: Any, *, normalize: bool = True) -> dict[str, Any]:
    """The record of what decides ``embedder``'s vectors (a :class:`KVEmbedder`), JSON-serialisable.

    Args:
        embedder: the core embedder.
        normalize: whether the vectors stored are L2-normalised (the adapters' ``normalize``).
    """
    config = embedder.config
    fit_texts = None
    if config.postprocess != "none":
        texts = config.postprocess_texts if config.postprocess_texts is not None else builtin_calibration_texts()
        fit_texts = joined_texts_digest(list(texts))
    identity: dict[str, Any] = {
        "format": IDENTITY_FORMAT,
        "model": str(embedder.name),
        "model_class": type(embedder.model).__name__,
        "weights": weights_fingerprint(embedder.model),
        "method": config.method,
        "prompt_family": config.prompt_family or embedder.spec.family,
        "templates": {kind: list(embedder.templates(kind)) for kind in ("document", "query")},
        "layers": list(embedder.layers),
        "bias": float(config.bias) if embedder.layers else None,
        "token_prepending": bool(embedder.token_prepending),
        "pooling": embedder.pooling,
        "mean_scope": embedder.mean_scope,
        "output_layer": int(embedder.output_layer),
        "postprocess": config.postprocess,
        "postprocess_fit_texts": fit_texts,
        "dimension": int(embedder.dimension),
        "normalize": bool(normalize),
        "dtype": str(embedder.dtype).removeprefix("torch."),
        "max_length": int(embedder.max_length),
        "long_text": config.long_text,
        "package_version": __version__,
    }
    identity["fingerprint"] = identity_fingerprint(identity)
    return identity


def identity_fingerprint(identity: Mapping[str, Any]) -> str:
    """A short hash of the compared fields: equal fingerprints, interchangeable vectors."""
    compared = {k: v for k, v in identity.items() if k not in INFORMATIONAL}
    return hashlib.sha256(json.dumps(compared, sort_keys=True).encode()).hexdigest()[:16]


def field_metadata(identity: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Arrow field metadata holding ``identity``, for the embedding column (Parquet and LanceDB keep it)."""
    return {METADATA_KEY.encode(): json.dumps(dict(identity), sort_keys=True).encode("utf-8")}


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def check_identity(stored: Mapping[str, Any], current: Mapping[str, Any], *, where: str = "the store") -> None:
    """Raise :class:`EmbedderMismatchError` unless ``current`` makes the same vectors as ``stored``.

    Args:
        stored: the record kept with the vectors.
        current: :func:`embedder_identity` of the embedder about to query them.
        where: how to name the store in the message.
    """
    if not isinstance(stored, Mapping) or stored.get("format") != IDENTITY_FORMAT:
        found = stored.get("format") if isinstance(stored, Mapping) else type(stored).__name__
        raise EmbedderMismatchError(
            f"{where} has an embedder record of format {found!r}; this version of kv_embeddings_integrations "
            f"reads format {IDENTITY_FORMAT}"
        )
    keys = sorted((set(stored) | set(current)) - INFORMATIONAL)
    changed = [k for k in keys if stored.get(k) != current.get(k)]
    if changed:
        lines = "; ".join(f"{k}: stored {_show(stored.get(k))}, now {_show(current.get(k))}" for k in changed)
        raise EmbedderMismatchError(
            f"{where} was embedded by model {stored.get('model')!r} with a different configuration than the "
            f"embedder querying it ({lines}). Its neighbours would be wrong: query it with the configuration "
            "that built it, or embed the documents again."
        )
