"""One embedding call's options, checked once: the value every entry point builds and passes down.

[`KVEmbedder.embed`][kv_embeddings_integrations.core.embedder.KVEmbedder.embed], ``encode``,
``encode_sparse``, ``embed_tokens``, ``submit_embed`` / ``aembed``, the process pool and Ray's
actors all take their options as explicit keyword arguments and turn them into one
[`CallOptions`][kv_embeddings_integrations.core.call_options.CallOptions]: a bad option fails in the
caller, before any work, with the same message whichever entry point was used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import check_positive_int
from .outputs.quantization import check_output
from .prompts import requested_prompt
from .resolved import ResolvedMethod


@dataclass(frozen=True)
class CallOptions:
    """How one call embeds its texts. The arguments of every embedding entry point are documented
    here, once.

    Attributes:
        prompt_type: the prompt that wraps each text: ``"document"`` (documents and symmetric
            tasks), ``"query"`` (the query side of asymmetric retrieval), a name of the config's
            ``prompts``, or another provider's name for a side (``search_query``, ``passage``...;
            see
            [`KVEmbedder.prompt_names`][kv_embeddings_integrations.core.embedder.KVEmbedder.prompt_names]).
            The entry points also take ``prompt_name``, sentence-transformers' spelling, used
            instead when given.
        batch_size: rows per forward pass, instead of the config's ``batch_size``.
        show_progress_bar: ``None`` shows one only for jobs of more than 10 batches.
        normalize: L2-normalise each vector (cosine similarity becomes a dot product).
        postprocess: apply the fitted post-processing (``False``: the vectors before it, of
            ``hidden_size``, normalised as ``normalize`` says).
        sparse: also compute each text's sparse lexical vector in the same forward pass
            ([`sparse`][kv_embeddings_integrations.core.outputs.sparse]: the next-token logits at
            the prompt's end, ``log(1 + relu(z))``, kept for the text's own token ids).
        precision: ``"float32"``, ``"float16"``, ``"int8"``, ``"uint8"`` (scalar quantization with
            the embedder's ``quantization_ranges``; needs ``normalize`` and ``postprocess``),
            ``"binary"`` or ``"ubinary"`` (sign bits packed 8 to a byte, as int8 / uint8).
    """

    prompt_type: str = "document"
    batch_size: int | None = None
    show_progress_bar: bool | None = None
    normalize: bool = True
    postprocess: bool = True
    sparse: bool = False
    precision: str = "float32"

    def __post_init__(self) -> None:
        check_positive_int("batch_size", self.batch_size)
        object.__setattr__(self, "precision", check_output(self.precision, self.normalize, self.postprocess))

    @classmethod
    def of(
        cls, resolved: ResolvedMethod, *, prompt_type: str = "document", prompt_name: str | None = None, **options: Any
    ) -> CallOptions:
        """The options of a call to an embedder whose method is ``resolved``: ``prompt_name``, if
        given, stands for ``prompt_type``, and a name the method does not know is a ``ValueError``
        that lists the known ones."""
        name = requested_prompt(prompt_type, prompt_name)
        resolved.templates(name)
        return cls(prompt_type=name, **options)

    def replace(self, **changes: Any) -> CallOptions:
        """These options with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)
