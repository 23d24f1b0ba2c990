"""Hybrid search with the model's own sparse lexical vectors, in the stores RAG frameworks use.

- :mod:`.langchain`: :class:`~.langchain.KVSparseEmbeddings`, langchain-qdrant's ``SparseEmbeddings``,
  for ``QdrantVectorStore(retrieval_mode=RetrievalMode.HYBRID)``.
- :mod:`.llama_index`: :func:`~.llama_index.sparse_functions`, the ``sparse_doc_fn`` /
  ``sparse_query_fn`` of LlamaIndex's ``QdrantVectorStore(enable_hybrid=True)``.

The vectors are :meth:`KVEmbedder.encode_sparse <kv_embeddings_integrations.KVEmbedder.encode_sparse>`'s;
exact in-memory scoring and fusion are in :mod:`kv_embeddings_integrations.core.outputs.fusion`. Each module
imports only its own framework (the ``hybrid`` extra installs both stores' clients).
"""
