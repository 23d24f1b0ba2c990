"""Embedding a corpus on a cluster with Ray Data (optional extra ``ray``).

``embed_dataset`` adds an embedding column to any ``ray.data.Dataset`` (read with any Ray Data
reader, written with any writer) through ``map_batches`` with a callable class, so each actor
loads the model once and embeds many batches. Layer selection runs once, in a Ray task with the
actors' resources, before the actors start; the actors get the chosen layers explicitly.

The vectors go into a fixed-size list column of float32 (Arrow ``fixed_size_list<float>[dim]``),
the type vector databases and Parquet readers (DuckDB, LanceDB, pandas) take as an embedding, or
of the ``precision`` asked (int8, uint8, float16; binary ones ``ceil(dim / 8)`` packed bytes);
the column's field metadata holds the embedder's identity
([`kv_embeddings_integrations.stores`][kv_embeddings_integrations.stores]).
"""

from __future__ import annotations

import glob
import os
import warnings
from typing import Any

import numpy as np

from ..core.call_options import CallOptions
from ..core.config import EmbedderConfig, check_positive_int
from ..core.extras import import_extra, missing_error
from ..core.identity import field_metadata
from ..core.model.bundled import DEFAULT_MODEL
from ..core.model.loading import LoadOptions
from ..core.outputs.quantization import DTYPES, SCALAR, QuantizationRanges, width
from ..core.prompts import METHODS, check_prompt_name, requested_prompt

DEFAULT_BATCH_SIZE = 256


def require_ray():
    """Import Ray (with Ray Data), or fail with the install command."""
    ray = import_extra("ray", "ray", "embedding a Ray dataset")
    try:
        import ray.data  # noqa: F401
    except ModuleNotFoundError as error:  # Ray without its [data] extra: pyarrow, pandas...
        raise missing_error("ray", "embedding a Ray dataset", [error.name or "ray.data"]) from error
    return ray


def _load(model: str | dict[str, Any], options: dict[str, Any]):
    """The embedder for ``model`` (a name, or
    [`LoadOptions`][kv_embeddings_integrations.core.model.loading.LoadOptions] fields) and
    ``options`` ([`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig] fields,
    and with a name, loading arguments too)."""
    # The core is imported where it runs (in an actor or task), not when this module loads.
    from ..core.embedder import KVEmbedder

    config, load = EmbedderConfig.split_options(options)
    load_options = LoadOptions(**model, **load) if isinstance(model, dict) else LoadOptions(model=model, **load)
    return KVEmbedder.from_pretrained(load_options, config=EmbedderConfig(**config))


def _chosen_layers(model: dict[str, Any], options: dict[str, Any]) -> list[int] | None:
    """Run layer selection (or read its cache) once; the layers every actor will re-route."""
    return _load(model, options).layers or None


