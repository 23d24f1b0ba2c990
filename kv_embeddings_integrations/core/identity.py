"""What decides an embedder's vectors: the one definition, as a record and as cache keys.

Three views of it live here, built from the same pieces
([`model_identity`][kv_embeddings_integrations.core.identity.model_identity], the resolved prompts,
``max_length``, a digest of the texts):
[`embedder_identity`][kv_embeddings_integrations.core.identity.embedder_identity], the record kept
beside stored vectors;
[`layer_selection_key`][kv_embeddings_integrations.core.identity.layer_selection_key] and
[`postprocessing_key`][kv_embeddings_integrations.core.identity.postprocessing_key], the keys the
cached (and shipped) layer choices and post-processing fits are found by.

A vector store filled by one configuration and queried with another (another model, prompt,
set of layers, post-processing...) returns neighbours that look plausible and are wrong. Storing
this record with the vectors, and comparing it with the querying embedder's, turns that silent
failure into an error that names what changed
([`check_identity`][kv_embeddings_integrations.core.identity.check_identity]).

Only what changes the vectors is compared: the resolved prompts, layers, pooling and so on, not
the preset names that led to them. The weights are told apart by a fingerprint of the decoder
with sampled values rounded to bfloat16, so the same checkpoint loaded in float32 or in bfloat16
matches (vectors equal to rounding) while another checkpoint does not; a float16 load rounds
differently and matches only float16 loads. The dtype, the model's name or path, ``max_length``
and the package version are recorded for people and not compared.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..version import __version__
from .cache import model_fingerprint, texts_digest
from .calibration import builtin_calibration_texts
from .config import DEFAULT_SKIP_FRACTION, LEXICAL_OPTIONS, EmbedderConfig
from .model.loading import dtype_name
from .outputs.quantization import QUANTIZED, SCALAR, check_precision

if TYPE_CHECKING:
    from .outputs.lexical import LexicalChannel
    from .outputs.quantization import QuantizationRanges
    from .resolved import ResolvedMethod

# Bump when the record's meaning changes, or a compared field is added: a record of another
# format is refused with a clear message rather than compared field by field.
IDENTITY_FORMAT = 1
# Bump when the layer-selection estimator (TwoNN) or the points it measures change, so old
# cache entries (and shipped ones) stop matching.
ESTIMATOR_VERSION = 1
# Bump when fitting the post-processing changes, so old cache entries stop matching.
FIT_VERSION = 1
# The key a record is stored under in a store's metadata (Chroma collection, Arrow field).
METADATA_KEY = "kv_embed_identity"
# Recorded, not compared: they do not change a vector (beyond rounding), name a preset whose
# effects are compared field by field, or (max_length, long_text) only matter for texts cut short.
INFORMATIONAL = frozenset(
    {
        "format",
        "model",
        "model_class",
        "method",
        "prompt_family",
        "dtype",
        "max_length",
        "long_text",
        "prompt_type",
        "precision",
        "lexical_weight",
        "package_version",
        "fingerprint",
    }
)
# Compared name by name where both records have the name: adding a named prompt changes no vector
# made before, changing one does. Left out of the fingerprint for the same reason.
PARTIAL = frozenset({"named_templates"})
# Options left out of the post-processing key: batching does not change a vector, the fitting
# texts and the selected layers enter it by themselves, the fit uses the document prompt
# whichever side queries take, and the lexical channel is appended after it.
_NOT_IN_FIT_KEY = (
    "batch_size",
    "batching",
    "max_tokens_per_batch",
    "calibration_texts",
    "selection",
    "postprocess_texts",
    "symmetric",
    *LEXICAL_OPTIONS,
)


class FitSubject(Protocol):
    """What a fit (layer selection, post-processing, int8 ranges) and its cache key read of an
    embedder: its model and resolved method, the layers chosen so far and its lexical channel.

    A [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder] has all of it; so has the
    plain value it fits on before it exists
    ([`Fitting`][kv_embeddings_integrations.core.fitting.subject.Fitting]).
    """

    @property
    def name(self) -> str: ...
    @property
    def model(self) -> torch.nn.Module: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def config(self) -> EmbedderConfig: ...
    @property
    def resolved(self) -> ResolvedMethod: ...
    @property
    def layers(self) -> Sequence[int]: ...
    @property
    def lexical(self) -> LexicalChannel | None: ...


class IdentifiedEmbedder(FitSubject, Protocol):
    """What the identity record reads of an embedder, beyond a fit's subject."""

    @property
    def decoder(self) -> torch.nn.Module: ...
    @property
    def dimension(self) -> int: ...
    @property
    def dtype(self) -> torch.dtype: ...
    @property
    def quantization_ranges(self) -> QuantizationRanges: ...


