"""Hybrid search with the model's own sparse lexical vectors, in the stores RAG frameworks use.

- ``langchain``: ``langchain.KVSparseEmbeddings``, langchain-qdrant's ``SparseEmbeddings``,
  for ``QdrantVectorStore(retrieval_mode=RetrievalMode.HYBRID)``.
- ``llama_index``: ``llama_index.sparse_functions``, the ``sparse_doc_fn`` /
  ``sparse_query_fn`` of LlamaIndex's ``QdrantVectorStore(enable_hybrid=True)``.

The vectors are
[`KVEmbedder.encode_sparse`][kv_embeddings_integrations.core.embedder.KVEmbedder.encode_sparse]'s;
exact in-memory scoring and fusion are in
[`kv_embeddings_integrations.core.outputs.fusion`][kv_embeddings_integrations.core.outputs.fusion].
Each module imports only its own framework (the ``hybrid`` extra installs both stores' clients).
"""
