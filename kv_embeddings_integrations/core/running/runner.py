"""The batched forward pass behind every embedding call.

[`BatchRunner`][kv_embeddings_integrations.core.running.runner.BatchRunner] turns tokenized texts
into pooled vectors: it plans length-sorted batches, runs each through the (re-routed) model as its
[`ForwardPlan`][kv_embeddings_integrations.core.running.forward.ForwardPlan] says and pools it,
splits texts longer than ``max_length`` into pieces when asked (``long_text="chunk_mean"``), halves
a batch that runs out of memory, re-runs a half-precision batch that overflowed in a float32 copy
of the model, and collects the sparse lexical vectors computed in the same pass. The embedder
holds one as ``embedder.runner``; it takes the model, its decoder, the plan and the pad id, and
nothing of the embedder above it.

Its seams are
[`BatchRunner.forward`][kv_embeddings_integrations.core.running.runner.BatchRunner.forward] (one
batch through the model, pooled) and
[`BatchRunner.model_forward`][kv_embeddings_integrations.core.running.runner.BatchRunner.model_forward]
(one decoder pass): everything else calls them through the instance, so a test (or a profiler) can
wrap or replace them there.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast

from ..method import rerouting, token_prepending
from ..outputs import sparse as sparse_vectors
from ..outputs.sparse import SparseVectors
from ..results import EmbedResult
from .batching import plan_batches
from .forward import ForwardPlan, decoder_forward, decoder_of
from .pooling import pool_hidden_states
from .tokenization import EncodedText, PromptTokenizer, TokenBatch, collate

# Rows per batch when neither a batch size nor a token budget bounds them.
DEFAULT_BATCH_SIZE = 32
# A progress bar is shown (when not asked either way) for jobs of more batches than this.
PROGRESS_BAR_MIN_BATCHES = 10


def release_memory() -> None:
    """Return cached GPU memory after an out-of-memory error."""
    # Every GPU, not only the input device: with a device map the failing layer may sit elsewhere.
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class BatchRunner:
    """Texts to pooled float32 vectors, one batched forward pass at a time.

    Holds no state between calls but a lock (one float32 copy of the model at a time); it is
    built per process, never pickled (the embedder rebuilds it when unpickled).

    Args:
        model: the loaded model (for its dtype, LM head and float32 copies).
        decoder: its decoder stack, which the passes run.
        prompt_tokenizer: the tokenizer of prompted texts.
        plan: the re-routing, Token Prepending and packing of every pass.
        pad_token_id: the id that left-pads a batch.
        hidden_size: the model's hidden size.
        num_layers: the model's decoder layers.
        output_layer: the pooled layer, 0-based.
        pooling: ``"mean_last"``, ``"mean"`` or ``"last"``.
        mean_scope: the tokens mean pooling averages: ``"all"`` or ``"text"``.
        max_length: longest input in tokens, prompt included (named in out-of-memory errors).
        max_tokens_per_batch: budget of padded tokens per forward pass (``None``: none).
        chunk_mean: embed a text longer than ``max_length`` as the weighted mean of pieces that
            fit, instead of truncating it.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        decoder: PreTrainedModel,
        prompt_tokenizer: PromptTokenizer,
        plan: ForwardPlan,
        pad_token_id: int,
        *,
        hidden_size: int,
        num_layers: int,
        output_layer: int,
        pooling: str,
        mean_scope: str,
        max_length: int,
        max_tokens_per_batch: int | None,
        chunk_mean: bool,
    ) -> None:
        self.model = model
        self.decoder = decoder
        self.prompt_tokenizer = prompt_tokenizer
        self.plan = plan
        self.pad_token_id = pad_token_id
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.output_layer = output_layer
        self.pooling = pooling
        self.mean_scope = mean_scope
        self.max_length = max_length
        self.max_tokens_per_batch = max_tokens_per_batch
        self.chunk_mean = chunk_mean
        # One float32 copy of the model at a time: concurrent overflows would each hold one.
        self.float32_lock = threading.Lock()

    def with_plan(self, plan: ForwardPlan) -> BatchRunner:
        """The same runner over the same model with another plan (once the layers are chosen)."""
        runner = copy.copy(self)
        runner.plan = plan
        runner.float32_lock = threading.Lock()
        return runner

    def _over(self, model: PreTrainedModel) -> BatchRunner:
        """The same runner over another copy of the model (its float32 twin)."""
        if self.plan.layers:
            rerouting.install(model)
        runner = self.with_plan(self.plan)
        runner.model, runner.decoder = model, decoder_of(model)
        if self.plan.prepend_layers is not None:
            token_prepending.install(runner.decoder)
        return runner

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings."""
        embeddings: torch.nn.Module = self.decoder.get_input_embeddings()
        return cast(torch.Tensor, embeddings.weight).device

    def collate(self, encoded: list[EncodedText]) -> TokenBatch:
        """Left-pad tokenized texts into one batch on the model's input device."""
        return collate(encoded, self.pad_token_id, self.device)

    def model_forward(
        self, batch: TokenBatch, *, output_hidden_states: bool = False, layers: list[int] | None = None
    ) -> BaseModelOutputWithPast:
        """One decoder pass of ``batch`` as the plan says, re-routing ``layers`` (default: the
        plan's; ``[]``: none):
        [`decoder_forward`][kv_embeddings_integrations.core.running.forward.decoder_forward]."""
        return decoder_forward(
            self.model,
            self.decoder,
            self.plan,
            batch,
            self.pad_token_id,
            output_hidden_states=output_hidden_states,
            layers=layers,
        )

    @property
    def vocab_size(self) -> int:
        """Rows of the input embeddings: the width of the sparse vectors."""
        embeddings: torch.nn.Module = self.model.get_input_embeddings()
        return int(cast(torch.Tensor, embeddings.weight).shape[0])

    def progress(self, total: int, rows: int | None, show: bool | None, desc: str = "Embedding") -> tqdm[Any]:
        """A progress bar over ``total`` texts.

        Args:
            total: texts the job embeds.
            rows: rows per batch (``None``: unbounded, counted as the default batch size).
            show: whether to show it; ``None`` shows it only for jobs of many batches.
            desc: the bar's label.
        """
        if show is None:
            show = total > PROGRESS_BAR_MIN_BATCHES * (rows or DEFAULT_BATCH_SIZE)
        return tqdm(total=total, desc=desc, unit="text", disable=not show)

    def batches(self, encoded: list[EncodedText], batch_size: int | None) -> Iterator[tuple[list[int], TokenBatch]]:
        """Length-sorted, padded batches with their indices into ``encoded``.

        Args:
            encoded: the tokenized texts.
            batch_size: most rows per batch (``None``: bounded by the token budget only).
        """
        for indices in plan_batches([len(e) for e in encoded], batch_size, self.max_tokens_per_batch):
            yield indices, self.collate([encoded[i] for i in indices])

    def run_templates(
        self,
        texts: list[str],
        templates: tuple[str, ...],
        batch_size: int | None,
        show: bool | None,
        sparse: bool,
        chunk: int,
    ) -> EmbedResult:
        """[`run`][kv_embeddings_integrations.core.running.runner.BatchRunner.run] once per template
        (MetaEOL has several), the passes averaged.

        Args:
            texts: the texts, already checked (at least one).
            templates: the prompt templates; each text is embedded with each.
            batch_size: most rows per batch (``None``: bounded by the token budget only).
            show: whether to show a progress bar (``None``: only for jobs of many batches).
            sparse: also collect each text's sparse lexical vector from the same passes.
            chunk: most texts tokenized at once (bounds the token ids held, whatever the input size).
        """
        passes = []
        with self.progress(len(texts) * len(templates), batch_size, show) as bar:
            for template in templates:
                parts = [
                    self.run(texts[i : i + chunk], template, batch_size, bar, sparse)
                    for i in range(0, len(texts), chunk)
                ]
                passes.append(EmbedResult.concatenate(parts))
        return passes[0] if len(passes) == 1 else EmbedResult.average(passes)

    def layer_states(
        self, encoded: list[EncodedText], batch_size: int | None, show: bool | None, layers: list[int] | None
    ) -> torch.Tensor:
        """Every layer's last-token hidden state of each tokenized text, one pass per batch.

        Args:
            encoded: the prompted, tokenized texts.
            batch_size: most rows per batch.
            show: whether to show a progress bar (``None``: only for jobs of many batches).
            layers: the layers to re-route (``None``: the embedder's; ``[]``: none).

        Returns:
            ``(len(encoded), num_layers, hidden_size)`` float32 CPU tensor.
        """
        states = torch.empty((len(encoded), self.num_layers, self.hidden_size), dtype=torch.float32)
        with self.progress(len(encoded), batch_size, show, "Layer states") as bar:
            for indices, batch in self.batches(encoded, batch_size):
                out = self.model_forward(batch, output_hidden_states=True, layers=layers)
                assert out.hidden_states is not None  # asked for
                # hidden_states[0] is the embedding output; [l + 1] is layer l's output.
                states[indices] = torch.stack([h[:, -1].float().cpu() for h in out.hidden_states[1:]], dim=1)
                bar.update(len(indices))
        return states

    def token_states(self, encoded: list[EncodedText], batch_size: int | None) -> list[np.ndarray]:
        """Each tokenized text's hidden states at the pooled layer, every real token in order.

        One pass per length-sorted batch, as
        [`forward`][kv_embeddings_integrations.core.running.runner.BatchRunner.forward] runs it
        (re-routing, Token Prepending, the final norm only when the last layer is pooled); a batch
        that runs out of memory is halved. Nothing is pooled, post-processed or normalised.

        Args:
            encoded: the prompted, tokenized texts.
            batch_size: most rows per batch (``None``: bounded by the token budget only).

        Returns:
            per text, in input order, a ``(len(encoded[i]), hidden_size)`` float32 array (its left
            padding dropped).
        """
        states: list[np.ndarray] = [np.empty((0, self.hidden_size), dtype=np.float32)] * len(encoded)
        for indices, batch in self.batches(encoded, batch_size):
            hidden = self._splitting(
                batch, lambda part: self.hidden(part)[1].float().cpu(), "computing the token states of"
            )
            for row, i in enumerate(indices):
                # A copy: a view would keep the whole batch's states alive as long as any text's.
                states[i] = hidden[row, hidden.shape[1] - len(encoded[i]) :].clone().numpy()
        return states

    def run(
        self, texts: list[str], template: str, batch_size: int | None, bar: tqdm[Any], sparse: bool = False
    ) -> EmbedResult:
        """Pooled, unnormalised float32 vectors of ``texts`` with their token counts and truncation.

        Args:
            texts: the texts, already checked.
            template: the prompt template that wraps each.
            batch_size: most rows per batch (``None``: bounded by the token budget only).
            bar: advanced by one per text as its (first) row is embedded.
            sparse: also collect each text's sparse lexical vector from the same passes.
        """
        encoded = self.prompt_tokenizer.encode(texts, template, truncate=not self.chunk_mean)
        long = [i for i, e in enumerate(encoded) if e.truncated]
        truncated = [e.truncated for e in encoded]
        counts = [len(e) for e in encoded]
        pieces = [1] * len(texts)
        # Row r of the forward passes belongs to text owners[r], with weight weights[r].
        owners, weights = list(range(len(texts))), [1.0] * len(texts)
        if long and self.chunk_mean:
            # Each long text becomes pieces that fit: its first piece takes its row, the rest are
            # appended; the text's vector is the pieces' mean weighted by their text tokens.
            for i in long:
                split = self.prompt_tokenizer.split(texts[i], template)
                piece_encoded = self.prompt_tokenizer.encode(split, template)
                truncated[i] = any(e.truncated for e in piece_encoded)  # only if re-tokenizing grew a piece
                counts[i], pieces[i] = sum(len(e) for e in piece_encoded), len(piece_encoded)
                piece_weights = [float(max(1, e.text_end - e.text_start)) for e in piece_encoded]
                encoded[i], weights[i] = piece_encoded[0], piece_weights[0]
                encoded += piece_encoded[1:]
                owners += [i] * (len(split) - 1)
                weights += piece_weights[1:]
        vectors = torch.empty((len(encoded), self.hidden_size), dtype=torch.float32)
        lexical: list[tuple[np.ndarray, np.ndarray]] = [None] * len(encoded)  # type: ignore[list-item]
        for indices, batch in self.batches(encoded, batch_size):
            batch = dataclasses.replace(batch, lexical=sparse)
            out = self._finite(batch, [texts[owners[r]] for r in indices])
            vectors[indices] = out[:, : self.hidden_size]
            if sparse:
                rows = sparse_vectors.rows_to_sparse(batch.input_ids, out[:, self.hidden_size :], batch.text_mask)
                for r, row in zip(indices, rows, strict=True):
                    lexical[r] = row
            bar.update(sum(r < len(texts) for r in indices))  # each text once, by its first row
        if len(encoded) != len(texts):
            weight, index = torch.tensor(weights), torch.tensor(owners)
            sums = torch.zeros((len(texts), self.hidden_size)).index_add_(0, index, vectors * weight[:, None])
            vectors = sums / torch.zeros(len(texts)).index_add_(0, index, weight)[:, None]
        lexical_vectors = None
        if sparse:
            by_text: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in texts]
            for r, row in enumerate(lexical):
                by_text[owners[r]].append(row)
            merged = [sparse_vectors.merge_max(parts) for parts in by_text]
            lexical_vectors = SparseVectors(tuple(m[0] for m in merged), tuple(m[1] for m in merged), self.vocab_size)
        return EmbedResult(vectors.numpy(), tuple(counts), tuple(truncated), tuple(pieces), lexical_vectors)

    def _finite(self, batch: TokenBatch, texts: list[str]) -> torch.Tensor:
        """[`_splitting`][kv_embeddings_integrations.core.running.runner.BatchRunner._splitting] as
        float32 on the CPU, never with a NaN or infinite value.

        A half-precision model whose activations overflow is re-run for that batch in a float32
        copy; rows still not finite (or a float32 model's) raise ``FloatingPointError`` naming them.

        Args:
            batch: the batch.
            texts: the text of each of its rows, to name in the error.
        """
        vectors = self._splitting(batch).float().cpu()
        bad = ~torch.isfinite(vectors).all(dim=1)
        if not bad.any():
            return vectors
        dtype = next(self.model.parameters()).dtype
        if dtype in (torch.float16, torch.bfloat16) and not getattr(self.model, "hf_device_map", None):
            warnings.warn(
                f"{int(bad.sum())} texts gave non-finite values in {dtype}; re-embedding their batch in float32",
                stacklevel=5,  # run, the embedder's _embed_items, encode/embed, the caller
            )
            try:
                vectors = self._in_float32(batch)
            except torch.OutOfMemoryError:
                pass  # no room for a float32 copy: the texts are named below
            else:
                bad = ~torch.isfinite(vectors).all(dim=1)
                if not bad.any():
                    return vectors
        rows = bad.nonzero().flatten().tolist()
        shown = "; ".join(f"{texts[r][:60]!r}" for r in rows[:3])
        raise FloatingPointError(
            f"{len(rows)} texts gave NaN or infinite embeddings in {dtype} (first: {shown}); "
            "use float32 or bfloat16 weights, or check the model"
        )

    def _in_float32(self, batch: TokenBatch) -> torch.Tensor:
        """The batch's vectors from a float32 copy of the model (made for this call, then dropped)."""
        with self.float32_lock:
            twin = self._over(copy.deepcopy(self.model).float())
            try:
                return twin._splitting(batch).float().cpu()
            finally:
                del twin

    def _splitting(
        self,
        batch: TokenBatch,
        compute: Callable[[TokenBatch], torch.Tensor] | None = None,
        doing: str = "embedding",
    ) -> torch.Tensor:
        """``compute`` (default
        [`forward`][kv_embeddings_integrations.core.running.runner.BatchRunner.forward]), halving
        the batch on out-of-memory and retrying each half; ``doing`` names the work in the error a
        single row's failure raises.

        The halves keep the batch's padded width, so each row is computed exactly as it would
        have been in the whole batch.
        """
        compute = compute or self.forward
        try:
            return compute(batch)
        except torch.OutOfMemoryError:
            pass  # retry outside the handler: its traceback pins the failed pass's activations
        release_memory()
        rows = batch.input_ids.shape[0]
        if rows == 1:
            raise torch.OutOfMemoryError(
                f"out of memory {doing} a single text of {batch.input_ids.shape[1]} tokens after splitting "
                f"its batch down to 1 row on {batch.input_ids.device}; lower max_length (now {self.max_length}) "
                "or spread the model over more devices (device_map)"
            )
        half = rows // 2
        parts = (batch.rows(0, half), batch.rows(half, rows))
        return torch.cat([self._splitting(part, compute, doing) for part in parts])

    def hidden(self, batch: TokenBatch) -> tuple[BaseModelOutputWithPast, torch.Tensor]:
        """One decoder pass of the batch: its output and the states of the pooled layer, the model's
        ``last_hidden_state`` (after the final norm) when that is the last layer."""
        last = self.output_layer == self.num_layers - 1
        out = self.model_forward(batch, output_hidden_states=not last)
        # hidden_states[0] is the embedding output; [l + 1] is layer l's (no final norm).
        states = out.last_hidden_state if last else out.hidden_states[self.output_layer + 1]  # type: ignore[index]
        assert states is not None
        return out, states

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        """One batch through the model, pooled: the seam every embedding pass goes through.

        Args:
            batch: the padded batch, on the model's input device.

        Returns:
            ``(rows, hidden_size)`` pooled vectors; with ``batch.lexical``, each position's lexical
            weight follows as ``seq`` more columns, so the OOM split, the float32 retry and the
            finiteness check handle both without knowing of them.
        """
        out, hidden = self.hidden(batch)
        mean_mask = batch.attention_mask.bool()
        if self.mean_scope == "text":
            # An empty text has no text tokens; its mean falls back to the whole prompt.
            has_text = batch.text_mask.any(dim=1, keepdim=True)
            mean_mask = torch.where(has_text, batch.text_mask, mean_mask)
        pooled = pool_hidden_states(hidden, mean_mask.to(hidden.device), self.pooling)
        if not batch.lexical:
            return pooled
        head = sparse_vectors.lm_head_weight(self.model)
        softcap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        assert out.last_hidden_state is not None
        state = out.last_hidden_state[:, -1].to(head.device)
        with torch.inference_mode():
            weights = sparse_vectors.lexical_weights(
                state, head, batch.input_ids.to(head.device), batch.text_mask.to(head.device), softcap
            )
        return torch.cat([pooled, weights.to(pooled.device)], dim=1)
