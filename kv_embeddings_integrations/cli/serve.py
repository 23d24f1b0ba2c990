"""``kv-embed serve``: embeddings over HTTP, OpenAI's ``/v1/embeddings`` and TEI's ``/embed`` (the
serve extra, imported only when the command runs). Every option can also come from a
``$KV_EMBED_<OPTION>`` variable, as containers and orchestrators configure servers."""

from __future__ import annotations

import argparse
import sys

from pydantic import SecretStr

from ..core.config import EmbedderConfig
from ..core.extras import MissingExtraError, require
from ..serving.settings import ServeSettings
from .errors import CLIError
from .options import ENV_PREFIX, add_field_option, add_model_options, environment_defaults, load_embedder

NAME = "serve"
HELP = "serve embeddings over HTTP: OpenAI's /v1/embeddings and TEI's /embed (the serve extra)"


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``kv-embed serve``, TEI's names as aliases, defaults from ``$KV_EMBED_*``."""
    add_model_options(parser)
    add_field_option(parser, EmbedderConfig, "max_tokens_per_batch", "--max-batch-tokens")  # TEI's name
    add_field_option(parser, EmbedderConfig, "batch_size")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="the model name clients send and /v1/models lists (default: --model); several, comma-separated: the "
        "first is listed, every one is accepted (as is --model)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="key clients must send as 'Authorization: Bearer KEY' (default: the KV_EMBED_API_KEY environment "
        "variable, which keeps it out of ps; neither: no key)",
    )
    add_field_option(parser, ServeSettings, "max_client_batch_size")
    add_field_option(parser, ServeSettings, "max_request_bytes", "--payload-limit")  # TEI's name
    add_field_option(parser, ServeSettings, "max_concurrent_requests")
    parser.add_argument(
        "--auto-truncate",
        type=_boolean,
        nargs="?",
        const=True,
        default=True,
        help="cut over-long inputs when a request does not say (TEI's flag and default: on); "
        "'--auto-truncate false': refuse them (422) unless a request sends truncate=true",
    )
    parser.add_argument(
        "--graceful-timeout", type=float, default=30.0, help="seconds in-flight requests get after SIGTERM (default 30)"
    )
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    # Containers and orchestrators configure servers by environment, as TEI's and infinity's.
    environment_defaults(parser, ENV_PREFIX)


def _boolean(value: str) -> bool:
    # TEI's clap bool: true / false (and the usual spellings of them).
    words = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
    if value.strip().lower() not in words:
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return words[value.strip().lower()]


def run(args: argparse.Namespace) -> None:
    """Load the model, then serve it until stopped."""
    import os

    try:
        require("serve", "kv-embed serve")
    except MissingExtraError as e:
        raise CLIError(str(e)) from None
    from ..serving import API_KEY_ENV, EmbeddingEngine, create_app
    from ..serving.server import run_server
    from ..serving.token_ids import cl100k

    names = [n.strip() for n in (args.served_model_name or args.model).split(",") if n.strip()] or [args.model]
    name, aliases = names[0], tuple(dict.fromkeys(n for n in (*names[1:], args.model) if n != names[0]))
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        settings = ServeSettings(
            served_model_name=name,
            aliases=aliases,
            api_key=SecretStr(api_key) if api_key is not None else None,
            max_client_batch_size=args.max_client_batch_size,
            max_request_bytes=args.max_request_bytes,
            max_concurrent_requests=args.max_concurrent_requests,
            auto_truncate=args.auto_truncate,
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    embedder = load_embedder(args)  # loads the model and chooses the layers before the port opens
    print(
        f"kv-embed serve: {name} ({embedder.num_layers} layers, re-routing {embedder.layers}, "
        f"{embedder.dimension} dimensions) on http://{args.host}:{args.port}",
        file=sys.stderr,
        flush=True,
    )
    cl100k()  # token-id inputs: load the encoding now, not in the first request
    app = create_app(EmbeddingEngine(embedder, settings))
    run_server(app, host=args.host, port=args.port, log_level=args.log_level, graceful_timeout=args.graceful_timeout)
