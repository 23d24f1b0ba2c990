"""Automatic choice of the re-routed layers by intrinsic dimensionality (method.md).

The intrinsic dimension (ID) of the last-token representation of prompted texts is estimated at
every layer with TwoNN (Facco et al. 2017, Sci. Rep. 7:12140); the re-routed window starts at the
layer of minimum ID past the first 20% of the network and spans ``floor(L / 10)`` more layers. The
choice is computed once per model and cached as JSON in the user cache, keyed by
[`layer_selection_key`][kv_embeddings_integrations.core.identity.layer_selection_key]; the package
ships the choices for its bundled models (see [`cache`][kv_embeddings_integrations.core.cache]).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import ArrayLike

from ..cache import ORIGIN_WORDS, cached_or_computed, write_atomically
from ..calibration import builtin_calibration_texts
from ..config import DEFAULT_SKIP_FRACTION
from ..identity import FitSubject, layer_selection_key

logger = logging.getLogger(__name__)

MIN_POINTS = 20
# A change to the estimator or to the points it measures must bump identity.ESTIMATOR_VERSION,
# so the cached (and shipped) choices it made stop matching.


class SelectableEmbedder(FitSubject, Protocol):
    """What selection needs of an embedder: a fit's subject that measures every layer's states (a
    [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder] has it, and so has the plain
    [`Fitting`][kv_embeddings_integrations.core.fitting.subject.Fitting] it is built with)."""

    def layer_states(
        self, texts: Sequence[str], *, prompt_type: str = "document", show_progress_bar: bool | None = None
    ) -> torch.Tensor: ...


def twonn_dimension(points: ArrayLike | torch.Tensor, *, discard_fraction: float = 0.1) -> float:
    """TwoNN intrinsic dimension of ``points`` (an ``(N, D)`` array or tensor).

    For each point, ``mu = r2 / r1`` (distances to its second and first nearest neighbours);
    the ID is the slope, through the origin, of ``-log(1 - F(mu))`` against ``log(mu)``, fitted
    after discarding the largest ``discard_fraction`` of ``mu`` (Facco et al.'s recipe, robust to
    noise). Duplicate points (zero distances) are merged first. Needs at least 20 distinct points.
    """
    x = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points)
    if x.ndim != 2:
        raise ValueError(f"points must be a 2-D (N, D) array, got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("points contain NaN or infinite values")
    x = torch.unique(x, dim=0)
    n = x.shape[0]
    if n < MIN_POINTS:
        raise ValueError(f"TwoNN needs at least {MIN_POINTS} distinct points, got {n}")
    if not 0 <= discard_fraction < 1:
        raise ValueError(f"discard_fraction must be in [0, 1), got {discard_fraction}")
    nearest = torch.empty(n, 2, dtype=torch.float64)
    for start in range(0, n, 1024):  # rows in chunks: memory O(1024 * N), not O(N^2)
        block = torch.cdist(x[start : start + 1024], x)
        block[torch.arange(block.shape[0]), torch.arange(start, start + block.shape[0])] = math.inf
        nearest[start : start + 1024] = block.topk(2, dim=1, largest=False).values
    mu = torch.sort(nearest[:, 1] / nearest[:, 0]).values
    # F(mu_N) = 1 would give log(0): the largest mu never enters the fit.
    keep = min(n - 1, max(2, int(math.floor(n * (1 - discard_fraction)))))
    log_mu = torch.log(mu[:keep])
    cdf = torch.arange(1, n + 1, dtype=torch.float64)[:keep] / n
    y = -torch.log1p(-cdf)
    return float((log_mu * y).sum() / (log_mu * log_mu).sum())


def select_layers(
    dimensions: Sequence[float],
    num_layers: int | None = None,
    *,
    skip_fraction: float = DEFAULT_SKIP_FRACTION,
    window: int | None = None,
    last_layer: int | None = None,
) -> list[int]:
    """method.md's rule: skip the first ``skip_fraction`` of layers, take the layer of minimum ID
    (the first, on ties), and re-route it and the ``window`` layers after it (default
    ``floor(L / 10)``), clipped to the network.

    ``last_layer`` (default: the last) bounds the candidates and the window: the embedder passes
    the layer it pools, as re-routing a later layer cannot change the pooled states.
    """
    num_layers = len(dimensions) if num_layers is None else num_layers
    if len(dimensions) != num_layers or num_layers < 1:
        raise ValueError(f"need one dimension per layer: got {len(dimensions)} for {num_layers} layers")
    if not 0 <= skip_fraction < 1:
        raise ValueError(f"skip_fraction must be in [0, 1), got {skip_fraction}")
    window = num_layers // 10 if window is None else window
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    last = num_layers - 1 if last_layer is None else last_layer
    if not 0 <= last < num_layers:
        raise ValueError(f"last_layer must be in 0..{num_layers - 1}, got {last_layer}")
    skip = min(int(math.floor(num_layers * skip_fraction)), last)
    candidates = np.asarray(dimensions[skip : last + 1], dtype=float)
    if not np.isfinite(candidates).all():
        raise ValueError("dimensions contain NaN or infinite values")
    start = skip + int(np.argmin(candidates))
    return list(range(start, min(start + window, last) + 1))


def last_token_states(
    embedder: SelectableEmbedder, texts: Sequence[str], *, show_progress_bar: bool | None = None
) -> torch.Tensor:
    """``(N, L, H)`` float32 last-token hidden states of every layer, for texts prompted as
    documents, without re-routing (the embedder's ``layer_states``)."""
    return embedder.layer_states(texts, prompt_type="document", show_progress_bar=show_progress_bar)


def layerwise_dimensions(
    embedder: SelectableEmbedder, texts: Sequence[str], *, show_progress_bar: bool | None = None
) -> list[float]:
    """TwoNN ID of the last-token hidden state at every layer (index l: output of layer l)."""
    states = last_token_states(embedder, texts, show_progress_bar=show_progress_bar)
    return [twonn_dimension(states[:, layer]) for layer in range(states.shape[1])]


@dataclass
class LayerSelection:
    """The outcome of automatic selection, as stored in the cache."""

    layers: list[int]
    dimensions: list[float]
    calibration: str
    num_texts: int
    seconds: float
    from_cache: bool = False
    key: dict[str, Any] = field(default_factory=dict)
    # "computed" here, read from the user's "cache", or "shipped" with the package.
    origin: str = "computed"


def _read_cache(path: Path, key: dict[str, Any], num_layers: int, origin: str = "cache") -> LayerSelection | None:
    """The cached selection if the file is intact and was made for exactly this key; else None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") != key:
            raise ValueError("key mismatch")
        dimensions = [float(d) for d in data["dimensions"]]
        layers = [int(i) for i in data["layers"]]
        # Never trust the stored choice blindly: it must follow from the stored curve.
        if len(dimensions) != num_layers or layers != select_layers(dimensions, num_layers, **key["rule"]):
            raise ValueError("inconsistent entry")
        return LayerSelection(
            layers, dimensions, str(data["calibration"]), int(data["num_texts"]), float(data["seconds"]), True, key,
            origin,
        )  # fmt: skip
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        logger.warning("ignoring unusable layer-selection cache %s (%s); recomputing", path, e)
        return None


def _write_cache(path: Path, selection: LayerSelection) -> None:
    payload = {
        "key": selection.key,
        "layers": selection.layers,
        "dimensions": selection.dimensions,
        "calibration": selection.calibration,
        "num_texts": selection.num_texts,
        "seconds": selection.seconds,
    }
    # A concurrent reader (or writer) never sees a half-written file.
    write_atomically(path, lambda f: f.write(json.dumps(payload, indent=1).encode("utf-8")))


def auto_select_layers(
    embedder: SelectableEmbedder,
    calibration_texts: Sequence[str] | None = None,
    *,
    recompute: bool = False,
    show_progress_bar: bool | None = None,
    **rule: Any,
) -> LayerSelection:
    """Pick the layers to re-route for ``embedder``'s model, from the cache when possible.

    Args:
        embedder: the embedder whose model, document template and ``max_length`` are used.
        calibration_texts: at least 20 distinct texts; ``None``: the 1000 built-in texts.
        recompute: ignore a cached entry (the new result still replaces it).
        show_progress_bar: ``None`` shows one for more than 10 batches.
        **rule: [`select_layers`][kv_embeddings_integrations.core.fitting.layer_selection.select_layers] options,
            ``skip_fraction``, ``window`` and ``last_layer``.
    """
    if calibration_texts is None:
        texts, calibration = builtin_calibration_texts(), "built-in (1000 texts: captions, banking, Python docs)"
    else:
        texts, calibration = list(calibration_texts), f"user ({len(calibration_texts)} texts)"
        if len(set(texts)) < MIN_POINTS:
            raise ValueError(
                f"layer selection needs at least {MIN_POINTS} distinct calibration texts, got {len(set(texts))}"
            )
    key = layer_selection_key(embedder, texts, rule)

    def compute() -> LayerSelection:
        logger.info(
            "%s: choosing the layers to re-route by the intrinsic dimension of %d texts (once, then cached)",
            embedder.name,
            len(texts),
        )
        start = time.perf_counter()
        dimensions = layerwise_dimensions(embedder, texts, show_progress_bar=show_progress_bar)
        layers = select_layers(dimensions, embedder.num_layers, **key["rule"])
        seconds = time.perf_counter() - start
        logger.info(
            "selected layers %s for %s in %.1f s (calibration: %s)",
            layers,
            embedder.name,
            seconds,
            calibration,
        )
        return LayerSelection(layers, dimensions, calibration, len(texts), seconds, False, key)

    selection, origin = cached_or_computed(
        "layer_selection",
        key,
        ".json",
        lambda path, origin: _read_cache(path, key, embedder.num_layers, origin),
        compute,
        _write_cache,
        reuse=not recompute,
    )
    if origin != "computed":
        logger.info("%s: re-routing layers %s, the choice %s", embedder.name, selection.layers, ORIGIN_WORDS[origin])
    return selection


def layers_for(embedder: SelectableEmbedder) -> tuple[list[int], LayerSelection | None]:
    """The layers ``embedder`` re-routes, as its resolved method asks.

    Runs on the otherwise built embedder (nothing re-routed yet): automatic selection embeds
    through it.

    Args:
        embedder: the embedder; its ``resolved`` method says whether and which layers to re-route.

    Returns:
        the layers and the selection, as a pair: no layers when the method does not re-route;
        the given ones (already checked against the model); or the automatic choice, with its
        [`LayerSelection`][kv_embeddings_integrations.core.fitting.layer_selection.LayerSelection]
        (else ``None``).
    """
    resolved = embedder.resolved
    if not resolved.reroute:
        return [], None
    if resolved.layers != "auto":
        return list(resolved.layers), None
    selection = auto_select_layers(embedder, embedder.config.calibration_texts, **resolved.selection_rule)
    return selection.layers, selection
