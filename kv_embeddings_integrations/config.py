"""The embedder's options, in one validated object that round-trips to and from a dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from .prompts import METHODS, POOLINGS, PROMPT_TYPES, check_template

MEAN_SCOPES = ("all", "text")
SELECTION_OPTIONS = frozenset({"skip_fraction", "window"})


@dataclass
class EmbedderConfig:
    """Every option that decides what vector a text gets (and how batches are formed).

    Args:
        method: ``"kv"`` (default: compression prompt + KV re-routing), ``"prompt"`` (compression
            prompt, no re-routing), ``"prompteol"`` (PromptEOL template, last token), ``"echo"``
            (text given twice, mean of the second copy), ``"mean"`` / ``"last"`` (raw text, no prompt).
        layers: decoder layers (0-based) whose attention gets the re-routed key/value prefix.
            ``"auto"`` picks them by intrinsic dimension (computed once per model, then cached);
            a list names them; ``None`` turns re-routing off.
            Ignored by methods other than ``"kv"``.
        bias: attention bias ``b`` added to the prefix column of the attention logits.
        pooling: ``"mean_last"`` (average of mean and last-token pooling), ``"mean"`` or ``"last"``,
            over the final layer's hidden states. ``None`` uses the method's own pooling
            (``mean_last`` for kv/prompt, ``last`` for prompteol/last, ``mean`` for echo/mean).
        mean_scope: which tokens mean pooling averages: ``"all"`` non-padding tokens (prompt
            included) or only the ``"text"`` tokens (the last copy of the text in the template).
            ``None`` uses the method's own (``"text"`` for echo, ``"all"`` otherwise).
        prompts: templates overriding the method's, keyed by prompt type (``"document"``,
            ``"query"``); each must contain ``{text}``. Missing keys keep the method's template.
        max_length: longest input in tokens, prompt included; longer texts are cut (the text, not
            the prompt) with a warning. ``None``: the model's context length, at most 4096.
        batch_size: texts per forward pass. ``None``: 32, or unbounded when
            ``max_tokens_per_batch`` is set.
        max_tokens_per_batch: budget of padded tokens (rows x longest row) per forward pass, an
            alternative to a fixed batch size that bounds activation memory. A text longer than
            the budget runs alone.
        calibration_texts: texts for ``layers="auto"`` (at least 20); ``None`` uses the 1000
            built-in texts shipped with the package.
        selection: options of the layer-selection rule for ``layers="auto"``: ``skip_fraction``
            (early layers never chosen, default 0.2) and ``window`` (layers re-routed after the
            minimum, default ``floor(L / 10)``).
    """

    method: Literal["kv", "prompt", "prompteol", "echo", "mean", "last"] = "kv"
    layers: Literal["auto"] | list[int] | None = "auto"
    bias: float = 1.0
    pooling: Literal["mean_last", "mean", "last"] | None = None
    mean_scope: Literal["all", "text"] | None = None
    prompts: dict[str, str] | None = field(default=None)
    max_length: int | None = None
    batch_size: int | None = None
    max_tokens_per_batch: int | None = None
    calibration_texts: list[str] | None = None
    selection: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.layers is not None and self.layers != "auto":
            if isinstance(self.layers, (str, bytes)) or not hasattr(self.layers, "__iter__"):
                raise ValueError(f"layers must be 'auto', None or a list of layer indices, got {self.layers!r}")
            layers = list(self.layers)
            if not layers or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
                raise ValueError(f"layers must be a non-empty list of non-negative ints, got {self.layers!r}")
            self.layers = sorted(set(layers))
        if isinstance(self.bias, bool) or not isinstance(self.bias, (int, float)):
            raise ValueError(f"bias must be a number, got {self.bias!r}")
        self.bias = float(self.bias)
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} or None, got {self.pooling!r}")
        if self.mean_scope is not None and self.mean_scope not in MEAN_SCOPES:
            raise ValueError(f"mean_scope must be one of {MEAN_SCOPES} or None, got {self.mean_scope!r}")
        if self.prompts is not None:
            if not isinstance(self.prompts, dict):
                raise ValueError(f"prompts must be a dict of prompt type to template, got {self.prompts!r}")
            for key, template in self.prompts.items():
                if key not in PROMPT_TYPES:
                    raise ValueError(f"prompts keys must be in {PROMPT_TYPES}, got {key!r}")
                check_template(template)
            self.prompts = dict(self.prompts)
        for name in ("max_length", "batch_size", "max_tokens_per_batch"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")

        if self.calibration_texts is not None:
            texts = self.calibration_texts
            if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
                raise ValueError("calibration_texts must be a list of strings")
            self.calibration_texts = list(texts)
        if self.selection is not None:
            unknown = set(self.selection) - SELECTION_OPTIONS if isinstance(self.selection, dict) else None
            if unknown is None or unknown:
                raise ValueError(
                    f"selection must be a dict with keys among {sorted(SELECTION_OPTIONS)}, got {self.selection!r}"
                )
            self.selection = dict(self.selection)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict of the options."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown embedder option(s): {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def option_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))
