"""Running the app: uvicorn, one worker, ready only once the model is loaded and layers chosen.

SIGTERM / SIGINT: readiness turns 503 at once, the listening socket closes (new connections are
refused), requests in flight finish (up to ``graceful_timeout`` seconds), then the process exits.
"""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig, frame) -> None:
        self._app.state.ready = False  # probes see the shutdown before the socket closes
        super().handle_exit(sig, frame)


def run_server(
    app: FastAPI, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info", graceful_timeout: float = 30
) -> None:
    """Serve ``app`` until SIGTERM / SIGINT (see the module docstring)."""
    logger = logging.getLogger("kv_embeddings_integrations.serving")
    logger.setLevel(log_level.upper())
    if not logger.handlers:  # uvicorn configures only its own loggers
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # the app logs one line per request itself, with texts and tokens
        # uvicorn annotates it int, and passes it to asyncio.timeout, which takes any float.
        timeout_graceful_shutdown=graceful_timeout,  # type: ignore[arg-type]
        workers=1,  # one process holds the model; concurrency comes from coalescing
    )
    _Server(config, app).run()
