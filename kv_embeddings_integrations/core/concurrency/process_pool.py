"""Data-parallel encoding: one worker process per device, each running its own copy of the embedder.

Modelled on sentence-transformers' ``start_multi_process_pool`` / ``encode_multi_process``: texts
are cut into chunks that go to a shared input queue; whichever worker is free takes the next one
and sends the vectors back on a shared output queue. Workers are spawned (never forked: a forked
CUDA or OpenMP runtime is unsafe), so they start with a fresh interpreter and receive the model
through torch's multiprocessing pickler, which shares CPU weights through shared memory instead of
copying them.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import itertools
import math
import os
import queue
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..call_options import CallOptions
from ..config import EmbedderConfig, check_positive_int
from ..resolved import ResolvedMethod
from ..results import EmbedResult
from ..running.inputs import texts_to_embed
from .recipe import EmbedderRecipe

# Default chunking: about this many chunks per worker, so a slow worker (or a chunk of long texts)
# does not leave the others idle at the end of a job...
CHUNKS_PER_WORKER = 4
# ...but never so small that queue round trips dominate, nor so large that a chunk hogs memory.
MAX_CHUNK_SIZE = 1000
# A progress bar is shown (when not asked either way) for jobs of more chunks than this.
PROGRESS_BAR_MIN_CHUNKS = 10
# How often the parent, while waiting for results, checks that every worker is still alive.
POLL_SECONDS = 0.5
# close(): how long workers get to finish and exit before they are terminated.
CLOSE_TIMEOUT_SECONDS = 10.0
# Closing after a failure: a worker killed while reading the input queue holds its lock forever,
# so the others may never see their stop signal; do not wait long for them.
FAILURE_CLOSE_TIMEOUT_SECONDS = 2.0


class Replicable(Protocol):
    """What a pool needs of the embedder it replicates (a
    [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder] has it): what rebuilds it in
    a worker, and what the parent checks and quantizes with."""

    @property
    def name(self) -> str: ...
    @property
    def model(self) -> torch.nn.Module: ...
    @property
    def config(self) -> EmbedderConfig: ...
    @property
    def resolved(self) -> ResolvedMethod: ...
    @property
    def dimension(self) -> int: ...
    @property
    def max_length(self) -> int: ...
    def recipe(self) -> EmbedderRecipe: ...
    def quantize(self, vectors: np.ndarray, precision: str) -> np.ndarray: ...


def _check_device(index: int, device: str | torch.device) -> torch.device:
    """Parse one device and make sure it exists here (workers inherit this machine's devices)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f"devices[{index}] = {device!r} is not a torch device: {error}") from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"devices[{index}] = {device!r}: MPS is not available on this machine")
        return parsed
    # CUDA and other accelerators with the same module API (torch.xpu, ...).
    backend: Any = getattr(torch, parsed.type, None)  # torch.cuda, torch.xpu, ...: one module API
    is_available = getattr(backend, "is_available", None)
    if is_available is None or not is_available():
        raise ValueError(f"devices[{index}] = {device!r}: {parsed.type!r} devices are not available on this machine")
    # Pin an index so every worker (and the `devices` property) names one definite device.
    parsed = torch.device(parsed.type, parsed.index or 0)
    count = backend.device_count()
    if parsed.index >= count:
        raise ValueError(
            f"devices[{index}] = {device!r}: there is no {parsed}; this machine has {count} {parsed.type} device(s)"
        )
    return parsed


def _usable_cores() -> int:
    # The cores this process may run on (a container or taskset can allow fewer than cpu_count).
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _portable_warning(record: warnings.WarningMessage) -> tuple[type[Warning], str]:
    # A warning class defined in some module the parent never imported would not unpickle there
    # (and an unpicklable message is dropped by the queue, hanging the parent): keep built-ins only.
    category = record.category if getattr(builtins, record.category.__name__, None) is record.category else UserWarning
    return category, str(record.message)


def _last_line(traceback_text: str) -> str:
    """The exception line of a traceback (``"TypeError: ..."``), for the first line of an error."""
    lines = traceback_text.strip().splitlines()
    return lines[-1] if lines else "(no traceback)"


def _worker(
    rank: int,
    recipe: EmbedderRecipe,
    device: torch.device,
    num_threads: int | None,
    inputs: Any,
    outputs: Any,
    finished_job: Any,
) -> None:
    """A worker process: rebuild the embedder on ``device``, then encode chunks until told to stop.

    Messages out are ``(kind, rank, job, chunk, payload, warnings)``, kind ``"result"`` (payload:
    the chunk's ``EmbedResult``), ``"error"`` or ``"startup"`` (payload: a traceback; it exits).
    """
    # Ctrl-C reaches the whole process group: let the parent handle it (it cancels the job and the
    # pool stays usable) instead of every worker dying with a KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        embedder = recipe.build()
        embedder.model.to(device)
    except Exception:
        outputs.put(("startup", rank, None, None, traceback.format_exc(), []))
        return
    del recipe
    while True:
        task = inputs.get()
        if task is None:
            return
        job, chunk, texts, options = task
        if job <= finished_job.value:
            continue  # a leftover of a job that failed or was interrupted: nobody waits for it
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = embedder.embed_with(texts, options)
            except Exception:
                outputs.put(("error", rank, job, chunk, traceback.format_exc(), []))
                continue
        outputs.put(("result", rank, job, chunk, result, [_portable_warning(w) for w in caught]))


class EmbeddingPool:
    """Encode with one [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder] replica
    per device, in worker processes.

    Each worker is a spawned process that rebuilds the embedder from its model, tokenizer, config
    and already-chosen layers (layer selection never runs again), moves the model to its device
    and encodes the chunks of texts it takes from a shared queue. The parent sorts texts by length,
    cuts them into chunks, and puts the vectors back in input order.

    CPU weights are shared with the workers through shared memory, not copied per worker (on Linux
    that is ``/dev/shm``, which must hold the model: Docker's 64 MB default does not, so run with
    ``--shm-size`` or ``--ipc=host``). Each worker on another device copies the model there; a
    model already on a GPU is first shared with the workers through CUDA IPC, so loading it on the
    CPU before building the pool keeps every worker from touching the parent's GPU.

    Workers start in the background; a worker that cannot start (or dies) is reported by the next
    [`encode`][kv_embeddings_integrations.core.concurrency.process_pool.EmbeddingPool.encode], which
    then raises and closes the pool. Close the pool when done (or use it as a context manager)::

        with EmbeddingPool(embedder, ["cuda:0", "cuda:1"]) as pool:
            vectors = pool.encode(texts)

    Args:
        embedder: the embedder to replicate. Its model must sit on one device (not split across
            several with ``device_map``).
        devices: one entry per worker, e.g. ``["cuda:0", "cuda:1"]``, or ``["cpu", "cpu"]`` for two
            CPU workers (which split this machine's cores between them). A device may repeat.

    Raises:
        ValueError: ``devices`` is empty, or names a device that does not parse or does not exist
            here (checked before any process starts).
        TypeError: ``embedder`` is not a [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder], or
            ``devices`` is a single device.
    """

    def __init__(self, embedder: Replicable, devices: Sequence[str | torch.device]) -> None:
        self._closed = True  # until the queues exist, so close() and __del__ of a half-built pool are no-ops
        self._close_lock = threading.Lock()
        # Structural: this module sits below the embedder, which imports it for start_pool().
        if not callable(getattr(embedder, "recipe", None)):
            raise TypeError(f"embedder must be a KVEmbedder, got {type(embedder).__name__}")
        if isinstance(devices, (str, torch.device)) or not isinstance(devices, Iterable):
            raise TypeError(f"devices must be a sequence of devices such as ['cuda:0', 'cuda:1'], got {devices!r}")
        self._devices = tuple(_check_device(i, d) for i, d in enumerate(devices))
        if not self._devices:
            raise ValueError("devices must name at least one device")
        device_map = getattr(embedder.model, "hf_device_map", None) or {}
        if len({str(d) for d in device_map.values()}) > 1:
            raise ValueError(
                f"{embedder.name} is split across devices {sorted({str(d) for d in device_map.values()})} by "
                "device_map; a pool copies the whole model to each worker's device, so it must fit on one"
            )
        self._hidden_size = embedder.dimension
        self._embedder = embedder  # the parent's checks of prompt_type use its templates
        self._jobs = itertools.count(1)
        self._encode_lock = threading.Lock()  # one job at a time: results are matched to the job in flight

        context = torch.multiprocessing.get_context("spawn")
        self._inputs = context.Queue()
        self._outputs = context.Queue()
        # The id of the newest job that is over (done, failed or interrupted); workers skip its leftovers.
        self._finished_job = context.Value("q", 0)
        cpu_workers = sum(d.type == "cpu" for d in self._devices)
        cpu_threads = max(1, _usable_cores() // cpu_workers) if cpu_workers else None
        recipe = embedder.recipe()
        self._processes: list[Any] = []
        self._closed = False
        try:
            for rank, device in enumerate(self._devices):
                process = context.Process(
                    target=_worker,
                    args=(
                        rank,
                        recipe,
                        device,
                        cpu_threads if device.type == "cpu" else None,
                        self._inputs,
                        self._outputs,
                        self._finished_job,
                    ),
                    name=f"EmbeddingPool-{rank}-{device}",
                    daemon=True,  # never outlive the parent, even if it exits without close()
                )
                process.start()
                self._processes.append(process)
        except BaseException:
            self.close()
            raise

    @property
    def devices(self) -> tuple[torch.device, ...]:
        """The device of each worker, in the order given."""
        return self._devices

    @property
    def closed(self) -> bool:
        """Whether
        [`close`][kv_embeddings_integrations.core.concurrency.process_pool.EmbeddingPool.close] has
        run (or a failure closed the pool)."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"EmbeddingPool(devices={[str(d) for d in self._devices]}, {state})"

    def __enter__(self) -> EmbeddingPool:
        self._check_open()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close(timeout=1.0)
        except Exception:
            pass  # best effort: at interpreter exit, parts of multiprocessing may already be gone

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this EmbeddingPool is closed; create a new one to encode")

    def encode(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        batch_size: int | None = None,
        normalize: bool = True,
        chunk_size: int | None = None,
        show_progress_bar: bool | None = None,
        precision: str = "float32",
    ) -> np.ndarray:
        """``embed``'s vectors (arguments as there), warning when texts were truncated: the same
        result as
        [`KVEmbedder.encode`][kv_embeddings_integrations.core.embedder.KVEmbedder.encode]."""
        single = isinstance(texts, str)
        result = self.embed(
            texts,
            prompt_type=prompt_type,
            prompt_name=prompt_name,
            precision=precision,
            batch_size=batch_size,
            normalize=normalize,
            chunk_size=chunk_size,
            show_progress_bar=show_progress_bar,
        )
        result.warn_truncated(self._embedder.max_length, stacklevel=2)
        return result.vectors[0] if single else result.vectors

    def embed(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        batch_size: int | None = None,
        normalize: bool = True,
        chunk_size: int | None = None,
        show_progress_bar: bool | None = None,
        precision: str = "float32",
    ) -> EmbedResult:
        """Embed texts across the pool's workers; same result as
        [`KVEmbedder.embed`][kv_embeddings_integrations.core.embedder.KVEmbedder.embed].

        Texts are sorted by character length and cut into chunks of similar lengths (longest
        first, so the slowest chunks do not come last); each worker embeds whole chunks.

        Args:
            texts: one string, or an iterable of strings.
            chunk_size: texts per chunk sent to a worker. ``None``: enough chunks for about 4 per
                worker, at most 1000 texts each. A multiple of ``batch_size`` keeps batches full.
            show_progress_bar: a bar over texts; ``None`` shows one only for jobs of more than 10
                chunks.
            prompt_type: the prompt; this and the other arguments as
                [`CallOptions`][kv_embeddings_integrations.core.call_options.CallOptions] documents
                them (``batch_size`` is per pass inside a worker; a quantized ``precision`` is
                applied here, in the parent, with its ranges).

        Returns:
            an [`EmbedResult`][kv_embeddings_integrations.core.results.EmbedResult] in input order:
            float32 vectors ``(len(texts), hidden_size)`` (one string is one row), token counts and
            truncation.

        Raises:
            TypeError: ``texts`` is not a string or an iterable of strings.
            ValueError: a bad ``prompt_type``, ``batch_size`` or ``chunk_size``.
            RuntimeError: the pool is closed; encoding failed in a worker (the message names its
                device and holds its traceback; the pool stays usable); or a worker died or could
                not start (the pool is then closed).
        """
        options = CallOptions.of(
            self._embedder.resolved,
            prompt_type=prompt_type,
            prompt_name=prompt_name,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            normalize=normalize,
            precision=precision,
        )
        result = self._embed(texts, options, chunk_size)
        if options.precision == "float32":
            return result
        return dataclasses.replace(result, vectors=self._embedder.quantize(result.vectors, options.precision))

    def _embed(self, texts: str | Iterable[str], options: CallOptions, chunk_size: int | None) -> EmbedResult:
        self._check_open()
        # Checked and repaired here, once: the workers' warnings would not reach the caller.
        items, _ = texts_to_embed(texts, self._embedder.config.empty_text)
        check_positive_int("chunk_size", chunk_size)
        out = np.empty((len(items), self._hidden_size), dtype=np.float32)
        counts, truncated, pieces = [0] * len(items), [False] * len(items), [1] * len(items)
        if not items:
            return EmbedResult.empty(self._hidden_size)
        size = chunk_size or min(
            max(1, math.ceil(len(items) / (CHUNKS_PER_WORKER * len(self._processes)))), MAX_CHUNK_SIZE
        )
        # Similar lengths in a chunk mean little padding in the worker's batches.
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))
        chunks = [order[start : start + size] for start in range(0, len(order), size)]
        # Float32 from the workers (quantized here, with the parent's ranges), and no bar of theirs.
        worker_options = options.replace(precision="float32", show_progress_bar=False)
        show = len(chunks) > PROGRESS_BAR_MIN_CHUNKS if options.show_progress_bar is None else options.show_progress_bar
        with self._encode_lock:
            self._check_alive()
            job = next(self._jobs)
            try:
                for chunk, indices in enumerate(chunks):
                    # str.__str__ turns a str subclass into a plain str: one that does not unpickle in
                    # a worker would be dropped by the queue's feeder thread and hang the job.
                    self._inputs.put((job, chunk, [str.__str__(items[i]) for i in indices], worker_options))
                pending = set(range(len(chunks)))
                with tqdm(total=len(items), desc="Embedding", unit="text", disable=not show) as bar:
                    while pending:
                        kind, rank, result_job, chunk, payload, caught = self._receive()
                        if kind == "startup":
                            self.close(FAILURE_CLOSE_TIMEOUT_SECONDS)
                            raise RuntimeError(
                                f"{self._worker_name(rank)} could not start, so the pool was closed: "
                                f"{_last_line(payload)}\nWorker traceback:\n{payload}"
                            )
                        if result_job != job or chunk not in pending:
                            continue  # a late result of an earlier, failed or interrupted job
                        if kind == "error":
                            raise RuntimeError(
                                f"encoding failed in {self._worker_name(rank)}: {_last_line(payload)}\n"
                                f"Worker traceback:\n{payload}"
                            )
                        for category, message in caught:
                            warnings.warn(message, category, stacklevel=2)
                        out[chunks[chunk]] = payload.vectors
                        for row, index in enumerate(chunks[chunk]):
                            counts[index] = payload.token_counts[row]
                            truncated[index] = payload.truncated[row]
                            pieces[index] = payload.pieces[row]
                        pending.discard(chunk)
                        bar.update(len(chunks[chunk]))
            finally:
                # Done, failed or interrupted: workers skip what is left of this job.
                if not self._closed:
                    self._finished_job.value = job
        return EmbedResult(out, tuple(counts), tuple(truncated), tuple(pieces))

    def _receive(self) -> tuple[Any, ...]:
        """The next message from the workers; raises (and closes the pool) if a worker died."""
        while True:
            if self._closed:
                raise RuntimeError("the EmbeddingPool was closed while encoding")
            try:
                message: tuple[Any, ...] = self._outputs.get(timeout=POLL_SECONDS)
                return message
            except queue.Empty:
                # A dead worker never answers: without this check the parent would wait forever.
                self._check_alive()

    def _worker_name(self, rank: int) -> str:
        return f"EmbeddingPool worker {rank} on {self._devices[rank]}"

    def _check_alive(self) -> None:
        for rank, process in enumerate(self._processes):
            if process.is_alive():
                continue
            code = process.exitcode
            # A startup failure is reported in the queue before the worker exits: prefer its traceback.
            try:
                while True:
                    message = self._outputs.get(timeout=0.1)
                    if message[0] == "startup" and self._processes[message[1]] is process:
                        self.close(FAILURE_CLOSE_TIMEOUT_SECONDS)
                        raise RuntimeError(
                            f"{self._worker_name(rank)} could not start, so the pool was closed: "
                            f"{_last_line(message[4])}\nWorker traceback:\n{message[4]}"
                        )
            except queue.Empty:
                pass
            how = f"exit code {code}"
            if code is not None and code < 0:
                with contextlib.suppress(ValueError):
                    how += f" (killed by {signal.Signals(-code).name})"
            self.close(FAILURE_CLOSE_TIMEOUT_SECONDS)
            raise RuntimeError(
                f"{self._worker_name(rank)} (pid {process.pid}) died with {how}, so the pool was closed "
                "(its own error output, if any, is on stderr; a SIGKILL often means it ran out of memory)"
            )

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Stop the workers and free their resources. Safe to call more than once.

        Args:
            timeout: seconds to wait for the workers to finish and exit, in all; any still running
                then is terminated.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        processes = getattr(self, "_processes", [])
        for _ in processes:
            with contextlib.suppress(Exception):
                self._inputs.put(None)
        deadline = time.monotonic() + timeout
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(1.0)
            if process.is_alive():
                process.kill()
                process.join(1.0)
        for channel in (self._inputs, self._outputs):
            # Workers are gone: whatever is still buffered has no reader, so do not wait to flush it.
            channel.cancel_join_thread()
            channel.close()
