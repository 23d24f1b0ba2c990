"""Concurrent requests to one embedder: queued, coalesced into shared forward passes, awaitable.

The embedder holds a
[`RequestQueue`][kv_embeddings_integrations.core.concurrency.requests.RequestQueue] over its own
embedding function (as infinity's engine holds its batch handler): each request goes to a
[`RequestCoalescer`][kv_embeddings_integrations.core.concurrency.coalescing.RequestCoalescer], whose
one worker thread embeds whatever arrived while the previous pass ran in one call.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from ..call_options import CallOptions
from ..results import EmbedResult
from .coalescing import RequestCoalescer

# Most texts embedded in one coalesced call of concurrent requests (bounds one call's latency).
COALESCE_MAX_TEXTS = 512

S = TypeVar("S")
T = TypeVar("T")


def then(source: Future[S], transform: Callable[[S], T]) -> Future[T]:
    """A future of ``transform`` of ``source``'s result (or its exception); cancelling it withdraws
    ``source`` if that has not started."""
    target: Future[T] = Future()
    # Weakly: a strong reference back would make a cycle that keeps ``transform``'s closure (and
    # the embedder it names) alive after the request is done, until a garbage-collection pass.
    weak = weakref.ref(source)
    target.add_done_callback(lambda f: f.cancelled() and (s := weak()) is not None and s.cancel())

    def chain(done: Future[S]) -> None:
        if done.cancelled():
            target.cancel()
        elif not target.set_running_or_notify_cancel():
            return  # the caller gave up (e.g. its asyncio task was cancelled)
        elif (error := done.exception()) is not None:
            target.set_exception(error)
        else:
            try:
                value = transform(done.result())
            except BaseException as failure:  # e.g. a warning turned into an error: never leave it pending
                target.set_exception(failure)
            else:
                target.set_result(value)

    source.add_done_callback(chain)
    return target


class RequestQueue:
    """Requests embedded together with others that arrive while a forward pass runs.

    Its state belongs to one process (a queue, a lock, a worker thread started on demand): an
    embedder sent to another process builds a new one.

    Args:
        embed: embeds a list of texts with one call's options (float32, no progress bar); a
            bound method is held weakly, so the queue never keeps its embedder (and model) alive.

    Attributes:
        listeners: called with the number of texts of each coalesced pass once it ran (a server's metrics).
        start_listeners: called just before a pass runs (a blocking one holds the pass: how tests
            order events).
    """

    def __init__(self, embed: Callable[[list[str], CallOptions], EmbedResult]) -> None:
        self._embed = weakref.WeakMethod(embed) if inspect.ismethod(embed) else (lambda: embed)
        self._coalescer: RequestCoalescer | None = None
        self._lock = threading.Lock()
        self.listeners: list[Callable[[int], None]] = []
        self.start_listeners: list[Callable[[int], None]] = []

    @property
    def batch_sizes(self) -> list[int]:
        """Texts per coalesced pass, latest last (for benchmarks and tests)."""
        return self._coalescer.batch_sizes if self._coalescer is not None else []

    def submit(self, items: list[str], options: CallOptions) -> Future[EmbedResult]:
        """Queue checked texts; requests with equal ``options`` share passes (none texts: done now)."""
        if not items:
            done: Future[EmbedResult] = Future()
            done.set_result(self._function()(items, options))
            return done
        with self._lock:
            if self._coalescer is None:
                self._coalescer = RequestCoalescer(
                    self._run,
                    max_texts=COALESCE_MAX_TEXTS,
                    listeners=self.listeners,
                    start_listeners=self.start_listeners,
                )
            return self._coalescer.submit(items, options)

    def _run(self, texts: list[str], options: object) -> EmbedResult:
        assert isinstance(options, CallOptions)
        return self._function()(texts, options)

    def _function(self) -> Callable[[list[str], CallOptions], EmbedResult]:
        embed = self._embed()
        if embed is None:
            raise RuntimeError("the embedder of this request queue was garbage collected")
        return embed
