"""Texts to pooled vectors: checked inputs, prompted tokens, length-sorted (or packed) batches, the
decoder pass as the method runs it, and pooling;
[`BatchRunner`][kv_embeddings_integrations.core.running.runner.BatchRunner] runs them,
[`PromptedModel`][kv_embeddings_integrations.core.running.prompted_model.PromptedModel]
holds them for the facade."""
