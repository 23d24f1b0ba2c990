"""Concurrent requests to one embedder: queued, coalesced into shared forward passes, awaitable.

:class:`ConcurrentRequests` gives :class:`~kv_embeddings_integrations.KVEmbedder` its
``submit_embed`` / ``submit`` / ``aembed`` / ``aencode``: each request goes to a
:class:`~kv_embeddings_integrations.core.concurrency.coalescing.RequestCoalescer`, whose one worker thread
embeds whatever arrived while the previous pass ran in one call of the embedder's ``embed``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from ..config import EmbedderConfig
from ..outputs.quantization import check_output
from ..outputs.sparse import SparseVectors
from ..prompts import requested_prompt
from ..results import EmbedResult
from ..running.inputs import texts_to_embed
from .coalescing import RequestCoalescer

# Most texts embedded in one coalesced call of concurrent requests (bounds one call's latency).
COALESCE_MAX_TEXTS = 512

T = TypeVar("T")


def _chain(source: Future[EmbedResult], target: Future[T], transform: Callable[[EmbedResult], T]) -> None:
    """Complete ``target`` with ``transform`` of ``source``'s result, or its exception."""
    if source.cancelled():
        target.cancel()
    elif not target.set_running_or_notify_cancel():
        return  # the caller gave up (e.g. its asyncio task was cancelled)
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        try:
            value = transform(source.result())
        except BaseException as failure:  # e.g. a warning turned into an error: never leave it pending
            target.set_exception(failure)
        else:
            target.set_result(value)


class ConcurrentRequests:
    """The concurrent-request side of an embedder (a mixin of :class:`~kv_embeddings_integrations.KVEmbedder`).

    Its state belongs to one process (a queue, a lock, a worker thread): an embedder sent to another
    process (pickled) starts with none, through :meth:`_init_requests`.
    """

    config: EmbedderConfig
    # Called with the number of texts of each coalesced forward pass once it ran (a server's
    # metrics), and just before it runs (a blocking one holds the pass: how tests order events).
    batch_listeners: list[Callable[[int], None]]
    batch_start_listeners: list[Callable[[int], None]]

    if TYPE_CHECKING:  # what the embedder provides

        @property
        def dimension(self) -> int: ...
        @property
        def vocab_size(self) -> int: ...
        def template(self, prompt_type: str = "document") -> str: ...
        def _lm_head(self) -> object: ...
        def quantize(self, vectors: np.ndarray, precision: str) -> np.ndarray: ...
        def _warn_truncated(self, result: EmbedResult, stacklevel: int) -> None: ...
        def embed(
            self,
            texts: str | Iterable[str],
            *,
            prompt_type: str = "document",
            batch_size: int | None = None,
            show_progress_bar: bool | None = None,
            normalize: bool = True,
            postprocess: bool = True,
            sparse: bool = False,
        ) -> EmbedResult: ...

    def _init_requests(self) -> None:
        self._coalescer: RequestCoalescer | None = None
        self._coalescer_lock = threading.Lock()
        self.batch_listeners = []
        self.batch_start_listeners = []

    def submit_embed(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        normalize: bool = True,
        sparse: bool = False,
        precision: str = "float32",
    ) -> Future[EmbedResult]:
        """Queue texts to be embedded together with other concurrent requests.

        Requests submitted from many threads (or tasks) while a forward pass runs are coalesced
        into the next one, instead of each running alone. Arguments as in :meth:`embed`; a
        quantized ``precision`` is applied to this request's vectors when the pass is done.

        Returns:
            a ``concurrent.futures.Future`` of this request's own
            :class:`~kv_embeddings_integrations.core.results.EmbedResult` (its texts' vectors, token
            counts and truncation, whatever else shared the forward pass).
        """
        # Bad input fails here, in the caller, not in the worker.
        prompt_type = requested_prompt(prompt_type, prompt_name)
        precision = check_output(precision, normalize, True)
        items, _ = texts_to_embed(texts, self.config.empty_text)
        self.template(prompt_type)
        if sparse:
            self._lm_head()
        if not items:
            done: Future[EmbedResult] = Future()
            empty = EmbedResult.empty(self.dimension)
            done.set_result(
                dataclasses.replace(empty, sparse=SparseVectors.empty(self.vocab_size)) if sparse else empty
            )
            return self._in_precision(done, precision)
        with self._coalescer_lock:
            if self._coalescer is None:
                self._coalescer = RequestCoalescer(
                    self._embed_coalesced,
                    max_texts=COALESCE_MAX_TEXTS,
                    listeners=self.batch_listeners,
                    start_listeners=self.batch_start_listeners,
                )
            future = self._coalescer.submit(items, prompt_type, normalize, sparse)
        return self._in_precision(future, precision)

    def _in_precision(self, future: Future[EmbedResult], precision: str) -> Future[EmbedResult]:
        if precision == "float32":
            return future
        quantized: Future[EmbedResult] = Future()
        quantized.add_done_callback(lambda f: f.cancelled() and future.cancel())

        def transform(result: EmbedResult) -> EmbedResult:
            return dataclasses.replace(result, vectors=self.quantize(result.vectors, precision))

        future.add_done_callback(lambda f: _chain(f, quantized, transform))
        return quantized

    def submit(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        normalize: bool = True,
        precision: str = "float32",
    ) -> Future[np.ndarray]:
        """:meth:`submit_embed`, for the array :meth:`encode` would return.

        Returns:
            a ``concurrent.futures.Future`` of what :meth:`encode` would return (truncation is
            warned when the result arrives).
        """
        single = isinstance(texts, str)
        future = self.submit_embed(
            texts, prompt_type=prompt_type, prompt_name=prompt_name, normalize=normalize, precision=precision
        )
        vectors: Future[np.ndarray] = Future()
        # A cancelled caller withdraws its request if it has not started yet.
        vectors.add_done_callback(lambda f: f.cancelled() and future.cancel())

        def transform(result: EmbedResult) -> np.ndarray:
            self._warn_truncated(result, stacklevel=2)
            return result.vectors[0] if single else result.vectors

        future.add_done_callback(lambda f: _chain(f, vectors, transform))
        return vectors

    async def aembed(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        normalize: bool = True,
        sparse: bool = False,
        precision: str = "float32",
    ) -> EmbedResult:
        """:meth:`embed` for asyncio: awaits a coalesced request (see :meth:`submit_embed`) without
        blocking the event loop; a cancelled task withdraws its request if it has not started."""
        future = self.submit_embed(
            texts, prompt_type=prompt_type, prompt_name=prompt_name, normalize=normalize, sparse=sparse,
            precision=precision,
        )  # fmt: skip
        return await asyncio.wrap_future(future)

    async def aencode(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        normalize: bool = True,
        precision: str = "float32",
    ) -> np.ndarray:
        """:meth:`encode` for asyncio: awaits a coalesced request (see :meth:`submit_embed`) without
        blocking the event loop, and warns in the caller about its own truncated texts."""
        single = isinstance(texts, str)
        result = await self.aembed(
            texts, prompt_type=prompt_type, prompt_name=prompt_name, normalize=normalize, precision=precision
        )
        self._warn_truncated(result, stacklevel=3)
        return result.vectors[0] if single else result.vectors

    def _embed_coalesced(
        self, texts: list[str], prompt_type: str, normalize: bool, sparse: bool = False
    ) -> EmbedResult:
        return self.embed(texts, prompt_type=prompt_type, normalize=normalize, show_progress_bar=False, sparse=sparse)
