"""Prometheus metrics of one server (its own registry, so several apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    """Requests by route and status, texts, tokens, sizes of requests and of coalesced forward
    passes, requests admitted (running or waiting), and request latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kv_embed_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.texts = Counter("kv_embed_texts", "texts embedded", registry=self.registry)
        self.tokens = Counter("kv_embed_tokens", "tokens embedded (prompt included)", registry=self.registry)
        self.request_texts = Histogram(
            "kv_embed_request_texts", "texts per request", buckets=_SIZES, registry=self.registry
        )
        self.batch_texts = Histogram(
            "kv_embed_batch_texts", "texts per coalesced forward pass", buckets=_SIZES, registry=self.registry
        )
        self.queue_depth = Gauge(
            "kv_embed_queue_depth", "requests admitted and not finished (running or waiting)", registry=self.registry
        )
        self.latency = Histogram(
            "kv_embed_request_seconds", "request latency by route", ["route"], buckets=_SECONDS, registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
