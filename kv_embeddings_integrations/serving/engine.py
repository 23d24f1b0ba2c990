"""The serving engine, apart from the web layer: admission, inputs to texts, truncation policy,
embedding. Its refusals are
[`ServingError`][kv_embeddings_integrations.serving.errors.ServingError]s, which the routes answer
in their own shapes and statuses.

One [`EmbeddingEngine`][kv_embeddings_integrations.serving.engine.EmbeddingEngine] wraps one
[`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder]. Every request goes through the
embedder's coalescing (``aembed``), so concurrent requests share forward passes and the event loop
never waits on one. Admission is bounded: past ``max_concurrent_requests`` requests running or
waiting, new ones are refused at once
([`Overloaded`][kv_embeddings_integrations.serving.errors.Overloaded]) instead of queueing without
limit.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np

from ..core.embedder import KVEmbedder
from ..core.model.loading import dtype_name
from ..core.outputs.quantization import SCALAR
from ..core.outputs.sparse import SparseVectors, lm_head_weight
from ..core.prompts import check_prompt_name, render
from ..core.results import EmbedResult, TokenStates
from ..core.running.inputs import TokenIds, repair_surrogates
from ..core.running.tokenization import EncodedText
from ..version import __version__
from .errors import EmptyInput, InputTooLong, InvalidInput, Overloaded, TooManyInputs, Unsupported
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
        settings: limits and names
            ([`ServeSettings`][kv_embeddings_integrations.serving.settings.ServeSettings]).
        metrics: where texts, tokens, batch sizes and admitted requests are counted.
    """

    def __init__(self, embedder: KVEmbedder, settings: ServeSettings, metrics: ServerMetrics | None = None) -> None:
        self.embedder = embedder
        self.settings = settings
        self.metrics = metrics or ServerMetrics()
        self.admitted = 0
        embedder.batch_listeners.append(self.metrics.batch_texts.observe)

    # -- inputs ----------------------------------------------------------------------------------

    def texts_of(
        self,
        inputs: str | Sequence[str | Sequence[int]] | Sequence[int],
        field: str,
        *,
        model_ids: bool = False,
        prompt_type: str = "document",
    ) -> list[str]:
        """The texts of a request's inputs, each checked; ``field`` names the request field in
        messages. Token ids are ``cl100k_base``'s (OpenAI's clients: decoded, the text embedded), or
        with ``model_ids`` this model's own (TEI's clients): embedded as given, spliced between the
        ``prompt_type`` prompt's own tokens
        ([`TokenIds`][kv_embeddings_integrations.core.running.inputs.TokenIds]), or decoded where
        that prompt cannot be split."""
        one_array = not isinstance(inputs, str) and bool(inputs) and not isinstance(inputs[0], (str, list))
        if isinstance(inputs, str):
            items: list = [inputs]
        elif one_array:
            items = [list(inputs)]  # one array of token ids is one input
        else:
            items = list(inputs)
        if not items:  # TEI's "`inputs` cannot be empty" is an Empty error
            raise EmptyInput(f"'{field}' is an empty array; send at least one input", param=field)
        if len(items) > self.settings.max_client_batch_size:
            raise TooManyInputs(
                f"too many inputs: {len(items)} in one request; this server takes at most "
                f"{self.settings.max_client_batch_size} (--max-client-batch-size). Split the request.",
                param=field,
            )
        if model_ids:
            # An id's place: inputs[k] when one array of ids is the whole of `inputs`, else inputs[i][k].
            splices = any(isinstance(item, list) for item in items) and self.embedder.splices(prompt_type)
            texts = [
                self._model_ids(item, field if one_array else f"{field}[{index}]", field, splices)
                if isinstance(item, list)
                else item
                for index, item in enumerate(items)
            ]
        else:
            texts = [
                self._decode(item, index, field) if isinstance(item, list) else item for index, item in enumerate(items)
            ]
        blank_is_error = self.embedder.config.empty_text == "error"
        for index, text in enumerate(texts):
            where = f"{field}[{index}]" if not isinstance(inputs, str) else field
            if isinstance(text, TokenIds):
                continue  # ids embedded as given: checked already, whatever they decode to
            if not text:
                raise EmptyInput(f"{where} is empty; every input must be a non-empty string", param=field)
            if blank_is_error and not text.strip():  # not TEI's Empty: there is text, this server refuses it
                raise InvalidInput(f"{where} is whitespace only (the server runs --empty-text error)", param=field)
        # Unpaired surrogates (JSON can carry them; UTF-8 cannot): U+FFFD, as the core does.
        return [text if isinstance(text, TokenIds) else repair_surrogates(text) for text in texts]

    def _decode(self, ids: list[int], index: int, field: str) -> str:
        encoding = cl100k()
        if encoding is None:
            raise InvalidInput(f"{field}[{index}] is an array of token ids: {TOKEN_IDS_HELP}", param=field)
        if not ids:  # cl100k ids are OpenAI's: not TEI's Empty
            raise InvalidInput(f"{field}[{index}] is an empty array of token ids", param=field)
        bad = next((i for i in ids if not 0 <= i < encoding.n_vocab), None)
        if bad is not None:
            raise InvalidInput(
                f"{field}[{index}] holds token id {bad}, outside cl100k_base (0..{encoding.n_vocab - 1}); "
                "token ids are read as tiktoken cl100k_base ids, never as this model's",
                param=field,
            )
        try:
            return encoding.decode(ids)
        except Exception:  # ids in range that tiktoken still cannot decode
            raise InvalidInput(f"{field}[{index}] holds token ids cl100k_base cannot decode", param=field) from None

    def _model_ids(self, ids: list[int], where: str, field: str, splices: bool) -> str:
        if not ids:
            raise EmptyInput(f"{where} is an empty array of token ids", param=field)
        self._check_ids(ids, where, field)
        if splices:  # the model sees exactly these ids, between the prompt's own
            return TokenIds(ids, cast("str", self.embedder.tokenizer.decode(ids, skip_special_tokens=True)))
        # A prompt that cannot be split: decoded as TEI decodes an input of ids it puts in a prompt
        # (core/src/tokenization.rs, tokenize_input), special tokens left out; then prompted as text.
        text = cast("str", self.embedder.tokenizer.decode(ids, skip_special_tokens=True))
        if not text:
            raise EmptyInput(f"{where} decodes to an empty text (special tokens are left out)", param=field)
        return text

    def _check_ids(self, ids: list[int], where: str, field: str) -> None:
        vocabulary = len(self.embedder.tokenizer)
        bad = next((k for k, i in enumerate(ids) if not 0 <= i < vocabulary), None)
        if bad is not None:
            raise InvalidInput(
                f"{where}[{bad}] is token id {ids[bad]}, outside this model's vocabulary (0..{vocabulary - 1})",
                param=field,
            )

    # -- embedding -------------------------------------------------------------------------------

    async def embed(
        self,
        texts: list[str],
        *,
        prompt_type: str = "document",
        normalize: bool = True,
        truncate: bool = True,
        truncation_direction: Literal["left", "right"] = "right",
        sparse: bool = False,
    ) -> Embedded:
        """Embed ``texts`` (already checked) in shared forward passes with concurrent requests (with
        ``sparse``, their sparse lexical vectors too, from the same passes). A text too long for
        ``max_length`` in its prompt loses its end, or with ``truncation_direction="left"`` its
        beginning (see
        [`keep_ends`][kv_embeddings_integrations.serving.engine.EmbeddingEngine.keep_ends]).

        Raises:
            Overloaded: when ``max_concurrent_requests`` are already admitted.
            InputTooLong: when ``truncate`` is False and a text is longer than the model's ``max_length``.
            InvalidInput: for ``normalize=False`` where the vectors carry a lexical half.
        """
        if not normalize and self.embedder.lexical is not None:
            raise InvalidInput(
                "normalize=false is not available: this server's vectors carry a lexical half joined to a unit "
                "dense half, which only means something normalised; start the server with --lexical none for "
                "unnormalised dense vectors",
                param="normalize",
            )
        self._admit()
        cut_left = 0
        try:
            texts, cut_left = await self._cut(texts, prompt_type, truncate, truncation_direction)
            result: EmbedResult = await self.embedder.aembed(
                texts, prompt_type=prompt_type, normalize=normalize, sparse=sparse
            )
        finally:
            self._release()
        self.metrics.texts.inc(len(texts))
        self.metrics.tokens.inc(result.total_tokens)
        self.metrics.request_texts.observe(len(texts))
        # The texts cut here fit by now: the core cut none of them, so the counts add up.
        return Embedded(result.vectors, result.token_counts, result.num_truncated + cut_left, result.sparse)

    async def embed_tokens(
        self,
        texts: list[str],
        *,
        prompt_type: str = "document",
        truncate: bool = True,
        truncation_direction: Literal["left", "right"] = "right",
    ) -> TokenStates:
        """TEI's ``/embed_all``: every token's state at the pooled layer, in the re-routed pass (in
        a worker thread; admitted and counted as
        [`embed`][kv_embeddings_integrations.serving.engine.EmbeddingEngine.embed]'s requests
        are)."""
        self._admit()
        try:
            texts, cut_left = await self._cut(texts, prompt_type, truncate, truncation_direction)
            states = await asyncio.to_thread(self.embedder.embed_tokens, texts, prompt_type=prompt_type)
        finally:
            self._release()
        self.metrics.texts.inc(len(texts))
        self.metrics.tokens.inc(sum(states.token_counts))
        self.metrics.request_texts.observe(len(texts))
        return states

    def _admit(self) -> None:
        if self.admitted >= self.settings.max_concurrent_requests:
            raise Overloaded(
                f"the server is busy: {self.admitted} requests are running or waiting "
                f"(--max-concurrent-requests {self.settings.max_concurrent_requests}); retry after "
                f"{self.settings.retry_after} s",
                retry_after=self.settings.retry_after,
            )
        # Single-threaded event loop: the count needs no lock.
        self.admitted += 1
        self.metrics.queue_depth.set(self.admitted)

    def _release(self) -> None:
        self.admitted -= 1
        self.metrics.queue_depth.set(self.admitted)

    async def _cut(
        self, texts: list[str], prompt_type: str, truncate: bool, direction: Literal["left", "right"]
    ) -> tuple[list[str], int]:
        """``texts`` as the request's truncation asks (refused, or cut at their start; the core cuts
        their end), and how many were cut here (in a worker thread: it tokenizes)."""
        if self.embedder.config.long_text != "truncate":
            return texts, 0
        if not truncate:
            await asyncio.to_thread(self._refuse_too_long, texts, prompt_type)
        elif direction == "left":
            return await asyncio.to_thread(self.keep_ends, texts, prompt_type)
        return texts, 0

    def keep_ends(self, texts: list[str], prompt_type: str) -> tuple[list[str], int]:
        """Left truncation (TEI's ``truncation_direction: left``): each text too long for
        ``max_length`` inside its prompt (every template of ``prompt_type``) loses its beginning
        instead of its end, cut at a token boundary so that its last tokens fill the room the prompt
        leaves; and how many texts were cut. The core only ever cuts a text's end: a text that fits
        is left alone there."""
        texts, cut = list(texts), set()
        for template in self.embedder.templates(prompt_type):
            for index, encoded in enumerate(self.embedder.tokenize(texts, template=template)):
                if encoded.truncated:
                    text = texts[index]
                    if isinstance(text, TokenIds):  # ids: the last ones that fit
                        kept = list(text.ids[len(text.ids) - (encoded.text_end - encoded.text_start) :])
                        decoded = cast("str", self.embedder.tokenizer.decode(kept, skip_special_tokens=True))
                        texts[index] = TokenIds(kept, decoded)
                    else:
                        texts[index] = self._keep_end(text, template, encoded)
                    cut.add(index)
        return texts, len(cut)

    def _keep_end(self, text: str, template: str, encoded: EncodedText) -> str:
        # `encoded` is the text cut at its end: as many of its tokens as fit. Drop that many fewer
        # from its start instead, at a token start of the text in its prompt (offsets in the rendered
        # string). Re-tokenized, a cut text can take a token more at its new edge: then cut again; a
        # few tokens the rounds did not shed are left to the core's cut at the end.
        for _ in range(8):
            if not encoded.truncated:
                break
            rendered, spans = render(template, text)
            start, end = spans[0]
            offsets = self.embedder.tokenize_strings([rendered])["offset_mapping"][0]
            starts = [a for a, b in offsets if b > a and a < end and b > start]
            drop = max(len(starts) - (encoded.text_end - encoded.text_start), 1)
            text = text[max(starts[drop] - start, 1) :] if drop < len(starts) else ""
            (encoded,) = self.embedder.tokenize([text], template=template)
        return text

    # -- tokens (TEI's /tokenize, /decode, /info) -------------------------------------------------

    def tokens(self, texts: list[str], *, add_special_tokens: bool, prompt_type: str | None) -> list[list[dict]]:
        """TEI's ``/tokenize`` answer: each text's tokens, in the prompt when ``prompt_type`` is
        given (what the model sees, before any cut to ``max_length``), else the bare text."""
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
        batch = bool(ids) and isinstance(ids[0], list)
        rows = cast("list[list[int]]", ids if batch else [ids])
        for index, row in enumerate(rows):
            where = f"ids[{index}]" if batch else "ids"
            if not row:  # TEI: "`input_ids` cannot be empty", an Empty error
                raise EmptyInput(f"{where} is an empty array; send at least one token id", param="ids")
            self._check_ids(row, where, "ids")
        return self.embedder.tokenizer.batch_decode(rows, skip_special_tokens=skip_special_tokens)

    def info(self) -> dict[str, Any]:
        """TEI's ``/info`` fields, and this server's method and layers under ``kv_embed``."""
        e, settings = self.embedder, self.settings
        # TEI's max_batch_tokens is an integer: the token budget, else what the row limit allows.
        budget = e.config.max_tokens_per_batch or (e.batch_size or 1) * e.max_length
        return {
            "model_id": str(e.name),
            "model_sha": getattr(e.model.config, "_commit_hash", None),  # set by a hub download
            "model_dtype": dtype_name(e.dtype),
            "served_model_name": settings.served_model_name,
            "model_type": {"embedding": {"pooling": e.pooling}},
            "max_concurrent_requests": settings.max_concurrent_requests,
            "max_input_length": e.max_length,
            "max_batch_tokens": budget,
            "max_batch_requests": e.batch_size,  # rows per pass (None: bounded by the token budget only)
            "max_client_batch_size": settings.max_client_batch_size,
            "auto_truncate": settings.auto_truncate,
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

    def sparse_available(self) -> bool:
        """Whether the model can give sparse vectors (it has its LM head)."""
        try:
            self.check_sparse()
        except Unsupported:
            return False
        return True

    def check_sparse(self) -> None:
        """[`Unsupported`][kv_embeddings_integrations.serving.errors.Unsupported] unless the model
        can give sparse vectors (it needs its LM head)."""
        try:
            lm_head_weight(self.embedder.model)
        except ValueError as error:
            # TEI: "Model is not an embedding model with SPLADE pooling", a Backend error.
            raise Unsupported(f"this server cannot give sparse vectors: {error}", code="sparse_unavailable") from None

    def _refuse_too_long(self, texts: list[str], prompt_type: str) -> None:
        # Every template a text is embedded with (MetaEOL has several): none may cut it.
        for template in self.embedder.templates(prompt_type):
            for index, encoded in enumerate(self.embedder.tokenize(texts, prompt_type, template=template)):
                if encoded.truncated:
                    raise InputTooLong(
                        f"input {index} is longer than the model's max_length ({self.embedder.max_length} tokens, "
                        "prompt included) and the request asked not to truncate; shorten it or allow truncation (TEI's "
                        '"truncate": true)'
                    )

    # -- output ----------------------------------------------------------------------------------

    def check_dimensions(self, dimensions: int | None) -> None:
        """[`InvalidInput`][kv_embeddings_integrations.serving.errors.InvalidInput] unless
        ``dimensions`` is available (see
        [`with_dimensions`][kv_embeddings_integrations.serving.engine.EmbeddingEngine.with_dimensions]);
        the routes check it before any forward pass is spent on the request."""
        full = self.embedder.dimension
        if dimensions is None or dimensions == full:
            return
        lexical = self.embedder.lexical is not None
        reducible = self.embedder.config.postprocess in ("pca", "whiten") and not lexical
        if not reducible or not 1 <= dimensions < full:
            if reducible:
                how = f"fewer leading PCA components (1..{full})"
            elif lexical:
                how = (
                    "none other: their last columns are the lexical half, which a cut would drop; start the server "
                    "with --postprocess pca --dimensions K to make the dense part K wide"
                )
            else:
                how = (
                    "none other: these vectors are not trained for truncation, and cutting them would silently "
                    "change their meaning; start the server with --postprocess pca --dimensions K to serve K"
                )
            raise InvalidInput(
                f"dimensions={dimensions} is not available: this server returns {full}-dimensional vectors, and {how}",
                param="dimensions",
            )

    def prompt_name(self, name: str | None, field: str = "prompt_name") -> str:
        """The prompt a request names (``None``: the document prompt); an unknown name is an
        [`InvalidInput`][kv_embeddings_integrations.serving.errors.InvalidInput] listing the names
        this server knows (its ``--prompt`` names, the two sides and the providers' names for
        them)."""
        if name is None:
            return "document"
        try:
            return check_prompt_name(name, dict(self.embedder.resolved.named_templates), field)
        except ValueError as e:
            raise InvalidInput(str(e), param=field) from None

    def check_embedding_types(self, types: Sequence[str] | None, dimensions: int | None) -> None:
        """[`InvalidInput`][kv_embeddings_integrations.serving.errors.InvalidInput] for ``int8`` /
        ``uint8`` with fewer ``dimensions``: their ranges are fitted on the full vectors."""
        scalar = sorted(set(types or ()) & SCALAR)
        if scalar and dimensions is not None and dimensions != self.embedder.dimension:
            raise InvalidInput(
                f"embedding_types {scalar} quantize with ranges fitted on the full "
                f"{self.embedder.dimension}-dimensional vectors: ask them without dimensions={dimensions}, or use "
                "float / binary",
                param="embedding_types",
            )

    def typed(self, vectors: np.ndarray, types: Sequence[str]) -> dict[str, np.ndarray]:
        """``vectors`` (final, normalised) in each of ``types`` (Cohere's names; ``float`` is
        float32). The int8 / uint8 ranges are fitted on the first such request (then cached on
        disk): this runs in a worker thread, not on the event loop."""
        return {kind: self.embedder.quantize(vectors, "float32" if kind == "float" else kind) for kind in types}

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
    """A vector as OpenAI's ``encoding_format="base64"`` sends it: little-endian float32 bytes
    (a quantized vector: its own type's bytes, little-endian)."""
    array = np.asarray(vector)
    if array.dtype.kind == "f" and array.dtype != np.float16:
        array = array.astype(np.float32)
    return base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode("ascii")
