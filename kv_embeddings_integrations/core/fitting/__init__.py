"""What is fitted once per model and configuration, then cached (and shipped for the bundled
models): the re-routed layers, the post-processing and the int8 ranges, each through
[`cached_or_computed`][kv_embeddings_integrations.core.cache.cached_or_computed], on a
[`FitSubject`][kv_embeddings_integrations.core.identity.FitSubject]."""
