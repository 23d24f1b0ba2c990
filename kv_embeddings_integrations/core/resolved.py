"""The method as it runs: every choice that decides a vector, resolved once from the options.

[`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig] holds what the user asked,
with ``None`` meaning "the method's own" (or the family's, or the model's);
[`ResolvedMethod`][kv_embeddings_integrations.core.resolved.ResolvedMethod] is what that comes to
for one model. The embedder keeps one, and everything that reads the method (its properties,
``repr``, the identity record, the cache keys) reads this value, so no two of them can resolve a
default differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .config import EmbedderConfig
from .method import token_prepending
from .prompts import FAMILIES, INPUT_TYPES, METHODS, PROMPT_TYPES, check_prompt_name, prompt_names

# Longest input when neither the options nor the model's config bound it.
DEFAULT_MAX_LENGTH = 4096


@dataclass(frozen=True)
class ResolvedMethod:
    """What decides a vector, resolved against one model's depth and context length.

    Attributes:
        method: the method that runs (the config's ``method``, else the task's).
        family: the prompt family's name (the config's ``prompt_family``, else the method's).
        document_templates: the document prompt templates (the user's override, else the family's;
            MetaEOL has several, whose vectors are averaged).
        query_templates: the query ones; a symmetric task's are the document ones.
        named_templates: the config's other named prompts, as ``(name, template)`` pairs.
        reroute: whether re-routing is on.
        layers: the layers asked to be re-routed: ``"auto"`` (chosen by intrinsic dimension when the
            embedder is built), or an explicit tuple, checked against the model (empty: none, and
            always empty when not re-routing).
        bias: the attention bias on the re-routed prefix.
        selection: the config's layer-selection options, as ``(name, value)`` pairs.
        token_prepending: whether Token Prepending is on.
        prepend_layers: ``(start, stop)``, the layers whose input placeholder Token Prepending
            rewrites, or ``None`` when it is off.
        pooling: ``"mean_last"``, ``"mean"`` or ``"last"``.
        mean_scope: ``"all"`` or ``"text"``.
        output_layer: the pooled decoder layer, 0-based.
        max_length: longest input in tokens, prompt included.
        long_text: ``"truncate"`` or ``"chunk_mean"``.
        postprocess: ``"none"``, ``"center"``, ``"standardize"``, ``"pca"`` or ``"whiten"``.
        dimensions: output size for ``"pca"`` / ``"whiten"`` (``None``: all).
        symmetric: whether queries are embedded as documents (a symmetric task).
        lexical: the lexical channel appended to the dense vector: ``"none"``, ``"sparse"`` or ``"bm25"``.
        lexical_dim: its width (columns of the count-sketch; 0 when ``lexical`` is ``"none"``).
        lexical_weight: the lexical cosine's share of a query's score.
    """

    method: str
    family: str
    document_templates: tuple[str, ...]
    query_templates: tuple[str, ...]
    named_templates: tuple[tuple[str, str], ...]
    reroute: bool
    layers: Literal["auto"] | tuple[int, ...]
    bias: float
    selection: tuple[tuple[str, Any], ...]
    token_prepending: bool
    prepend_layers: tuple[int, int] | None
    pooling: str
    mean_scope: str
    output_layer: int
    max_length: int
    long_text: str
    postprocess: str
    dimensions: int | None
    symmetric: bool = False
    lexical: str = "none"
    lexical_dim: int = 0
    lexical_weight: float = 0.0

    @classmethod
    def resolve(cls, config: EmbedderConfig, num_layers: int, context: int | None = None) -> ResolvedMethod:
        """Resolve ``config`` for a model of ``num_layers`` decoder layers and ``context`` positions.

        Args:
            config: the embedder's options.
            num_layers: the decoder's depth.
            context: the model's context length in tokens (``None``: unknown).

        Returns:
            the resolved method; a ``ValueError`` names an option the model cannot take
            (``max_length`` past its context, ``output_layer`` or ``layers`` out of range, a layer
            re-routed after the pooled one).
        """
        if config.max_length is not None and context is not None and config.max_length > context:
            raise ValueError(f"max_length={config.max_length} exceeds the model's context length of {context} tokens")
        spec = METHODS[config.resolved_method]
        family_name = config.prompt_family or spec.family
        family = FAMILIES[family_name]
        reroute = spec.reroute if config.reroute is None else config.reroute
        prepending = spec.token_prepending if config.token_prepending is None else config.token_prepending
        # A method's own pooling holds for its family; another family brings its own.
        own_pooling = spec.pooling if config.prompt_family in (None, spec.family) else None
        templates: dict[str, tuple[str, ...]] = {}
        for prompt_type in PROMPT_TYPES:
            source = "document" if config.symmetric else prompt_type  # a symmetric task's sides are alike
            override = (config.prompts or {}).get(source)
            templates[prompt_type] = (override,) if override else family.templates[source]
        output_layer = _output_layer(config.output_layer, family.output_layer, prepending, num_layers)
        lexical = config.resolved_lexical
        if prepending and config.batching == "packed":
            # Token Prepending reads each row's last position, which a packed row shares.
            raise ValueError("batching='packed' does not run Token Prepending; use batching='padded'")
        return cls(
            method=config.resolved_method,
            family=family_name,
            document_templates=templates["document"],
            query_templates=templates["query"],
            named_templates=tuple((k, v) for k, v in (config.prompts or {}).items() if k not in PROMPT_TYPES),
            reroute=reroute,
            layers=_layers(config.layers, num_layers, output_layer) if reroute else (),
            bias=config.bias,
            selection=tuple((config.selection or {}).items()),
            token_prepending=prepending,
            prepend_layers=token_prepending.scaled_layers(num_layers) if prepending else None,
            pooling=config.pooling or own_pooling or family.pooling,
            mean_scope=config.mean_scope or family.mean_scope,
            output_layer=output_layer,
            max_length=config.max_length or min(context or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH),
            long_text=config.long_text,
            postprocess=config.postprocess,
            dimensions=config.dimensions,
            symmetric=config.symmetric,
            lexical=lexical,
            lexical_dim=config.lexical_dim if lexical != "none" else 0,
            lexical_weight=config.lexical_weight if lexical != "none" else 0.0,
        )

    def templates(self, prompt_name: str = "document") -> tuple[str, ...]:
        """The templates a prompt name stands for: a name of the config's ``prompts``, else
        ``"document"`` / ``"query"`` or another provider's name for one of them (``INPUT_TYPES``:
        Cohere's ``search_query``, NVIDIA's ``passage``, Jina's ``retrieval.query``...). Another
        name is a ``ValueError`` that lists the known ones."""
        named = dict(self.named_templates)
        check_prompt_name(prompt_name, named)
        if prompt_name in named:
            return (named[prompt_name],)
        return self.document_templates if INPUT_TYPES[prompt_name] == "document" else self.query_templates

    def side(self, prompt_name: str = "document") -> str:
        """Which side of retrieval a prompt name embeds: ``"query"`` for the query prompt of an
        asymmetric task (under any provider's name), else ``"document"``."""
        named = dict(self.named_templates)
        check_prompt_name(prompt_name, named)
        if prompt_name in named or INPUT_TYPES[prompt_name] == "document":
            return "document"
        return "document" if self.symmetric else "query"

    @property
    def prompt_names(self) -> tuple[str, ...]:
        """Every name
        [`templates`][kv_embeddings_integrations.core.resolved.ResolvedMethod.templates] takes: the
        config's own prompts, then the providers' names."""
        return prompt_names(dict(self.named_templates))

    @property
    def selection_rule(self) -> dict[str, Any]:
        """The options automatic layer selection runs with: the config's ``selection``, bounded by
        default at the pooled layer (layers after it cannot change its output)."""
        return {"last_layer": self.output_layer, **dict(self.selection)}


def _output_layer(asked: int | None, family_layer: int, prepending: bool, num_layers: int) -> int:
    layer = asked
    if layer is None:
        if prepending:
            return token_prepending.scaled_output_layer(num_layers)
        layer = family_layer
    if not -num_layers <= layer < num_layers:
        raise ValueError(
            f"output_layer={layer} out of range: the model has {num_layers} layers ({-num_layers}..{num_layers - 1})"
        )
    return layer % num_layers


def _layers(
    asked: Literal["auto"] | list[int] | None, num_layers: int, output_layer: int
) -> Literal["auto"] | tuple[int, ...]:
    if isinstance(asked, str):  # "auto": chosen once the embedder is built
        return "auto"
    layers = resolve_layers(asked, num_layers)
    late = [i for i in layers if i > output_layer]
    if late:
        raise ValueError(
            f"layers {late} come after output_layer {output_layer}: re-routing them cannot change the pooled "
            "hidden states"
        )
    return tuple(layers)


def resolve_layers(layers: list[int] | None, num_layers: int) -> list[int]:
    """Validate an explicit ``layers`` list (``None``: no re-routing, an empty list)."""
    if layers is None:
        return []
    bad = [i for i in layers if i >= num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {num_layers} layers (0..{num_layers - 1})")
    return list(layers)
