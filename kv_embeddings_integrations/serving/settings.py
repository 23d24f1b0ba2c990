"""What the HTTP server accepts: names, key, and the limits that keep it answering under load."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

API_KEY_ENV = "KV_EMBED_API_KEY"


class ServeSettings(BaseModel):
    """Settings of [`create_app`][kv_embeddings_integrations.serving.app.create_app].

    Attributes:
        served_model_name: the ``model`` clients name in requests and ``/v1/models`` lists.
        aliases: other names accepted as ``model`` (e.g. the model's path or bundled alias).
        api_key: the key clients must send as ``Authorization: Bearer <key>`` (None: no key).
        max_client_batch_size: most inputs in one request (more: 413).
        max_request_bytes: largest request body (more: 413).
        max_concurrent_requests: most requests admitted at once, running or waiting for a
            forward pass (more: 429 with ``Retry-After``), so a burst queues no unbounded work.
        retry_after: seconds a client told 429 should wait (``Retry-After``).
        auto_truncate: cut over-long inputs when a request does not say (TEI's ``--auto-truncate``,
            on by default there too); off, such an input is a 422 unless the request sends
            ``"truncate": true``. OpenAI's route has no field for it and follows this.
    """

    model_config = ConfigDict(frozen=True)

    served_model_name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    api_key: SecretStr | None = None
    max_client_batch_size: int = Field(
        default=2048,
        ge=1,
        description="most inputs per request, more: 413 (OpenAI's limit; LangChain sends up to 1000)",
    )
    max_request_bytes: int = Field(default=2_000_000, ge=1, description="largest request body in bytes, more: 413")
    max_concurrent_requests: int = Field(
        default=512, ge=1, description="most requests running or waiting at once; more get 429 with Retry-After"
    )
    retry_after: int = Field(default=1, ge=0)
    auto_truncate: bool = True

    def accepts_model(self, name: str) -> bool:
        return name == self.served_model_name or name in self.aliases