class EmbedderMismatchError(ValueError):
    """Vectors stored by one embedder configuration are being compared with another's."""


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a module's tensor names, shapes and sampled values rounded to bfloat16."""
    return model_fingerprint(model, round_to=torch.bfloat16)


def model_identity(model: torch.nn.Module) -> dict[str, Any]:
    """Which weights a cache entry was computed with (class, hub revision, fingerprint, dtype).

    Not where they were loaded from: the same checkpoint in another folder (a bundled model in
    another user's cache) is the same model, so its results carry over, shipped ones included.
    """
    return {
        "model_class": type(model).__name__,
        "revision": getattr(model.config, "_commit_hash", None),
        "weights": model_fingerprint(model),
        "dtype": str(next(model.parameters()).dtype),
    }


def postprocess_texts(config: EmbedderConfig) -> list[str]:
    """The texts post-processing is fitted on: the config's ``postprocess_texts``, else the built-in ones."""
    texts = config.postprocess_texts
    return list(texts) if texts is not None else builtin_calibration_texts()


def lexical_texts(config: EmbedderConfig) -> list[str]:
    """The texts the lexical statistics are counted on: the config's ``lexical_texts``, else the built-in ones."""
    texts = config.lexical_texts
    return list(texts) if texts is not None else builtin_calibration_texts()


def _texts(texts: Sequence[str]) -> dict[str, Any]:
    """Which sample a result was computed on, as a key records it."""
    return {"num_texts": len(texts), "texts_sha256": texts_digest(texts)}