def _fitted_ranges(model: dict[str, Any], options: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Fit (or read) the int8 / uint8 ranges once; every actor quantizes with these."""
    ranges = _load(model, options).quantization_ranges
    return ranges.low.tolist(), ranges.high.tolist()


class DatasetEmbedder:
    """The callable class each Ray actor holds: one loaded
    [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder], many batches.

    Args:
        model: hub id, local directory or bundled alias, or a dict of
            [`LoadOptions`][kv_embeddings_integrations.core.model.loading.LoadOptions] fields (what
            [`embed_dataset`][kv_embeddings_integrations.parallel.ray_data.embed_dataset] sends:
            plain data travels to actors as it is).
        options: [`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig] fields, with
            the layers already chosen (with a model name, also
            [`KVEmbedder.from_pretrained`][kv_embeddings_integrations.core.embedder.KVEmbedder.from_pretrained]
            loading arguments).
        text_column: the column holding the texts.
        output_column: the column the vectors go to.
        prompt_type: the prompt name (``"document"``, ``"query"``, a name of ``prompts``...).
        normalize: L2-normalise the vectors.
        precision: the vectors' precision (the column's element type).
        ranges: int8 / uint8 ranges as ``(low, high)`` lists, fitted once for the whole job.
    """

    def __init__(
        self,
        model: str | dict[str, Any],
        options: dict[str, Any],
        text_column: str,
        output_column: str,
        prompt_type: str,
        normalize: bool,
        precision: str = "float32",
        ranges: tuple[list[float], list[float]] | None = None,
    ) -> None:
        import ray
        import torch

        self.embedder = _load(model, options)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus and self.embedder.device.type == "cpu":
            # One torch thread per reserved CPU: actors sharing a node must not oversubscribe it.
            torch.set_num_threads(max(1, int(cpus)))
        self.text_column = text_column
        self.output_column = output_column
        self.prompt_type = prompt_type
        self.normalize = normalize
        self.precision = precision
        if ranges is not None:
            low, high = (np.asarray(r, dtype=np.float32) for r in ranges)
            self.embedder.quantization_ranges = QuantizationRanges(low, high)
        self.width = width(precision, self.embedder.dimension)
        # The embedder's identity travels on the column (Parquet and LanceDB keep field metadata):
        # a reader can check that its query embedder makes the same vectors (stores.guard).
        identity = {**self.embedder.identity(normalize=normalize, precision=precision), "prompt_type": prompt_type}
        self.field_metadata = field_metadata(identity)

    def __call__(self, batch):
        import pyarrow as pa

        if self.text_column not in batch.column_names:
            raise KeyError(f"no column {self.text_column!r} in the dataset (columns: {batch.column_names})")
        texts = batch.column(self.text_column).to_pylist()
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                # Name the row by its other columns (an id, usually): a batch position means nothing.
                row = {k: v for k, v in batch.slice(index, 1).to_pylist()[0].items() if k != self.text_column}
                kind = "None" if text is None else type(text).__name__
                raise TypeError(f"column {self.text_column!r} is {kind}, not str, in the row {str(row)[:200]}")
        vectors = self.embedder.encode(
            texts, prompt_type=self.prompt_type, normalize=self.normalize, precision=self.precision
        )
        vectors = np.ascontiguousarray(vectors, dtype=DTYPES[self.precision]).reshape(len(texts), self.width)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), self.width)
        if self.output_column in batch.column_names:
            batch = batch.drop_columns([self.output_column])
        field = pa.field(self.output_column, column.type, metadata=self.field_metadata)
        return batch.append_column(field, column)


def _check_cpus(ray, actors_cpus: float) -> None:
    # Readers and writers are Ray tasks too: actors holding every CPU starve them and the job stalls.
    total = ray.cluster_resources().get("CPU", 0)
    if total and actors_cpus + 1 > total:
        warnings.warn(
            f"the actors reserve {actors_cpus:g} of the cluster's {total:g} CPUs, leaving none for reading and "
            "writing: the job may stall; lower concurrency or num_cpus_per_worker, or start Ray with more CPUs",
            stacklevel=3,
        )


def embed_dataset(
    ds,
    *,
    model: str | LoadOptions = DEFAULT_MODEL,
    text_column: str = "text",
    output_column: str = "embedding",
    prompt_type: str = "document",
    prompt_name: str | None = None,
    precision: str = "float32",
    concurrency: int = 1,
    num_gpus_per_worker: float = 0,
    num_cpus_per_worker: float = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    normalize: bool = True,
    config: EmbedderConfig | None = None,
    **embedder_options: Any,
):
    """Add an embedding column to a Ray Data dataset.

    The embedding itself runs when the result is consumed or written, like every Ray Data
    transform; the options are checked, and automatic layer selection runs, at this call.

    Args:
        ds: a ``ray.data.Dataset`` with a string column ``text_column`` (e.g. from
            ``ray.data.read_json(...)`` or ``read_parquet(...)``).
        model: hub id, local directory or bundled alias, or
            [`LoadOptions`][kv_embeddings_integrations.core.model.loading.LoadOptions] (then no
            loading options in ``embedder_options``); every actor loads it once.
        text_column: the column holding the texts; other columns (ids...) are kept as they are.
        output_column: the new column (replaced if present): one vector per row, as an Arrow
            fixed-size list of ``precision``'s type (float32 by default).
        prompt_type: ``"document"`` or ``"query"``, or another prompt name (picks the template).
        prompt_name: sentence-transformers' spelling: a name of the ``prompts`` option (or a
            prompt type); given, it is used instead of ``prompt_type``.
        precision: ``"float32"``, ``"float16"``, ``"int8"`` / ``"uint8"`` (ranges fitted on the
            calibration texts), ``"binary"`` / ``"ubinary"`` (packed bits: ``ceil(dimension / 8)``
            int8 / uint8 per row); recorded in the column's identity.
        concurrency: number of actors (model replicas). With GPUs, one per GPU is usual.
        num_gpus_per_worker: GPUs reserved per actor: 1 for a model that fits one GPU; 2 or more
            for one spread over several with ``device_map="auto"``.
        num_cpus_per_worker: CPUs reserved per actor; a CPU actor runs that many torch threads.
        batch_size: rows handed to an actor per call. Within it the core sorts by length and
            batches again: 32 rows, or ``max_tokens_per_batch`` padded tokens if given.
        normalize: L2-normalise each vector.
        config: an [`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig]; option keywords in
            ``embedder_options`` override its fields.
        **embedder_options: as for
            [`KVEmbedder.from_pretrained`][kv_embeddings_integrations.core.embedder.KVEmbedder.from_pretrained]:
            [`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig]
            options (``method``, ``layers``, ``bias``, ``max_length``, ``max_tokens_per_batch``...)
            and loading options (``dtype``, ``device_map``, ``max_memory``, ``revision``...).

    Returns:
        the transformed ``ray.data.Dataset``; write it with any writer (``write_parquet``...).
        Rows keep their columns; for rows in input order set
        ``ray.data.DataContext.get_current().execution_options.preserve_order = True``.
    """
    ray = require_ray()
    if not isinstance(ds, ray.data.Dataset):
        raise TypeError(f"ds must be a ray.data.Dataset, got {type(ds).__name__}")
    # The same checks as every embedding entry point (the actors' prompt is checked below, by name).
    prompt_type = CallOptions(
        prompt_type=requested_prompt(prompt_type, prompt_name), normalize=normalize, precision=precision
    ).prompt_type
    check_positive_int("concurrency", concurrency)
    check_positive_int("batch_size", batch_size)
    for name, value in (("num_gpus_per_worker", num_gpus_per_worker), ("num_cpus_per_worker", num_cpus_per_worker)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    # Bad options fail here, once, not in every actor after a model load.
    options, load_kwargs = EmbedderConfig.split_options(embedder_options)
    config = config.with_options(**options) if config is not None else EmbedderConfig(**options)
    load_options = LoadOptions.of(model, **load_kwargs)
    check_prompt_name(prompt_type, config.prompts)
    resources = {"num_cpus": num_cpus_per_worker, "num_gpus": num_gpus_per_worker}
    if ray.is_initialized():
        _check_cpus(ray, concurrency * num_cpus_per_worker)
    reroutes = config.reroute if config.reroute is not None else METHODS[config.resolved_method].reroute
    if reroutes and config.layers == "auto":
        # Once for the whole job (the cache makes later jobs instant), on an actor's resources.
        select = ray.remote(**resources)(_chosen_layers)
        config = config.with_options(layers=ray.get(select.remote(load_options.model_dump(), config.to_dict())))
    ranges = None
    if precision in SCALAR:
        # Fitted once, here: actors fitting their own could round them differently.
        ranges = ray.get(ray.remote(**resources)(_fitted_ranges).remote(load_options.model_dump(), config.to_dict()))
    return ds.map_batches(
        DatasetEmbedder,
        fn_constructor_kwargs={
            "model": load_options.model_dump(),
            "options": config.to_dict(),
            "text_column": text_column,
            "output_column": output_column,
            "prompt_type": prompt_type,
            "normalize": normalize,
            "precision": precision,
            "ranges": ranges,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        **resources,
    )


# Ray Data readers and writers by format name, and the format each file suffix means.
FORMATS = ("parquet", "json", "csv")
_SUFFIX_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def _format_of(paths: list[str]) -> str:
    formats = {_SUFFIX_FORMATS.get(os.path.splitext(p)[1].lower(), "") for p in paths}
    if len(formats) != 1 or "" in formats:
        names = ", ".join(sorted({os.path.basename(p) for p in paths})[:5])
        raise ValueError(
            f"cannot tell the input format from the file names ({names}); "
            "name files .parquet, .jsonl, .json or .csv, or give the format"
        )
    return formats.pop()


def resolve_input(spec: str, input_format: str | None = None) -> tuple[list[str] | str, str]:
    """The paths and format Ray Data should read for ``spec``: a file, a directory or a glob.

    Local directories and globs are expanded here (files sorted by name, so the output keeps the
    same order); remote URIs (``s3://...``) go to Ray as they are and need a suffix or
    ``input_format``.

    Raises:
        FileNotFoundError: nothing matches a local ``spec``.
        ValueError: the format cannot be told and was not given, or is unknown.
    """
    if input_format is not None and input_format not in FORMATS:
        raise ValueError(f"input format must be one of {FORMATS}, got {input_format!r}")
    if "://" in spec:
        return spec, input_format or _format_of([spec])
    if os.path.isdir(spec):
        paths = []
        for root, folders, names in os.walk(spec):
            # Hidden and underscore entries: _SUCCESS markers, _temporary/ output of unfinished jobs.
            folders[:] = [f for f in folders if not f.startswith((".", "_"))]
            paths += [os.path.join(root, n) for n in names if not n.startswith((".", "_"))]
        paths.sort()
    elif glob.has_magic(spec):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    else:
        paths = [spec] if os.path.isfile(spec) else []
    if not paths:
        raise FileNotFoundError(f"no input files match {spec}")
    return paths, input_format or _format_of(paths)
