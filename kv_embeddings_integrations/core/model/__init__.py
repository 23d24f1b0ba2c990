"""Getting a model: loading by name, directory or options
([`loading`][kv_embeddings_integrations.core.model.loading]), and the bundled models
([`bundled`][kv_embeddings_integrations.core.model.bundled])."""
