"""Request and response bodies: OpenAI's ``/v1/embeddings`` and text-embeddings-inference's ``/embed``.

Inputs are checked here for shape only (a clear message naming the field and index); what a
valid input means (token ids to decode, empty texts, limits) is the engine's business.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

OPENAI_INPUT = "a string, an array of strings, an array of token ids, or an array of arrays of token ids"
TEI_INPUT = "a string or an array of strings"
# TEI's `Input` (router/src/http/types.rs): one `InputType` (a string or an array of u32 ids) or an
# array of them, strings and id arrays mixed.
TEI_EMBED_INPUT = "a string, an array of this model's token ids, or an array of strings and arrays of token ids"


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_openai_input(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError(f"'input' must be {OPENAI_INPUT}; got {type(value).__name__}")
    if not value:
        raise ValueError("'input' is an empty array; send at least one input")
    first = value[0]
    if isinstance(first, str):
        kind, ok = "strings", lambda item: isinstance(item, str)
    elif _is_token_id(first):
        kind, ok = "token ids", _is_token_id
    elif isinstance(first, list):
        kind, ok = "arrays of token ids", lambda item: isinstance(item, list) and all(map(_is_token_id, item))
    else:
        raise ValueError(f"'input' must be {OPENAI_INPUT}; input[0] is {type(first).__name__}")
    for index, item in enumerate(value):
        if not ok(item):
            raise ValueError(f"'input' must be {OPENAI_INPUT}; input[{index}] does not fit an array of {kind}")
    return value


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, plus ``input_type`` (this server's extension)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[int] | list[list[int]] = Field(description=f"{OPENAI_INPUT} (cl100k_base ids)")
    model: str = Field(description="the served model name (GET /v1/models)")
    encoding_format: Literal["float", "base64"] = Field(
        default="float",
        description="base64: each vector's little-endian bytes (float32, or each embedding_types' own type)",
    )
    embedding_types: list[Literal["float", "float16", "int8", "uint8", "binary", "ubinary"]] | None = Field(
        default=None,
        min_length=1,
        description="extension, Cohere's field: the precisions to return; each item's embedding is then an object "
        "keyed by type (float, float16, int8 and uint8 with fitted ranges, binary and ubinary packed sign bits)",
    )
    dimensions: int | None = Field(
        default=None,
        description="the vectors' dimension; other values only where the server reduces by PCA or whitening",
    )
    user: str | None = Field(default=None, description="accepted and ignored")
    input_type: str = Field(
        default="document",
        description="extension: which prompt embeds the input: query or document, Cohere's, NVIDIA's or Jina's "
        "names for them (search_query, passage, retrieval.query, ...), or a prompt the server was started with",
    )

    _check_input = field_validator("input", mode="before")(_check_openai_input)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str | dict[str, list[float] | list[int] | str]


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


# An empty array passes here: the engine refuses it as TEI does (400, error_type Empty).
def _check_tei_inputs(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError(f"'inputs' must be {TEI_INPUT}; got {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"'inputs' must be {TEI_INPUT}; inputs[{index}] is {type(item).__name__}")
    return value


def _check_tei_embed_inputs(value: Any) -> Any:
    if isinstance(value, str) or (isinstance(value, list) and all(map(_is_token_id, value))):
        return value  # one text, or one input as token ids
    if not isinstance(value, list):
        raise ValueError(f"'inputs' must be {TEI_EMBED_INPUT}; got {type(value).__name__}")
    for index, item in enumerate(value):
        if isinstance(item, list):
            bad = next((i for i, t in enumerate(item) if not _is_token_id(t)), None)
            if bad is not None:
                raise ValueError(
                    f"'inputs' must be {TEI_EMBED_INPUT}; inputs[{index}][{bad}] is {type(item[bad]).__name__}, "
                    "not a token id"
                )
        elif _is_token_id(item):
            raise ValueError(
                f"'inputs' must be {TEI_EMBED_INPUT}; inputs[{index}] is a token id beside other kinds of input "
                "(one input's ids go in one array)"
            )
        elif not isinstance(item, str):
            raise ValueError(f"'inputs' must be {TEI_EMBED_INPUT}; inputs[{index}] is {type(item).__name__}")
    return value


class TEIEmbedSparseRequest(BaseModel):
    """text-embeddings-inference's ``/embed_sparse`` request (``/embed``'s, less ``normalize``)."""

    model_config = ConfigDict(extra="ignore")

    inputs: str | list[int] | list[str | list[int]] = Field(
        description=f"{TEI_EMBED_INPUT} (ids are decoded to text, then embedded in the prompt as any text)"
    )
    truncate: bool | None = Field(
        default=None, description="cut texts over the model's max_length (default); false: 422 instead"
    )
    # TEI's serde: the variants Left / Right, with the aliases left / right.
    truncation_direction: Literal["right", "Right", "left", "Left"] = Field(
        default="right",
        description="which end of an over-long text is cut: right keeps its beginning, left keeps its end",
    )
    prompt_name: str | None = Field(
        default=None, description="query or document (default: document), or another provider's name for them"
    )

    _check_inputs = field_validator("inputs", mode="before")(_check_tei_embed_inputs)


class TEIEmbedRequest(TEIEmbedSparseRequest):
    """text-embeddings-inference's ``/embed`` request."""

    normalize: bool = Field(default=True, description="L2-normalise the vectors")
    dimensions: int | None = Field(
        default=None,
        description="the vectors' dimension (TEI's Matryoshka cut); other values only where the server reduces "
        "by PCA or whitening",
    )


class TEITokenizeRequest(BaseModel):
    """text-embeddings-inference's ``/tokenize`` request."""

    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str] = Field(description=TEI_INPUT)
    add_special_tokens: bool = Field(default=True, description="the tokenizer's own special tokens (BOS, ...)")
    prompt_name: str | None = Field(
        default=None,
        description="tokenize the text inside that prompt, as the model sees it (default: the bare text)",
    )

    _check_inputs = field_validator("inputs", mode="before")(_check_tei_inputs)


# Empty arrays pass here: the engine refuses them as TEI does (400, error_type Empty).
def _check_decode_ids(value: Any) -> Any:
    if not isinstance(value, list):
        raise ValueError("'ids' must be an array of token ids, or an array of such arrays")
    if value and isinstance(value[0], list):
        for index, row in enumerate(value):
            if not isinstance(row, list) or not all(map(_is_token_id, row)):
                raise ValueError(
                    f"'ids' must be an array of token ids, or an array of such arrays; ids[{index}] is not an "
                    "array of token ids"
                )
        return value
    bad = next((i for i, item in enumerate(value) if not _is_token_id(item)), None)
    if bad is not None:
        raise ValueError(
            f"'ids' must be an array of token ids, or an array of such arrays; ids[{bad}] is "
            f"{type(value[bad]).__name__}, not a token id"
        )
    return value


class TEIDecodeRequest(BaseModel):
    """text-embeddings-inference's ``/decode`` request."""

    model_config = ConfigDict(extra="ignore")

    ids: list[int] | list[list[int]] = Field(description="token ids of this model, or one array of them per text")
    skip_special_tokens: bool = Field(default=True, description="leave special tokens out of the text")

    _check_ids = field_validator("ids", mode="before")(_check_decode_ids)


class SimpleToken(BaseModel):
    """One token as TEI's ``/tokenize`` returns it: ``start`` / ``stop`` are UTF-8 byte offsets into
    the tokenized string (the input, or the prompted input with ``prompt_name``); a special token
    has none."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class SparseValue(BaseModel):
    """One weight of a sparse vector, as TEI returns it."""

    index: int
    value: float


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kv-embeddings-integrations"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