def _selection_rule(rule: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    out = {"skip_fraction": rule.get("skip_fraction", DEFAULT_SKIP_FRACTION), "window": rule.get("window")}
    # Only a bound short of the network enters the key: entries made before it existed still match.
    if rule.get("last_layer") is not None and rule["last_layer"] != num_layers - 1:
        out["last_layer"] = rule["last_layer"]
    return out


def layer_selection_key(embedder: FitSubject, texts: Sequence[str], rule: Mapping[str, Any]) -> dict[str, Any]:
    """Everything automatic layer selection depends on: the cache key of its result.

    Shipped results are found by this key's digest: its fields and values must not change without a
    new ``ESTIMATOR_VERSION`` and new shipped files (``scripts/precompute_bundled.py``).

    Args:
        embedder: the embedder whose weights, document prompt and ``max_length`` are measured.
        texts: the calibration texts.
        rule: the selection rule's options (``skip_fraction``, ``window``, ``last_layer``).

    Returns:
        a JSON-serialisable dict.
    """
    resolved = embedder.resolved
    return {
        "estimator_version": ESTIMATOR_VERSION,
        **model_identity(embedder.model),
        # The first document template: the one selection measures.
        "template": resolved.document_templates[0],
        "max_length": resolved.max_length,
        **_texts(texts),
        "rule": _selection_rule(rule, embedder.num_layers),
    }


def postprocessing_key(embedder: FitSubject, texts: Sequence[str]) -> dict[str, Any]:
    """Everything a post-processing fit depends on: the cache key of the fitted transform.

    Shipped fits are found by this key's digest: its fields and values must not change without a new
    ``FIT_VERSION`` and new shipped files (``scripts/precompute_bundled.py``).

    Args:
        embedder: the embedder, its layers chosen, whose vectors are fitted on.
        texts: the fitting texts.

    Returns:
        a JSON-serialisable dict.
    """
    resolved = embedder.resolved
    # The options as given (not resolved): the shipped fits are keyed so.
    options = embedder.config.vector_options()
    for name in _NOT_IN_FIT_KEY:
        options.pop(name, None)
    # The fit embeds with the document prompt: other named prompts do not change it.
    sides = {k: v for k, v in (options.get("prompts") or {}).items() if k in ("document", "query")}
    options["prompts"] = sides or None
    return {
        "version": FIT_VERSION,
        "kind": resolved.postprocess,
        "dimensions": resolved.dimensions,
        **model_identity(embedder.model),
        "config": options,
        # The prompts as written, not only the method's name: a changed template refits.
        "templates": list(resolved.document_templates),
        "layers": list(embedder.layers),
        "max_length": resolved.max_length,
        **_texts(texts),
    }


def embedder_identity(
    embedder: IdentifiedEmbedder, *, normalize: bool = True, precision: str = "float32"
) -> dict[str, Any]:
    """The record of what decides a
    [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder]'s vectors,
    JSON-serialisable.

    Args:
        embedder: the core embedder.
        normalize: whether the vectors stored are L2-normalised (the adapters' ``normalize``).
        precision: the precision the vectors are stored in. A quantized one (int8, uint8, binary,
            ubinary) adds a compared ``quantization`` field (with int8 / uint8, the digest of the
            fitted ranges); float16 is recorded only, as it is float32 to rounding.

    Returns:
        the record, its ``fingerprint`` (a hash of the compared fields) included.
    """
    resolved = embedder.resolved
    precision = check_precision(precision)
    fit_texts = None
    if resolved.postprocess != "none":
        fit_texts = texts_digest(postprocess_texts(embedder.config))
    identity: dict[str, Any] = {
        "format": IDENTITY_FORMAT,
        "model": str(embedder.name),
        "model_class": type(embedder.model).__name__,
        # The decoder, not the wrapper: a *ForCausalLM and its base *Model make the same vectors.
        "weights": weights_fingerprint(embedder.decoder),
        "method": resolved.method,
        "prompt_family": resolved.family,
        "templates": {kind: list(resolved.templates(kind)) for kind in ("document", "query")},
        "layers": list(embedder.layers),
        "bias": float(resolved.bias) if embedder.layers else None,
        "token_prepending": resolved.token_prepending,
        "pooling": resolved.pooling,
        "mean_scope": resolved.mean_scope,
        "output_layer": resolved.output_layer,
        "postprocess": resolved.postprocess,
        "postprocess_fit_texts": fit_texts,
        "dimension": int(embedder.dimension),
        "normalize": bool(normalize),
        "dtype": dtype_name(embedder.dtype),
        "max_length": resolved.max_length,
        "long_text": resolved.long_text,
        "package_version": __version__,
    }
    if embedder.lexical is not None:
        # Absent without a lexical half, so records made before it existed still match. The
        # weight only scales a query's halves: documents stored with another weight still rank right.
        identity["lexical"] = embedder.lexical.record()
        identity["lexical_weight"] = embedder.lexical.weight
    if resolved.named_templates:
        # The config's other prompts: compared only where both records name them (PARTIAL).
        identity["named_templates"] = dict(resolved.named_templates)
    if precision != "float32":
        identity["precision"] = precision
    if precision in QUANTIZED:
        # Absent for float vectors, so records made before precisions existed still match.
        ranges = embedder.quantization_ranges.digest() if precision in SCALAR else None
        identity["quantization"] = {"precision": precision, "ranges_sha256": ranges}
    identity["fingerprint"] = identity_fingerprint(identity)
    return identity


def compared_fields(identity: Mapping[str, Any], *, also: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of ``identity`` that decide a vector (not ``INFORMATIONAL``), plus ``also``.

    A store compares these; one output file of a resumed run (``kv-embed embed --resume``) also
    keeps the dtype and the length limits equal, so its rows are not even rounded differently.
    """
    keep = set(also)
    return {k: v for k, v in identity.items() if (k not in INFORMATIONAL and k not in PARTIAL) or k in keep}


def identity_fingerprint(identity: Mapping[str, Any]) -> str:
    """A short hash of the compared fields: equal fingerprints, interchangeable vectors."""
    return hashlib.sha256(json.dumps(compared_fields(identity), sort_keys=True).encode()).hexdigest()[:16]


def field_metadata(identity: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Arrow field metadata holding ``identity``, for the embedding column (Parquet and LanceDB keep it)."""
    return {METADATA_KEY.encode(): json.dumps(dict(identity), sort_keys=True).encode("utf-8")}


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 100 else text[:97] + "..."


def _difference(key: str, stored: Any, current: Any) -> str:
    if isinstance(stored, dict) and isinstance(current, dict):
        # Templates: name the prompt type that differs and show both in full enough to compare.
        parts = [
            f"{key}[{k!r}]: stored {_show(stored.get(k))}, now {_show(current.get(k))}"
            for k in sorted(set(stored) | set(current))
            if stored.get(k) != current.get(k)
        ]
        return "; ".join(parts)
    return f"{key}: stored {_show(stored)}, now {_show(current)}"


def check_identity(stored: object, current: Mapping[str, Any], *, where: str = "the store") -> None:
    """Raise
    [`EmbedderMismatchError`][kv_embeddings_integrations.core.identity.EmbedderMismatchError] unless
    ``current`` makes the same vectors as ``stored``.

    Args:
        stored: the record kept with the vectors (anything read back; not a record is refused).
        current: [`embedder_identity`][kv_embeddings_integrations.core.identity.embedder_identity] of the embedder
            about to query them.
        where: how to name the store in the message.
    """
    if not isinstance(stored, Mapping) or stored.get("format") != IDENTITY_FORMAT:
        found = stored.get("format") if isinstance(stored, Mapping) else type(stored).__name__
        raise EmbedderMismatchError(
            f"{where} has an embedder record of format {found!r}; this version of kv_embeddings_integrations "
            f"reads format {IDENTITY_FORMAT}"
        )
    keys = sorted((set(stored) | set(current)) - INFORMATIONAL - PARTIAL)
    changed = [k for k in keys if stored.get(k) != current.get(k)]
    differences = [_difference(k, stored.get(k), current.get(k)) for k in changed]
    for key in sorted(PARTIAL):
        ours, theirs = stored.get(key) or {}, current.get(key) or {}
        shared = set(ours) & set(theirs)
        if any(ours[name] != theirs[name] for name in shared):
            changed.append(key)
            differences.append(_difference(key, {n: ours[n] for n in shared}, {n: theirs[n] for n in shared}))
    if not changed:
        return
    lines = "; ".join(differences)
    hint = ""
    if (
        "weights" in changed
        and stored.get("dtype") != current.get("dtype")
        and "float16"
        in (
            stored.get("dtype"),
            current.get("dtype"),
        )
    ):
        hint = (
            f" The store was embedded in {stored.get('dtype')} and the model is now loaded in "
            f"{current.get('dtype')}: float16 rounds the weights differently, load it in the same dtype."
        )
    raise EmbedderMismatchError(
        f"{where} was embedded by model {stored.get('model')!r} with a different configuration than the "
        f"embedder querying it ({lines}). Its neighbours would be wrong: query it with the configuration "
        f"that built it, or embed the documents again.{hint}"
    )
