"""Request and response bodies: OpenAI's ``/v1/embeddings`` and text-embeddings-inference's ``/embed``.

Inputs are checked here for shape only (a clear message naming the field and index); what a
valid input means (token ids to decode, empty texts, limits) is the engine's business.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

OPENAI_INPUT = "a string, an array of strings, an array of token ids, or an array of arrays of token ids"
TEI_INPUT = "a string or an array of strings"
# TEI's `Input` (router/src/http/types.rs): one `InputType` (a string or an array of u32 ids) or an
# array of them, strings and id arrays mixed.
TEI_EMBED_INPUT = "a string, an array of this model's token ids, or an array of strings and arrays of token ids"


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integral(value: Any) -> Any:
    """``value`` with floats that are whole numbers (``192.0``) as ints, in arrays two deep: JSON
    Schema counts them as integers, so a client validating against the document may send them.
    Strings stay strings and ``192.5`` stays a float (refused as a token id)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(item) if not isinstance(item, list) else [_integral(i) for i in item] for item in value]
    return value


def _whole_number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _check_openai_input(value: Any) -> Any:
    value = _integral(value)
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


# Requests parse strictly, as TEI's serde does: "yes" is not a bool, "16" not an int (a 422 naming
# the field on TEI's routes, a 400 on OpenAI's); unknown fields are ignored, as there.
STRICT = ConfigDict(extra="ignore", strict=True)


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, plus ``input_type`` (this server's extension)."""

    model_config = STRICT

    input: str | list[str] | list[int] | list[list[int]] = Field(description=f"{OPENAI_INPUT} (cl100k_base ids)")
    model: str | None = Field(
        default=None, description="the served model name (GET /v1/models); left out: the one model served"
    )
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
    dimensions: StrictInt | None = Field(
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
    _whole_dimensions = field_validator("dimensions", mode="before")(_whole_number)


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
    value = _integral(value)
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
    """text-embeddings-inference's ``/embed_sparse`` request (``/embed``'s, less ``normalize``; also
    ``/embed_all``'s)."""

    model_config = STRICT

    inputs: str | list[int] | list[str | list[int]] = Field(
        description=f"{TEI_EMBED_INPUT} (ids are embedded as given, between the prompt's own tokens)"
    )
    truncate: StrictBool | None = Field(
        default=None,
        description="cut texts over the model's max_length; false: 422 instead (default: the server's "
        "--auto-truncate, on unless it was started with --auto-truncate false)",
    )
    # TEI's serde: the variants Left / Right, with the aliases left / right.
    truncation_direction: Literal["right", "Right", "left", "Left"] = Field(
        default="right",
        description="which end of an over-long text is cut: right keeps its beginning, left keeps its end",
    )
    prompt_name: StrictStr | None = Field(
        default=None, description="query or document (default: document), or another provider's name for them"
    )

    _check_inputs = field_validator("inputs", mode="before")(_check_tei_embed_inputs)


class TEIEmbedRequest(TEIEmbedSparseRequest):
    """text-embeddings-inference's ``/embed`` request."""

    normalize: StrictBool = Field(default=True, description="L2-normalise the vectors")
    dimensions: StrictInt | None = Field(
        default=None,
        description="the vectors' dimension (TEI's Matryoshka cut); other values only where the server reduces "
        "by PCA or whitening",
    )

    _whole_dimensions = field_validator("dimensions", mode="before")(_whole_number)


class TEITokenizeRequest(BaseModel):
    """text-embeddings-inference's ``/tokenize`` request."""

    model_config = STRICT

    inputs: str | list[str] = Field(description=TEI_INPUT)
    add_special_tokens: StrictBool = Field(default=True, description="the tokenizer's own special tokens (BOS, ...)")
    prompt_name: StrictStr | None = Field(
        default=None,
        description="tokenize the text inside that prompt, as the model sees it (default: the bare text)",
    )

    _check_inputs = field_validator("inputs", mode="before")(_check_tei_inputs)


# Empty arrays pass here: the engine refuses them as TEI does (400, error_type Empty).
def _check_decode_ids(value: Any) -> Any:
    value = _integral(value)
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

    model_config = STRICT

    ids: list[int] | list[list[int]] = Field(description="token ids of this model, or one array of them per text")
    skip_special_tokens: StrictBool = Field(default=True, description="leave special tokens out of the text")

    _check_ids = field_validator("ids", mode="before")(_check_decode_ids)


class SimilarityInput(BaseModel):
    """TEI's ``/similarity`` inputs: one sentence compared with each of the others."""

    model_config = STRICT

    source_sentence: str = Field(min_length=1, description="the sentence the others are compared with")
    sentences: list[str] = Field(description="the sentences compared with the source sentence (at least one)")


class SimilarityParameters(BaseModel):
    """TEI's ``/similarity`` parameters (``/embed``'s, as they apply to both sides)."""

    model_config = STRICT

    truncate: StrictBool | None = Field(default=None, description="as on /embed")
    truncation_direction: Literal["right", "Right", "left", "Left"] = Field(default="right", description="as on /embed")
    prompt_name: StrictStr | None = Field(default=None, description="as on /embed (default: document)")


class TEISimilarityRequest(BaseModel):
    """text-embeddings-inference's ``/similarity`` request."""

    model_config = STRICT

    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


def _check_predict_inputs(value: Any) -> Any:
    # TEI's PredictInput: a string, a pair [a, b], or a batch of [a] and [a, b] items.
    message = "'inputs' must be a string, a pair of strings [a, b], or a batch of [a] and [a, b] arrays"
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(message)
    if all(isinstance(item, str) for item in value) and len(value) <= 2:
        return value
    for index, item in enumerate(value):
        if not (isinstance(item, list) and 1 <= len(item) <= 2 and all(isinstance(t, str) for t in item)):
            raise ValueError(f"{message}; inputs[{index}] is not one")
    return value


class TEIPredictRequest(BaseModel):
    """text-embeddings-inference's ``/predict`` request (a classifier's route: read, then refused here)."""

    model_config = STRICT

    inputs: str | list[str] | list[list[str]] = Field(description="a string, a pair, or a batch of singles and pairs")
    truncate: StrictBool | None = None
    truncation_direction: Literal["right", "Right", "left", "Left"] = "right"
    raw_scores: StrictBool = False

    _check_inputs = field_validator("inputs", mode="before")(_check_predict_inputs)


class TEIRerankRequest(BaseModel):
    """text-embeddings-inference's ``/rerank`` request (a re-ranker's route: read, then refused here)."""

    model_config = STRICT

    query: str
    texts: list[str]
    truncate: StrictBool | None = None
    truncation_direction: Literal["right", "Right", "left", "Left"] = "right"
    raw_scores: StrictBool = False
    return_text: StrictBool = False


class VertexRequest(BaseModel):
    """Vertex AI's prediction request: each instance is one of TEI's ``/embed`` requests."""

    model_config = STRICT

    instances: list[dict[str, Any]] = Field(description="each one /embed request body")


class VertexResponse(BaseModel):
    """Vertex AI's prediction response: each instance's ``/embed`` answer, in order."""

    predictions: list[list[list[float]]]


class TEIError(BaseModel):
    """text-embeddings-inference's error body."""

    error: str
    error_type: Literal["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty", "Unauthorized"]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """OpenAI's error body."""

    error: OpenAIErrorDetail


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


class EmbeddingModelInfo(BaseModel):
    pooling: str


class ModelTypeInfo(BaseModel):
    embedding: EmbeddingModelInfo


class KVEmbedInfo(BaseModel):
    """This server's own ``/info`` fields: the method behind the vectors."""

    served_model_name: str
    task: str
    method: str
    layers: list[int]
    bias: float | None
    output_layer: int
    postprocess: str
    dimension: int
    identity: str


class Info(BaseModel):
    """text-embeddings-inference's ``/info`` (its ``Info`` schema), plus ``kv_embed``."""

    model_id: str
    model_sha: str | None
    model_dtype: str
    served_model_name: str
    model_type: ModelTypeInfo
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None
    docker_label: str | None
    kv_embed: KVEmbedInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kv-embeddings-integrations"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
