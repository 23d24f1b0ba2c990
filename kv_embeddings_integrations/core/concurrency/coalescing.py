"""Coalescing of concurrent embedding requests into shared forward passes.

A web server's many simultaneous single-text requests (``await aembed_query(...)`` from 64
handlers) would each run a forward pass of one row, one after another. Here every request is
queued and one worker thread drains the queue: whatever arrived while the previous pass ran
is embedded together, so the requests share batches. Requests of different kinds (another
prompt, normalisation...: the embedder's call options) go to separate calls.

The worker thread starts on demand and exits after a short idle spell, so an idle embedder
holds no thread and can be garbage collected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..results import EmbedResult

_KEPT_SIZES = 10_000

# Embeds (texts, kind): one result row per text, sliced back per request.
EncodeFn = Callable[[list[str], Hashable], EmbedResult]


@dataclass
class _Request:
    texts: list[str]
    kind: Hashable
    future: Future[EmbedResult] = field(default_factory=Future)


class RequestCoalescer:
    """Queue of embedding requests served by one worker thread in shared batches.

    Args:
        encode: the function that embeds a list of texts of one kind (how to embed them: the
            embedder's call options), returning an
            [`EmbedResult`][kv_embeddings_integrations.core.results.EmbedResult] (anything
            sliceable by rows would do).
        max_texts: most texts embedded in one coalesced call (bounds one pass's latency).
        max_wait: seconds the worker waits after the first request of a batch for others to
            arrive (0 takes only what is already queued).
        idle_timeout: seconds without requests after which the worker thread exits.
        listeners: functions called (on the worker thread) with the number of texts of each
            coalesced call once it has run; the list is used as given, so callers may add to it later.
        start_listeners: functions called (on the worker thread) with the number of texts of each
            coalesced call just before it runs, once its requests can no longer be withdrawn; a
            listener that blocks holds the call (what tests use to queue requests behind a pass).
            Used as given, like ``listeners``.
    """

    def __init__(
        self,
        encode: EncodeFn,
        *,
        max_texts: int = 512,
        max_wait: float = 0.002,
        idle_timeout: float = 1.0,
        listeners: list[Callable[[int], None]] | None = None,
        start_listeners: list[Callable[[int], None]] | None = None,
    ) -> None:
        self._encode = encode
        self.max_texts = max_texts
        self.max_wait = max_wait
        self.idle_timeout = idle_timeout
        self._pending: list[_Request] = []
        self._condition = threading.Condition()
        self._worker: threading.Thread | None = None
        self.listeners = listeners if listeners is not None else []
        self.start_listeners = start_listeners if start_listeners is not None else []
        # Sizes (in texts) of the latest coalesced calls (at most _KEPT_SIZES); for benchmarks and tests.
        self.batch_sizes: list[int] = []

    def submit(self, texts: list[str], kind: Hashable = None) -> Future[EmbedResult]:
        """Queue ``texts``, to be embedded with other requests of the same ``kind``; the returned
        future gives their own rows of the result, whatever else shared the forward pass."""
        request = _Request(list(texts), kind)
        with self._condition:
            self._pending.append(request)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="kv-embed-coalescer", daemon=True)
                self._worker.start()
            self._condition.notify()
        return request.future

    def _take(self) -> list[_Request] | None:
        """The next group (one kind of request, up to ``max_texts`` texts), or None when idle too long."""
        with self._condition:
            deadline = time.monotonic() + self.idle_timeout
            while not self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._worker = None
                    return None
                self._condition.wait(left)
        if self.max_wait > 0:
            time.sleep(self.max_wait)
        with self._condition:
            # A withdrawn (cancelled) request leaves the queue here, not when a pass reaches it.
            self._pending = [r for r in self._pending if not r.future.cancelled()]
            if not self._pending:
                return []
            kind = self._pending[0].kind
            group: list[_Request] = []
            rest: list[_Request] = []
            count = 0
            for request in self._pending:
                fits = not group or count + len(request.texts) <= self.max_texts
                if request.kind == kind and fits:
                    group.append(request)
                    count += len(request.texts)
                else:
                    rest.append(request)
            self._pending = rest
        return group

    def _run(self) -> None:
        group: list[_Request] | None = []
        try:
            while (group := self._take()) is not None:
                self._serve(group)
                # Served: drop them before waiting for more, or an idle worker would keep the last
                # requests' callbacks (and what they name: the embedder, its model) alive.
                group = []
        except BaseException as error:
            # Never leave futures waiting on a dead worker: fail what it held and what is queued,
            # and let the next request start a new worker.
            with self._condition:
                stranded, self._pending, self._worker = [*(group or []), *self._pending], [], None
            for request in stranded:
                if not request.future.done():
                    request.future.set_exception(RuntimeError(f"embedding worker failed: {error!r}"))
            raise

    def _serve(self, group: list[_Request]) -> None:
        live = [r for r in group if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        texts = [text for request in live for text in request.texts]
        _notify(self.start_listeners, len(texts))
        try:
            result = self._encode(texts, live[0].kind)
        except Exception as error:
            if len(live) == 1:
                live[0].future.set_exception(error)
                return
            # One failing request must not fail the others sharing its batch: serve each alone.
            for request in live:
                self._serve_alone(request)
            return
        self._record(len(texts))
        start = 0
        for request in live:
            part = result[start : start + len(request.texts)]
            start += len(request.texts)
            request.future.set_result(part)

    def _serve_alone(self, request: _Request) -> None:
        _notify(self.start_listeners, len(request.texts))
        try:
            result = self._encode(request.texts, request.kind)
        except Exception as error:
            request.future.set_exception(error)
            return
        self._record(len(request.texts))
        request.future.set_result(result)

    def _record(self, size: int) -> None:
        self.batch_sizes.append(size)
        if len(self.batch_sizes) > 2 * _KEPT_SIZES:  # a long-running server must not grow it forever
            del self.batch_sizes[:_KEPT_SIZES]
        _notify(self.listeners, size)


def _notify(listeners: list[Callable[[int], None]], size: int) -> None:
    for listener in list(listeners):
        try:
            listener(size)
        except Exception:  # a broken metric must not fail the requests
            pass
