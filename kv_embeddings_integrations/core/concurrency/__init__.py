"""Many calls at once: concurrent requests coalesced into shared passes
([`requests`][kv_embeddings_integrations.core.concurrency.requests],
[`coalescing`][kv_embeddings_integrations.core.concurrency.coalescing]), and one replica per device
in worker processes ([`process_pool`][kv_embeddings_integrations.core.concurrency.process_pool],
rebuilt from a [`recipe`][kv_embeddings_integrations.core.concurrency.recipe])."""
