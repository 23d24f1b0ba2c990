"""The serving engine, apart from HTTP: admission, inputs to texts, truncation policy, embedding.

One :class:`EmbeddingEngine` wraps one :class:`~kv_embeddings_integrations.KVEmbedder`. Every
request goes through the embedder's coalescing (``aembed``), so concurrent requests share forward
passes and the event loop never waits on one. Admission is bounded: past
``max_concurrent_requests`` requests running or waiting, new ones get 429 at once instead of
queueing without limit.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from ..core.embedder import KVEmbedder
from ..core.inputs import repair_surrogates
from ..core.loading import dtype_name
from ..core.prompts import render
from ..core.results import EmbedResult
from ..core.sparse import SparseVectors, lm_head_weight
from ..version import __version__
from .errors import APIError
from .metrics import ServerMetrics
from .settings import ServeSettings
from .token_ids import cl100k

TOKEN_IDS_HELP = (
    "this server decodes token ids with tiktoken's cl100k_base, which is not available here; send text "
    "instead (LangChain OpenAIEmbeddings: check_embedding_ctx_length=False; LlamaIndex / other clients: "
    "their option that disables tiktoken, e.g. tiktoken_enabled=False)"
)


@dataclass(frozen=True)
class Embedded:
    """One request's result: its vectors (as asked), their token counts, and how many were cut
    (and its sparse vectors, when asked)."""

    vectors: np.ndarray
    token_counts: tuple[int, ...]
    num_truncated: int
    sparse: SparseVectors | None = None

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


class EmbeddingEngine:
    """Turns validated requests into vectors with one embedder.

    Args:
        embedder: the embedder every request uses (its prompts, layers, post-processing).
        settings: limits and names (:class:`ServeSettings`).
        metrics: where texts, tokens, batch sizes and admitted requests are counted.
    """

    def __init__(self, embedder: KVEmbedder, settings: ServeSettings, metrics: ServerMetrics | None = None) -> None:
        self.embedder = embedder
        self.settings = settings
        self.metrics = metrics or ServerMetrics()
        self.admitted = 0
        embedder.batch_listeners.append(self.metrics.batch_texts.observe)

    # -- inputs ----------------------------------------------------------------------------------

    def texts_of(self, inputs: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]], field: str) -> list[str]:
        """The texts of a request's inputs (token ids decoded), each checked; ``field`` names the
        request field in messages."""
        if isinstance(inputs, str):
            items: list = [inputs]
        elif inputs and not isinstance(inputs[0], (str, list)):
            items = [list(inputs)]  # one array of token ids is one input
        else:
            items = list(inputs)
        if len(items) > self.settings.max_client_batch_size:
            raise APIError(
                413,
                f"too many inputs: {len(items)} in one request; this server takes at most "
                f"{self.settings.max_client_batch_size} (--max-client-batch-size). Split the request.",
                param=field,
                code="too_many_inputs",
            )
        texts = [
            self._decode(item, index, field) if isinstance(item, list) else item for index, item in enumerate(items)
        ]
        blank_is_error = self.embedder.config.empty_text == "error"
        for index, text in enumerate(texts):
            where = f"{field}[{index}]" if not isinstance(inputs, str) else field
            if not text:
                raise APIError(400, f"{where} is empty; every input must be a non-empty string", param=field)
            if blank_is_error and not text.strip():
                raise APIError(400, f"{where} is whitespace only (the server runs --empty-text error)", param=field)
        # Unpaired surrogates (JSON can carry them; UTF-8 cannot): U+FFFD, as the core does.
        return [repair_surrogates(text) for text in texts]

    def _decode(self, ids: list[int], index: int, field: str) -> str:
        encoding = cl100k()
        if encoding is None:
            raise APIError(400, f"{field}[{index}] is an array of token ids: {TOKEN_IDS_HELP}", param=field)
        if not ids:
            raise APIError(400, f"{field}[{index}] is an empty array of token ids", param=field)
        bad = next((i for i in ids if not 0 <= i < encoding.n_vocab), None)
        if bad is not None:
            raise APIError(
                400,
                f"{field}[{index}] holds token id {bad}, outside cl100k_base (0..{encoding.n_vocab - 1}); "
                "token ids are read as tiktoken cl100k_base ids, never as this model's",
                param=field,
            )
        try:
            return encoding.decode(ids)
        except Exception:  # ids in range that tiktoken still cannot decode
            raise APIError(400, f"{field}[{index}] holds token ids cl100k_base cannot decode", param=field) from None

    # -- embedding -------------------------------------------------------------------------------

    async def embed(
        self,
        texts: list[str],
        *,
        prompt_type: str = "document",
        normalize: bool = True,
        truncate: bool = True,
        sparse: bool = False,
    ) -> Embedded:
        """Embed ``texts`` (already checked) in shared forward passes with concurrent requests
        (with ``sparse``, their sparse lexical vectors too, from the same passes).

        Raises:
            APIError: 429 when ``max_concurrent_requests`` are already admitted; 413 when
                ``truncate`` is False and a text is longer than the model's ``max_length``.
        """
        if self.admitted >= self.settings.max_concurrent_requests:
            raise APIError(
                429,
                f"the server is busy: {self.admitted} requests are running or waiting "
                f"(--max-concurrent-requests {self.settings.max_concurrent_requests}); retry after "
                f"{self.settings.retry_after} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(self.settings.retry_after)},
            )
        # Single-threaded event loop: the count needs no lock.
        self.admitted += 1
        self.metrics.queue_depth.set(self.admitted)
        try:
            if not truncate and self.embedder.config.long_text == "truncate":
                await asyncio.to_thread(self._refuse_too_long, texts, prompt_type)
            result: EmbedResult = await self.embedder.aembed(
                texts, prompt_type=prompt_type, normalize=normalize, sparse=sparse
            )
        finally:
            self.admitted -= 1
            self.metrics.queue_depth.set(self.admitted)
        self.metrics.texts.inc(len(texts))
        self.metrics.tokens.inc(result.total_tokens)
        self.metrics.request_texts.observe(len(texts))
        return Embedded(result.vectors, result.token_counts, result.num_truncated, result.sparse)

    # -- tokens (TEI's /tokenize, /decode, /info) -------------------------------------------------

    def tokens(self, texts: list[str], *, add_special_tokens: bool, prompt_type: str | None) -> list[list[dict]]:
        """TEI's ``/tokenize`` answer: each text's tokens, in the prompt when ``prompt_type`` is given
        (what the model sees, before any cut to ``max_length``), else the bare text."""
        template = self.embedder.template(prompt_type) if prompt_type else None
        strings = [render(template, text)[0] if template else text for text in texts]
        tokenizer = self.embedder.tokenizer
        out = self.embedder.tokenize_strings(strings, add_special_tokens=add_special_tokens)
        answer = []
        rows = zip(strings, out["input_ids"], out["offset_mapping"], out["special_tokens_mask"], strict=True)
        for string, ids, offsets, special in rows:
            # TEI's offsets index the UTF-8 bytes of the tokenized string (the tokenizer's: characters).
            sizes = [len(c.encode("utf-8", "surrogatepass")) for c in string]
            bytes_before = np.cumsum([0, *sizes]).tolist()
            row = []
            for token_id, (start, stop), is_special in zip(ids, offsets, special, strict=True):
                if is_special:  # as TEI: the token's own string, no offsets
                    text, start_byte, stop_byte = tokenizer.convert_ids_to_tokens(token_id), None, None
                else:
                    text, start_byte, stop_byte = string[start:stop], bytes_before[start], bytes_before[stop]
                row.append({"id": token_id, "text": text, "special": bool(is_special), "start": start_byte,
                            "stop": stop_byte})  # fmt: skip
            answer.append(row)
        return answer

    def decode(self, ids: list[int] | list[list[int]], *, skip_special_tokens: bool) -> list[str]:
        """TEI's ``/decode`` answer: the text of each array of this model's token ids."""
        rows = cast("list[list[int]]", ids if ids and isinstance(ids[0], list) else [ids])
        vocabulary = len(self.embedder.tokenizer)
        for index, row in enumerate(rows):
            bad = next((i for i in row if not 0 <= i < vocabulary), None)
            if bad is not None:
                raise APIError(
                    400, f"ids[{index}] holds token id {bad}, outside this model's vocabulary (0..{vocabulary - 1})",
                    param="ids",
                )  # fmt: skip
        return self.embedder.tokenizer.batch_decode(rows, skip_special_tokens=skip_special_tokens)

    def info(self) -> dict[str, Any]:
        """TEI's ``/info`` fields, and this server's method and layers under ``kv_embed``."""
        e, settings = self.embedder, self.settings
        return {
            "model_id": str(e.name),
            "model_sha": getattr(e.model.config, "_commit_hash", None),  # set by a hub download
            "model_dtype": dtype_name(e.dtype),
            "model_type": {"embedding": {"pooling": e.pooling}},
            "max_concurrent_requests": settings.max_concurrent_requests,
            "max_input_length": e.max_length,
            "max_batch_tokens": e.config.max_tokens_per_batch,
            "max_batch_requests": None,
            "max_client_batch_size": settings.max_client_batch_size,
            "auto_truncate": True,
            "tokenization_workers": 1,
            "version": __version__,
            "sha": None,
            "docker_label": None,
            "kv_embed": {
                "served_model_name": settings.served_model_name,
                "task": e.config.task,
                "method": e.config.resolved_method,
                "layers": list(e.layers),
                "bias": e.config.bias if e.layers else None,
                "output_layer": e.output_layer,
                "postprocess": e.config.postprocess,
                "dimension": e.dimension,
                "identity": e.identity()["fingerprint"],
            },
        }

    def check_sparse(self) -> None:
        """400 unless the model can give sparse vectors (it needs its LM head)."""
        try:
            lm_head_weight(self.embedder.model)
        except ValueError as error:
            raise APIError(400, f"this server cannot give sparse vectors: {error}", code="sparse_unavailable") from None

    def _refuse_too_long(self, texts: list[str], prompt_type: str) -> None:
        # Every template a text is embedded with (MetaEOL has several): none may cut it.
        for template in self.embedder.templates(prompt_type):
            for index, encoded in enumerate(self.embedder.tokenize(texts, prompt_type, template=template)):
                if encoded.truncated:
                    raise APIError(
                        413,
                        f"input {index} is longer than the model's max_length ({self.embedder.max_length} tokens, "
                        "prompt included) and the request asked not to truncate; shorten it or allow truncation",
                        code="input_too_long",
                    )

    # -- output ----------------------------------------------------------------------------------

    def check_dimensions(self, dimensions: int | None) -> None:
        """400 unless ``dimensions`` is available (see :meth:`with_dimensions`); the routes check
        it before any forward pass is spent on the request."""
        full = self.embedder.dimension
        if dimensions is None or dimensions == full:
            return
        reducible = self.embedder.config.postprocess in ("pca", "whiten")
        if not reducible or not 1 <= dimensions < full:
            how = (
                f"fewer leading PCA components (1..{full})"
                if reducible
                else "none other: these vectors are not trained for truncation, and cutting them would silently "
                "change their meaning; start the server with --postprocess pca --dimensions K to serve K"
            )
            raise APIError(
                400,
                f"dimensions={dimensions} is not available: this server returns {full}-dimensional vectors, and {how}",
                param="dimensions",
            )

    def with_dimensions(self, vectors: np.ndarray, dimensions: int | None, normalize: bool = True) -> np.ndarray:
        """``vectors`` at ``dimensions``: as they are, or fewer leading components where the
        server's post-processing (PCA / whitening) orders them by variance (renormalised, unless
        the request asked for raw vectors)."""
        self.check_dimensions(dimensions)
        if dimensions is None or dimensions == vectors.shape[1]:
            return vectors
        cut = vectors[:, :dimensions]
        return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12) if normalize else cut


def encode_base64(vector: np.ndarray) -> str:
    """A vector as OpenAI's ``encoding_format="base64"`` sends it: little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
