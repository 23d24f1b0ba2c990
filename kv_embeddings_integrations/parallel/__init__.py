"""Front ends that spread one job over many replicas: Ray Data (``ray_data``, the ``ray`` extra)
and resumable chunked runs (``checkpoint``); the data-parallel process pool is the core's
([`EmbeddingPool`][kv_embeddings_integrations.core.concurrency.process_pool.EmbeddingPool]). Each
builds on the core's public API only.
"""
