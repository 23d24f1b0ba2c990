"""langchain-qdrant's ``SparseEmbeddings`` from the same model as the dense
[`KVEmbeddings`][kv_embeddings_integrations.integrations.langchain.KVEmbeddings]."""

from __future__ import annotations

from ...core.embedder import KVEmbedder
from ...core.extras import require
from ..langchain import KVEmbeddings

require("hybrid", "KVSparseEmbeddings (langchain-qdrant hybrid search)", ("langchain_qdrant",))

from langchain_qdrant import SparseEmbeddings, SparseVector  # noqa: E402

from .weights import sparse_encoder  # noqa: E402


class KVSparseEmbeddings(SparseEmbeddings):
    """Sparse lexical vectors (PromptReps-style) of a KV embedder, for Qdrant hybrid search.

    Args:
        embeddings: the dense [`KVEmbeddings`][kv_embeddings_integrations.integrations.langchain.KVEmbeddings] (its
            loaded model, prompts and layers are used) or a core
            [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder].
        weights: ``"model"``, the model's own sparse vectors (give the collection Qdrant's IDF
            modifier), or ``"lexical"``, the embedder's lexical channel unsketched
            ([`encode_lexical`][kv_embeddings_integrations.core.embedder.KVEmbedder.encode_lexical]:
            BM25 over the model's tokens for the retrieval default; queries carry the IDF, so no
            modifier).

    Queries get the query prompt, documents the document prompt, as in the dense adapter. The
    store calls the dense and the sparse model apart, so each text costs two forward passes here;
    ``KVEmbedder.embed(texts, sparse=True)`` gives both from one.

    Example:
        .. code-block:: python

            from langchain_qdrant import QdrantVectorStore, RetrievalMode from
            kv_embeddings_integrations import KVEmbeddings from
            kv_embeddings_integrations.integrations.hybrid.langchain import KVSparseEmbeddings

            dense = KVEmbeddings() store = QdrantVectorStore.from_texts(
                texts, embedding=dense, sparse_embedding=KVSparseEmbeddings(dense),
                retrieval_mode=RetrievalMode.HYBRID, path="./qdrant", collection_name="docs",
            )
    """

    def __init__(self, embeddings: KVEmbeddings | KVEmbedder, weights: str = "model") -> None:
        if isinstance(embeddings, KVEmbeddings):
            self.embedder = embeddings.client
        elif isinstance(embeddings, KVEmbedder):
            self.embedder = embeddings
        else:
            raise TypeError(f"embeddings must be a KVEmbeddings or a KVEmbedder, got {type(embeddings).__name__}")
        self.weights = weights
        self._encode_rows = sparse_encoder(self.embedder, weights)

    def _encode(self, texts: list[str], prompt_type: str) -> list[SparseVector]:
        vectors = self._encode_rows(texts, prompt_type=prompt_type)
        return [
            SparseVector(indices=ids.tolist(), values=values.tolist())
            for ids, values in zip(vectors.indices, vectors.values, strict=True)
        ]

    def embed_documents(self, texts: list[str]) -> list[SparseVector]:
        """Sparse vectors of documents (document prompt)."""
        if isinstance(texts, str):
            raise TypeError("embed_documents expects a list of strings, got one str; use embed_query for one text")
        return self._encode(list(texts), "document")

    def embed_query(self, text: str) -> SparseVector:
        """The sparse vector of a query (query prompt)."""
        if not isinstance(text, str):
            raise TypeError(f"embed_query expects a str, got {type(text).__name__}")
        return self._encode([text], "query")[0]
