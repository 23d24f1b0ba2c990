"""The ``sparse_doc_fn`` / ``sparse_query_fn`` of LlamaIndex's Qdrant store, from a KV embedder."""

from __future__ import annotations

from collections.abc import Callable

from ...core.embedder import KVEmbedder
from ..llama_index import KVEmbedding
from .weights import sparse_encoder

BatchSparseEncoding = tuple[list[list[int]], list[list[float]]]


def sparse_functions(
    embedding: KVEmbedding | KVEmbedder, weights: str = "model"
) -> tuple[Callable[[list[str]], BatchSparseEncoding], Callable[[list[str]], BatchSparseEncoding]]:
    """``(sparse_doc_fn, sparse_query_fn)`` for ``QdrantVectorStore(enable_hybrid=True, ...)``.

    Args:
        embedding: the dense [`KVEmbedding`][kv_embeddings_integrations.integrations.llama_index.KVEmbedding] (its
            loaded model and options are used) or a core
            [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder].
        weights: ``"model"`` (the model's sparse vectors; give the store Qdrant's IDF modifier) or
            ``"lexical"`` (the embedder's lexical channel unsketched, BM25 over its tokens for the
            retrieval default; queries carry the IDF).

    Documents get the document prompt, queries the query prompt. LlamaIndex fuses the two
    searches by relative score fusion (``alpha``: the dense share). The store calls the dense and
    sparse encoders apart, so a text costs two forward passes.

    Example:
        .. code-block:: python

            from llama_index.vector_stores.qdrant import QdrantVectorStore from
            kv_embeddings_integrations import KVEmbedding from
            kv_embeddings_integrations.integrations.hybrid.llama_index import sparse_functions

            embed_model = KVEmbedding() doc_fn, query_fn = sparse_functions(embed_model) store =
            QdrantVectorStore("docs", client=client, enable_hybrid=True,
                                      sparse_doc_fn=doc_fn, sparse_query_fn=query_fn)
    """
    if isinstance(embedding, KVEmbedding):
        embedder = embedding.client
    elif isinstance(embedding, KVEmbedder):
        embedder = embedding
    else:
        raise TypeError(f"embedding must be a KVEmbedding or a KVEmbedder, got {type(embedding).__name__}")
    encode_rows = sparse_encoder(embedder, weights)

    def encoder(prompt_type: str) -> Callable[[list[str]], BatchSparseEncoding]:
        def encode(texts: list[str]) -> BatchSparseEncoding:
            if isinstance(texts, str):
                raise TypeError("expected a list of strings, got one str")
            vectors = encode_rows(list(texts), prompt_type=prompt_type)
            return [i.tolist() for i in vectors.indices], [v.tolist() for v in vectors.values]

        return encode

    return encoder("document"), encoder("query")
