"""The mechanisms of KV-Embedding (arXiv 2601.01046) as they run in the forward pass.

- [`rerouting`][kv_embeddings_integrations.core.method.rerouting]: the final token's key/value
  states as a prefix inside selected layers' attention (the plan and the attention wrapper).
- [`kernels`][kv_embeddings_integrations.core.method.kernels]: the attention kernels re-routing
  runs, behind one swappable table.
- [`token_prepending`][kv_embeddings_integrations.core.method.token_prepending]: Token Prepending
  (Fu et al. 2024), the earlier training-free method, as a baseline.

What is fitted once per model (the layers, the post-processing, the int8 ranges) is in
[`fitting`][kv_embeddings_integrations.core.fitting].
"""
