"""The embedder's options, in one validated object that round-trips to and from a dict.

A pydantic model, so the LangChain and LlamaIndex adapters inherit these fields (and their
validation) instead of declaring them again.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .prompts import check_template

MethodName = Literal[
    "kv", "prompt", "prompteol", "pcot", "ke", "metaeol", "echo", "mean", "last", "tp",
    "kv_prompteol", "kv_pcot", "kv_ke", "kv_metaeol",
]  # fmt: skip
FamilyName = Literal["compress", "prompteol", "pcot", "ke", "metaeol", "echo", "none"]
TaskName = Literal["retrieval", "similarity", "classification"]

# What each task embeds with when no method is named, chosen on the dev data (docs/results.md,
# "Defaults"): the compression prompt retrieves best of the re-routed methods on both bundled
# models; Pretended CoT leads STS and classification.
TASK_METHODS: dict[str, str] = {"retrieval": "kv", "similarity": "kv_pcot", "classification": "kv_pcot"}
# Tasks whose two sides are alike: queries get the document prompt.
SYMMETRIC_TASKS = frozenset({"similarity", "classification"})
# The lexical channel each task appends to the dense vector when ``lexical`` is not given
# (docs/results.md, "One vector for plain stores"): symmetric tasks keep their vectors unchanged.
TASK_LEXICAL: dict[str, str] = {"retrieval": "bm25", "similarity": "none", "classification": "none"}
LexicalName = Literal["none", "sparse", "bm25"]
# The options of the lexical channel: appended after the dense vector is made and post-processed,
# so the dense fits and caches do not depend on them.
LEXICAL_OPTIONS = ("lexical", "lexical_dim", "lexical_weight", "lexical_texts")

SELECTION_OPTIONS = frozenset({"skip_fraction", "window", "last_layer"})
# The fraction of early layers automatic selection never picks, unless ``selection`` says otherwise.
DEFAULT_SKIP_FRACTION = 0.2


def check_positive_int(name: str, value: int | None) -> None:
    """``value`` must be ``None`` or a positive int (not a bool)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class EmbedderConfig(BaseModel):
    """Every option that decides what vector a text gets (and how batches are formed).

    Attributes:
        task: what the vectors are for, which picks the method when ``method`` is not given:
            ``"retrieval"`` (queries against documents: ``kv``, the compression prompt, with its
            query and document prompts), ``"similarity"`` (symmetric: STS, clustering, dedup) or
            ``"classification"`` (both ``kv_pcot``, Pretended CoT; queries get the document
            prompt, as the two sides are alike). See ``TASK_METHODS``.
        method: ``None`` (the task's method) or a named preset (prompt family + re-routing on/off +
            Token Prepending on/off): ``"kv"`` (KV-Embedding as the paper describes it: compression
            prompt, mean+last pooling, re-routing), ``"prompt"`` (the same without re-routing),
            ``"kv_prompteol"``, ``"kv_pcot"``, ``"kv_ke"``, ``"kv_metaeol"`` (re-routing on those
            families), ``"prompteol"``, ``"pcot"``, ``"ke"``, ``"metaeol"``, ``"echo"`` (the
            families alone), ``"tp"`` (Token Prepending on PromptEOL), ``"mean"`` / ``"last"`` (raw
            text, no prompt). See ``prompts.METHODS``.
        prompt_family: overrides the method's prompt family: ``"compress"``, ``"prompteol"``,
            ``"pcot"`` (Pretended CoT), ``"ke"`` (Knowledge Enhancement), ``"metaeol"`` (8 prompts,
            8x the cost), ``"echo"`` or ``"none"`` (raw text). The family brings its pooling and
            output layer unless those are set too.
        reroute: overrides whether the method re-routes (``None``: the method's own).
        token_prepending: overrides whether Token Prepending (Fu et al. 2024) runs: a placeholder
            token before the text whose state, entering the early layers, is replaced by the
            previous layer's last-token state. For last-token families.
        layers: decoder layers (0-based) whose attention gets the re-routed key/value prefix.
            ``"auto"`` picks them by intrinsic dimension (computed once per model and prompt, then
            cached); a list names them; ``None`` turns re-routing off. Ignored when not re-routing.
        bias: attention bias ``b`` added to the prefix column of the attention logits.
        pooling: ``"mean_last"`` (average of mean and last-token pooling), ``"mean"`` or ``"last"``.
            ``None`` uses the family's own (``mean_last`` for compress, ``mean`` for echo,
            ``last`` for the others).
        mean_scope: which tokens mean pooling averages: ``"all"`` non-padding tokens (prompt
            included) or only the ``"text"`` tokens (the last copy of the text in the template).
            ``None`` uses the family's own (``"text"`` for echo, ``"all"`` otherwise).
        output_layer: the decoder layer (0-based; negative counts from the end) whose output is
            pooled. The last layer is pooled after the model's final norm (``last_hidden_state``),
            intermediate ones as they are. ``None``: the family's own (``-2`` for pcot and ke,
            Token Prepending's scaled layer for ``tp``, else ``-1``).
        prompts: named prompt templates, each containing ``{text}``. ``"document"`` and ``"query"``
            override the family's templates for the two sides (a missing one keeps the family's);
            any other name (``"classification"``, ``"clustering"``, ``"my_task"``...) adds a prompt
            that ``prompt_name`` picks at encode time, as in sentence-transformers' ``prompts``.
            A name given here wins over the same name among the providers' ``input_type`` values.
        max_length: longest input in tokens, prompt included; longer texts are cut (the text, not
            the prompt) with a warning. ``None``: the model's context length, at most 4096.
        batch_size: texts per forward pass. ``None``: 32, or unbounded when
            ``max_tokens_per_batch`` is set.
        max_tokens_per_batch: budget of padded tokens (rows x longest row) per forward pass, an
            alternative to a fixed batch size that bounds activation memory. A text longer than
            the budget runs alone.
        batching: how a batch's texts share a forward pass: ``"padded"`` (one left-padded row
            per text) or ``"packed"`` (texts one after another in as few rows of the batch's width
            as hold them, each with positions from 0, masked apart, re-routed with its own final
            key and value: less compute on padding, no wider attention; the same vectors to
            rounding). Not with Token Prepending.
        long_text: what happens to a text longer than ``max_length``: ``"truncate"`` (cut the
            text, keep the prompt, warn) or ``"chunk_mean"`` (embed it in pieces that fit, each
            wrapped in the prompt, and average the pieces' pooled vectors weighted by their token
            counts, before normalisation).
        empty_text: ``"embed"`` (an empty or whitespace-only text gets the embedding of the prompt
            around it) or ``"error"`` (``ValueError`` naming those texts).
        calibration_texts: texts for ``layers="auto"`` (at least 20 distinct); ``None`` uses the
            1000 built-in texts shipped with the package.
        selection: options of the layer-selection rule for ``layers="auto"``: ``skip_fraction``
            (early layers never chosen, default 0.2) and ``window`` (layers re-routed after the
            minimum, default ``floor(L / 10)``); ``last_layer`` (the last layer that may be chosen,
            default the pooled ``output_layer``).
        postprocess: label-free post-processing fitted once on ``postprocess_texts`` (document
            prompt) and cached: ``"none"``, ``"center"`` (subtract the mean vector),
            ``"standardize"`` (center, then scale each dimension to unit variance), ``"pca"``
            (center, then project on the top ``dimensions`` principal axes) or ``"whiten"`` (PCA
            scaled to unit variance per axis). Vectors are L2-normalised after it.
        dimensions: output size for ``"pca"`` / ``"whiten"`` (``None``: all the model's dimensions,
            at most the number of fitting texts); an error with other post-processing.
        postprocess_texts: texts to fit the post-processing on (at least 20 distinct; a sample
            of the user's corpus is best); ``None`` uses the 1000 built-in calibration texts.
        lexical: a lexical channel appended to each dense vector, so that one vector in a plain
            store scores a dense + lexical fusion
            ([`lexical`][kv_embeddings_integrations.core.outputs.lexical]): ``"none"``, ``"sparse"``
            (the same pass's PromptReps weights, queries times IDF) or ``"bm25"`` (BM25 over the
            model's tokens: documents' saturated term frequencies, queries' IDF). ``None``: the
            task's (see ``TASK_LEXICAL``).
        lexical_dim: columns of the lexical half (a count-sketch of the vocabulary).
        lexical_weight: the lexical cosine's share of a query's score, in ``[0, 1]``; applied on the
            query side only, so it can change without embedding the documents again.
        lexical_texts: texts to fit the lexical statistics on (IDF, mean length; a sample of the
            user's corpus is best); ``None`` uses the 1000 built-in calibration texts.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)

    task: TaskName = Field(
        default="retrieval",
        description="what the vectors are for: retrieval (method kv), similarity or classification (kv_pcot, "
        "queries get the document prompt); picks the method when none is given",
    )
    method: MethodName | None = Field(
        default=None,
        description="embedding method (None: the task's), a preset of prompt family + re-routing: kv (compression "
        "prompt + re-routing), kv_prompteol, kv_pcot, kv_ke, kv_metaeol, prompt, prompteol, pcot, ke, metaeol, echo, "
        "tp (Token Prepending), mean, last",
    )
    prompt_family: FamilyName | None = Field(
        default=None,
        description="prompt family overriding the method's: compress, prompteol, pcot, ke, metaeol, echo, none",
    )
    reroute: bool | None = Field(default=None, description="re-route or not, overriding the method (None: its own)")
    token_prepending: bool | None = Field(
        default=None, description="Token Prepending on or off, overriding the method (None: its own)"
    )
    layers: Literal["auto"] | list[int] | None = Field(
        default="auto",
        description="decoder layers to re-route: auto (by intrinsic dimension), a list of 0-based indices, or none",
    )
    bias: float = Field(default=1.0, description="attention bias on the re-routed prefix")
    pooling: Literal["mean_last", "mean", "last"] | None = Field(
        default=None, description="pooling of the final hidden states (None: the method's own)"
    )
    mean_scope: Literal["all", "text"] | None = Field(
        default=None,
        description="tokens mean pooling averages: all non-padding, or only the text (None: the method's own)",
    )
    output_layer: int | None = Field(
        default=None, description="decoder layer pooled (negative: from the end; None: the family's own)"
    )
    prompts: dict[str, str] | None = Field(
        default=None,
        description="named prompt templates with {text}: document / query override the family's, other names "
        "are picked by prompt_name",
    )
    max_length: int | None = Field(
        default=None, description="longest input in tokens, prompt included (None: the model's context, at most 4096)"
    )
    batch_size: int | None = Field(
        default=None, description="texts per forward pass (None: 32, or unbounded under max_tokens_per_batch)"
    )
    max_tokens_per_batch: int | None = Field(
        default=None, description="padded-token budget per forward pass (rows x longest row); bounds memory"
    )
    batching: Literal["padded", "packed"] = Field(
        default="padded",
        description="padded (a left-padded row per text) or packed (texts sharing rows of the batch's width, "
        "masked apart: less padding; same vectors)",
    )
    long_text: Literal["truncate", "chunk_mean"] = Field(
        default="truncate",
        description="texts over max_length: truncate (cut the text, keep the prompt) or chunk_mean "
        "(embed pieces, average)",
    )
    empty_text: Literal["embed", "error"] = Field(
        default="embed", description="empty or whitespace-only texts: embed (the prompt around them) or error"
    )
    calibration_texts: list[str] | None = Field(default=None, description="texts for layers='auto'")
    selection: dict[str, Any] | None = Field(default=None, description="layer-selection rule options")
    postprocess: Literal["none", "center", "standardize", "pca", "whiten"] = Field(
        default="center",
        description="label-free post-processing: none, center, standardize, pca or whiten (fitted once, cached)",
    )
    dimensions: int | None = Field(default=None, description="output dimensions for pca / whiten (None: all)")
    postprocess_texts: list[str] | None = Field(
        default=None, description="texts to fit post-processing on (None: the built-in calibration texts)"
    )
    lexical: LexicalName | None = Field(
        default=None,
        description="lexical channel appended to the dense vector: none, sparse or bm25 (None: the task's)",
    )
    lexical_dim: int = Field(default=4096, description="columns of the lexical half (a count-sketch)")
    lexical_weight: float = Field(
        default=0.7, description="the lexical cosine's share of a query's score (query side only)", ge=0.0, le=1.0
    )
    lexical_texts: list[str] | None = Field(
        default=None, description="texts to fit the lexical statistics on (None: the built-in calibration texts)"
    )

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, layers: Literal["auto"] | list[int] | None) -> Literal["auto"] | list[int] | None:
        if isinstance(layers, list):
            if not layers or any(i < 0 for i in layers):
                raise ValueError(f"layers must be a non-empty list of non-negative ints, got {layers!r}")
            return sorted(set(layers))
        return layers

    @field_validator("prompts")
    @classmethod
    def _check_prompts(cls, prompts: dict[str, str] | None) -> dict[str, str] | None:
        for key, template in (prompts or {}).items():
            if not isinstance(key, str) or not key.strip():
                raise ValueError(f"prompts keys must be non-empty prompt names, got {key!r}")
            check_template(template)
        return prompts

    @field_validator("max_length", "batch_size", "max_tokens_per_batch", "dimensions", "lexical_dim")
    @classmethod
    def _check_positive(cls, value: int | None, info: ValidationInfo) -> int | None:
        check_positive_int(str(info.field_name), value)
        return value

    @field_validator("selection")
    @classmethod
    def _check_selection(cls, selection: dict[str, Any] | None) -> dict[str, Any] | None:
        unknown = set(selection or {}) - SELECTION_OPTIONS
        if unknown:
            raise ValueError(f"selection keys must be among {sorted(SELECTION_OPTIONS)}, got {sorted(unknown)}")
        return selection

    @model_validator(mode="after")
    def _check_dimensions(self) -> EmbedderConfig:
        if self.dimensions is not None and self.postprocess not in ("pca", "whiten"):
            raise ValueError(
                f"dimensions={self.dimensions} needs postprocess='pca' or 'whiten', not {self.postprocess!r}"
            )
        return self

    @property
    def resolved_method(self) -> str:
        """The method that runs: ``method``, or the task's when it is ``None``."""
        return self.method or TASK_METHODS[self.task]

    @property
    def resolved_lexical(self) -> str:
        """The lexical channel that runs: ``lexical``, or the task's when it is ``None``."""
        return self.lexical or TASK_LEXICAL[self.task]

    @property
    def symmetric(self) -> bool:
        """Whether queries get the document prompt (a symmetric task)."""
        return self.task in SYMMETRIC_TASKS

    def vector_options(self) -> dict[str, Any]:
        """[`to_dict`][kv_embeddings_integrations.core.config.EmbedderConfig.to_dict] with the
        method resolved and the task dropped: the options as they decide a vector (what caches key
        on; ``task="similarity"`` and ``method="kv_pcot"`` share entries), and whether queries get
        the document prompt when that is not the default."""
        options = self.to_dict()
        options["method"] = self.resolved_method
        options["lexical"] = self.resolved_lexical
        task = options.pop("task")
        if task in SYMMETRIC_TASKS:
            options["symmetric"] = True
        return options

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict of the options (only these, also on the adapters)."""
        return copy.deepcopy({name: getattr(self, name) for name in EmbedderConfig.model_fields})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderConfig:
        """Build a config from
        [`to_dict`][kv_embeddings_integrations.core.config.EmbedderConfig.to_dict] output; unknown
        keys are an error, not ignored."""
        unknown = sorted(set(data) - cls.option_names())
        if unknown:
            raise ValueError(f"unknown embedder option(s): {unknown}; known: {sorted(cls.option_names())}")
        return cls(**data)

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The names of the options (the fields)."""
        return frozenset(EmbedderConfig.model_fields)

    @classmethod
    def split_options(cls, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``kwargs`` as (embedder options, everything else: loading arguments)."""
        names = cls.option_names()
        return {k: v for k, v in kwargs.items() if k in names}, {k: v for k, v in kwargs.items() if k not in names}

    def with_options(self, **options: Any) -> EmbedderConfig:
        """A validated copy with some options changed."""
        return EmbedderConfig(**{**self.to_dict(), **options})


# Named option sets, for any front end: ``KVEmbedder.from_pretrained(m, **PRESETS["paper"])``,
# ``KVEmbeddings(model=m, **PRESETS["paper"])``.
PRESETS: dict[str, dict[str, Any]] = {
    # KV-Embedding exactly as method.md describes it: compression prompt, re-routing, mean+last
    # pooling of the last layer, no post-processing, the dense vector alone.
    "paper": {"method": "kv", "postprocess": "none", "lexical": "none"},
    # The package's default (chosen on dev data, docs/results.md): the retrieval task's method,
    # with its lexical half.
    "default": {"method": TASK_METHODS["retrieval"], "postprocess": "center", "lexical": TASK_LEXICAL["retrieval"]},
    # The symmetric tasks' (STS, classification): their vectors carry no lexical half.
    "similarity": {"method": TASK_METHODS["similarity"], "postprocess": "center", "lexical": "none"},
}
