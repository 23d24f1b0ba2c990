"""OpenAI's routes, driven by the real clients (openai, LangChain, LlamaIndex) over real sockets:
vectors, query prompts, other providers' input types, named prompts, output precisions."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
from server_harness import AUTH, DOCS, KEY, NAME, QUERY, cosines, post, ranking

pytestmark = pytest.mark.timing


# -- clients ---------------------------------------------------------------------------------------


def test_openai_client_float_base64_and_query_type(server, local):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    expected = local.embed(DOCS)
    floats = client.embeddings.create(model=NAME, input=DOCS, encoding_format="float")
    assert [d.index for d in floats.data] == list(range(len(DOCS)))
    assert cosines([d.embedding for d in floats.data], expected.vectors).min() >= 0.9999
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == expected.total_tokens
    assert floats.model == NAME
    # The client's own default: base64 on the wire, decoded by the client.
    default = client.embeddings.create(model=NAME, input=DOCS)
    assert cosines([d.embedding for d in default.data], expected.vectors).min() >= 0.9999
    raw = client.embeddings.create(model=NAME, input=DOCS[:2], encoding_format="base64")
    decoded = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data]
    assert cosines(decoded, expected.vectors[:2]).min() >= 0.9999
    # The query prompt through the extension field.
    query = client.embeddings.create(model=NAME, input=[QUERY], extra_body={"input_type": "query"})
    assert cosines([query.data[0].embedding], local.embed([QUERY], prompt_type="query").vectors)[0] >= 0.9999


async def test_async_openai_client_concurrent_requests_keep_order(server, local):
    import openai

    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    batches = [DOCS[i:] + DOCS[:i] for i in range(len(DOCS))]
    responses = await asyncio.gather(*(client.embeddings.create(model=NAME, input=b) for b in batches))
    for batch, response in zip(batches, responses, strict=True):
        got = [d.embedding for d in sorted(response.data, key=lambda d: d.index)]
        assert cosines(got, local.embed(batch).vectors).min() >= 0.9999
    await client.close()


@pytest.mark.parametrize("token_ids", [True, False], ids=["token-ids", "text"])
def test_langchain_openai_embeddings_feed_a_vector_store(server, local, tiktoken_cache, token_ids):
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_openai import OpenAIEmbeddings

    # Defaults: LangChain tokenizes with tiktoken's cl100k_base and sends token ids.
    embeddings = OpenAIEmbeddings(
        model=NAME, base_url=f"{server.url}/v1", api_key=KEY, check_embedding_ctx_length=token_ids
    )
    store = InMemoryVectorStore.from_texts(DOCS, embeddings)
    found = [doc.page_content for doc in store.similarity_search(QUERY, k=len(DOCS))]
    # OpenAI's shape has no query flag: LangChain's queries get the document prompt, so the
    # in-process ranking to match is the document prompt's.
    vectors = local.encode(DOCS)
    expected = [DOCS[i] for i in ranking(local.encode(QUERY), vectors)]
    assert found == expected
    assert cosines(embeddings.embed_documents(DOCS), vectors).min() >= 0.9999


def test_llamaindex_openai_like_and_tei_clients_build_an_index(server, local):
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    expected = [DOCS[i] for i in ranking(local.encode(QUERY), local.encode(DOCS))]
    clients = [
        OpenAILikeEmbedding(model_name=NAME, api_base=f"{server.url}/v1", api_key=KEY, embed_batch_size=4),
        TextEmbeddingsInference(model_name=NAME, base_url=server.url, auth_token=KEY, embed_batch_size=4),
    ]
    for embed_model in clients:
        index = VectorStoreIndex.from_documents([Document(text=d) for d in DOCS], embed_model=embed_model)
        nodes = index.as_retriever(similarity_top_k=len(DOCS)).retrieve(QUERY)
        assert [n.node.get_content() for n in nodes] == expected, type(embed_model).__name__


PROVIDER_INPUT_TYPES = {
    "search_query": "query",
    "search_document": "document",
    "classification": "document",
    "clustering": "document",
    "passage": "document",
    "retrieval.query": "query",
    "retrieval.passage": "document",
    "text-matching": "document",
}


def test_other_providers_input_types_pick_the_prompt_they_name(server, local):
    expected = {kind: local.embed([QUERY], prompt_type=kind).vectors for kind in ("query", "document")}
    assert cosines(expected["query"], expected["document"])[0] < 0.9999  # the two prompts differ here
    for name, kind in PROVIDER_INPUT_TYPES.items():
        body = {"input": [QUERY], "model": NAME, "input_type": name}
        openai_shape = post(f"{server.url}/v1/embeddings", json=body, headers=AUTH)
        assert openai_shape.status_code == 200, (name, openai_shape.text)
        got = [openai_shape.json()["data"][0]["embedding"]]
        assert cosines(got, expected[kind])[0] >= 0.9999, name
        tei_shape = post(f"{server.url}/embed", json={"inputs": [QUERY], "prompt_name": name}, headers=AUTH)
        assert tei_shape.status_code == 200, (name, tei_shape.text)
        assert cosines(tei_shape.json(), expected[kind])[0] >= 0.9999, name


def test_a_named_prompt_on_every_route_and_unknown_names_listed(server, local):
    expected = local.embed([QUERY], prompt_name="topic").vectors
    assert cosines(expected, local.embed([QUERY]).vectors)[0] < 0.9999  # not the document prompt
    body = {"input": [QUERY], "model": NAME, "input_type": "topic"}
    openai_shape = post(f"{server.url}/v1/embeddings", json=body, headers=AUTH)
    assert cosines([openai_shape.json()["data"][0]["embedding"]], expected)[0] >= 0.9999
    tei_shape = post(f"{server.url}/embed", json={"inputs": [QUERY], "prompt_name": "topic"}, headers=AUTH)
    assert cosines(tei_shape.json(), expected)[0] >= 0.9999
    tokens = post(f"{server.url}/tokenize", json={"inputs": "x", "prompt_name": "topic"}, headers=AUTH).json()[0]
    assert "".join(t["text"] for t in tokens if not t["special"]).startswith("The topic of:")
    unknown = post(f"{server.url}/v1/embeddings", json={**body, "input_type": "topics"}, headers=AUTH)
    assert unknown.status_code == 400
    error = unknown.json()["error"]
    assert error["param"] == "input_type"
    assert error["message"].startswith(
        "unknown input_type 'topics'; known: 'topic', 'document', 'query', 'search_document'"
    )
    tei_unknown = post(f"{server.url}/embed", json={"inputs": [QUERY], "prompt_name": "topics"}, headers=AUTH)
    assert tei_unknown.status_code == 422 and tei_unknown.json()["error_type"] == "Validation"
    assert "unknown prompt_name 'topics'; known: 'topic'" in tei_unknown.json()["error"]


def test_embedding_types_in_json_and_base64(server, local):
    import openai

    kinds = ["float", "float16", "int8", "uint8", "binary", "ubinary"]
    body = {"input": DOCS, "model": NAME, "embedding_types": kinds}
    as_json = post(f"{server.url}/v1/embeddings", json=body, headers=AUTH)
    assert as_json.status_code == 200, as_json.text
    items = [d["embedding"] for d in as_json.json()["data"]]
    as_base64 = [
        d["embedding"]
        for d in post(f"{server.url}/v1/embeddings", json={**body, "encoding_format": "base64"}, headers=AUTH).json()[
            "data"
        ]
    ]
    # The server fitted the int8 ranges into the cache this embedder shares: the same ranges here.
    floats = local.encode(DOCS)
    dtypes = {"float": "<f4", "float16": "<f2", "int8": "i1", "uint8": "u1", "binary": "i1", "ubinary": "u1"}
    for kind in kinds:
        got = np.array([item[kind] for item in items])
        decoded = np.stack([np.frombuffer(base64.b64decode(item[kind]), dtype=dtypes[kind]) for item in as_base64])
        np.testing.assert_array_equal(decoded, got.astype(decoded.dtype))  # one set of numbers, two encodings
        expected = local.quantize(floats, "float32" if kind == "float" else kind)
        assert got.shape == expected.shape, kind
        if kind in ("float", "float16"):
            np.testing.assert_allclose(got, expected, atol=2e-3)
        elif kind in ("int8", "uint8"):  # another batch may round a value at a level's edge the other way
            assert np.abs(got - expected.astype(np.int16)).max() <= 1, kind
        else:
            as_bits = [np.unpackbits(np.asarray(a, dtype=np.int16).astype(np.uint8), axis=1) for a in (got, expected)]
            assert (as_bits[0] == as_bits[1]).mean() > 0.99, kind
    # What the openai client hands back for an explicit encoding_format: each item's object as sent.
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    response = client.embeddings.create(
        model=NAME, input=DOCS[:2], encoding_format="float", extra_body={"embedding_types": ["int8", "binary"]}
    )
    first = response.data[0].embedding
    assert isinstance(first, dict) and set(first) == {"int8", "binary"}
    assert len(first["int8"]) == local.dimension and len(first["binary"]) == -(-local.dimension // 8)
    refused = post(f"{server.url}/v1/embeddings", json={**body, "embedding_types": ["int4"]}, headers=AUTH)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "embedding_types"


def test_model_may_be_left_out_and_teis_path_without_v1_answers_the_same(server, local):
    # TEI's OpenAI route serves its one model when `model` is left out, and also answers at /embeddings.
    bare = post(f"{server.url}/v1/embeddings", json={"input": DOCS[:2]}, headers=AUTH)
    assert bare.status_code == 200, bare.text
    assert bare.json()["model"] == NAME
    assert cosines([d["embedding"] for d in bare.json()["data"]], local.encode(DOCS[:2])).min() > 0.9999
    short = post(f"{server.url}/embeddings", json={"input": DOCS[:2], "model": NAME}, headers=AUTH)
    assert short.status_code == 200 and short.json()["data"] == bare.json()["data"]
    # The model's own path is accepted as its name too, and named in the answer.
    aliased = post(f"{server.url}/v1/embeddings", json={"input": "a", "model": local.name}, headers=AUTH)
    assert aliased.status_code == 200 and aliased.json()["model"] == local.name
