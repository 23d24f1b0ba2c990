"""What the LangChain and LlamaIndex adapters share (``integrations/adapter.py``): one model across
equivalent spellings and adapters, the input contracts, coalesced async calls, post-processing."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from helpers import PAPER, TEXTS, make_model, tiny_model_dir

from kv_embeddings_integrations import KVEmbedder, KVEmbedding, KVEmbeddings, LoadOptions
from kv_embeddings_integrations.integrations import adapter

QUERIES = [f"{text} ({i})" for i, text in enumerate(TEXTS * 13)][:64]
FIT_TEXTS = [f"sentence number {i} talks about {topic}" for i in range(12) for topic in ("cats", "rain", "code")]


@pytest.fixture
def embedder(tokenizer):
    return KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], **PAPER)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KV_EMBED_CACHE", str(tmp_path))
    return tmp_path


def test_equivalent_spellings_share_one_model_and_others_do_not():
    # A directory of its own: the process-wide cache must not hand back a model that another test
    # in this worker loaded (with another spelling of its options) from the shared one.
    path = tiny_model_dir.__wrapped__()
    first = adapter.shared_embedder(LoadOptions(model=path, dtype="float32", device="cpu"), _config())
    same = adapter.shared_embedder(path, _config(), {"dtype": torch.float32, "device": torch.device("cpu")})
    assert same is first  # same weights, same options: one embedder
    other_options = adapter.shared_embedder(path, _config(bias=0.5), {"dtype": "float32", "device": "cpu"})
    assert other_options is not first and other_options.model is first.model  # still one model
    other_dtype = adapter.shared_embedder(path, _config(), {"dtype": "bfloat16", "device": "cpu"})
    assert other_dtype.model is not first.model and other_dtype.dtype == torch.bfloat16
    assert first.load_options == LoadOptions(model=path, dtype="float32", device="cpu")


def test_both_adapters_share_one_model_across_spellings():
    from kv_embeddings_integrations import KVEmbedding, KVEmbeddings

    path = tiny_model_dir()
    langchain = KVEmbeddings(model=path, layers=[1, 2], model_kwargs={"dtype": "float32", "device": "cpu"}, **PAPER)
    llama = KVEmbedding(model=path, layers=[1, 2], model_kwargs={"dtype": torch.float32, "device": "cpu"}, **PAPER)
    assert langchain.client is llama.client
    assert langchain.load_options == llama.load_options
    with pytest.raises(ValueError, match="dtype must be a torch dtype"):
        KVEmbeddings(model=path, model_kwargs={"dtype": "bf16"}, **PAPER)


def _config(**options):
    from kv_embeddings_integrations import EmbedderConfig

    return EmbedderConfig(layers=[1, 2], **options)


def test_adapters_keep_their_contracts(embedder):
    langchain = KVEmbeddings(embedder=embedder, **PAPER)
    llama = KVEmbedding(embedder=embedder, **PAPER)
    assert langchain.embed_documents([]) == []
    docs = langchain.embed_documents(["", "  ", "text"])
    assert len(docs) == 3 and all(isinstance(v, list) and len(v) == embedder.hidden_size for v in docs)
    with pytest.raises(TypeError, match="list of strings, got one str"):
        langchain.embed_documents("abc")
    with pytest.raises(TypeError, match=r"texts\[1\] is None"):
        langchain.embed_documents(["ok", None])
    with pytest.raises(TypeError, match="expects a str"):
        langchain.embed_query(None)
    with pytest.raises(TypeError, match=r"texts\[0\] is int"):
        asyncio.run(langchain.aembed_documents([1]))
    assert llama.get_text_embedding_batch([]) == []
    with pytest.raises(TypeError, match="list of strings, got one str"):
        llama.get_text_embedding_batch("abc")
    with pytest.raises(TypeError, match="list of strings, got one str"):
        asyncio.run(llama.aget_text_embedding_batch("abc"))
    batch = llama.get_text_embedding_batch(["", "text", "\ud800"])
    assert len(batch) == 3 and all(len(v) == embedder.hidden_size for v in batch)
    with pytest.raises(TypeError, match=r"texts\[1\] is None"):
        llama.get_text_embedding_batch(["ok", None])


@pytest.mark.timing
def test_adapters_coalesce_async_calls(embedder):
    langchain = KVEmbeddings(embedder=embedder, **PAPER)
    llama = KVEmbedding(embedder=embedder, **PAPER)
    expected = [langchain.embed_query(q) for q in QUERIES[:16]]

    async def burst():
        lc = asyncio.gather(*(langchain.aembed_query(q) for q in QUERIES[:16]))
        li = asyncio.gather(*(llama.aget_query_embedding(q) for q in QUERIES[:16]))
        return await lc, await li, await langchain.aembed_documents(TEXTS)

    lc, li, docs = asyncio.run(burst())
    np.testing.assert_allclose(np.array(lc), np.array(expected), atol=1e-5)
    np.testing.assert_allclose(np.array(li), np.array(expected), atol=1e-5)
    np.testing.assert_allclose(np.array(docs), np.array(langchain.embed_documents(TEXTS)), atol=1e-5)
    assert isinstance(lc[0], list) and isinstance(lc[0][0], float)
    with pytest.raises(TypeError, match="list of strings"):
        asyncio.run(langchain.aembed_documents("abc"))


@pytest.mark.usefixtures("private_cache")  # as in its post-processing module: a cache of its own
def test_adapters_take_postprocessing(tokenizer):
    from helpers import tiny_model_dir

    from kv_embeddings_integrations.integrations.langchain import KVEmbeddings
    from kv_embeddings_integrations.integrations.llama_index import KVEmbedding

    options = dict(method="prompteol", postprocess="pca", dimensions=8, postprocess_texts=FIT_TEXTS, lexical="none")
    lc = KVEmbeddings(model=tiny_model_dir(), model_kwargs={"device": "cpu"}, **options)
    li = KVEmbedding(model=tiny_model_dir(), model_kwargs={"device": "cpu"}, **options)
    assert len(lc.embed_query("a question")) == 8
    np.testing.assert_allclose(lc.embed_documents(TEXTS[:2]), li.get_text_embedding_batch(TEXTS[:2]), atol=1e-6)


def test_adapters_share_one_model():
    langchain = KVEmbeddings(model=tiny_model_dir(), layers=[2], **PAPER)
    llama = KVEmbedding(model=tiny_model_dir(), layers=[2], **PAPER)
    assert langchain.client is llama.client  # same options: one embedder
    other = KVEmbedding(model=tiny_model_dir(), method="prompteol")
    assert other.client is not llama.client and other.client.model is llama.client.model  # one model
    separate = KVEmbedding(model=tiny_model_dir(), layers=[2], model_kwargs={"dtype": "bfloat16"}, **PAPER)
    assert separate.client.model is not llama.client.model


def test_adapters_take_named_prompts(tokenizer):
    # sentence-transformers' prompts / prompt_name: a task prompt of the user's for one side.
    prompts = {"topic": "Name the topic of: {text}"}
    core = KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], prompts=prompts, **PAPER)
    topic = core.encode(TEXTS, prompt_name="topic")
    as_query = core.encode(TEXTS[:1], prompt_name="search_query")
    for adapter_class in (KVEmbeddings, KVEmbedding):
        made = adapter_class(embedder=core, document_prompt_name="topic", query_prompt_name="search_query")
        documents = (
            made.embed_documents(TEXTS) if adapter_class is KVEmbeddings else made.get_text_embedding_batch(TEXTS)
        )
        query = made.embed_query(TEXTS[0]) if adapter_class is KVEmbeddings else made.get_query_embedding(TEXTS[0])
        np.testing.assert_allclose(documents, topic, atol=1e-6)
        np.testing.assert_allclose(query, as_query[0], atol=1e-6)
        with pytest.raises(ValueError, match="unknown document_prompt_name 'topc'; known: 'topic', 'document'"):
            adapter_class(embedder=core, document_prompt_name="topc")
