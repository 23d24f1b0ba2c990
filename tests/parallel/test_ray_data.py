"""Ray Data (the ``ray`` extra): a local Ray with 2 CPU actors embeds real documents like
KVEmbedder.encode; the ``kv-embed embed-dataset`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pydoc_data.topics import topics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.data
from helpers import PAPER, PAPER_ARGS

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.cli import main
from kv_embeddings_integrations.parallel.ray_data import embed_dataset

pytestmark = [pytest.mark.ray, pytest.mark.timing]


def _documents(count: int = 300) -> list[dict]:
    """Paragraphs of the Python Language Reference (shipped with CPython), with ids."""
    paragraphs = [p.strip() for text in topics.values() for p in text.split("\n\n") if len(p.strip()) > 40]
    return [{"id": f"doc-{i:04d}", "text": p[:1500]} for i, p in enumerate(paragraphs[:count])]


def _write_jsonl(path, docs: list[dict]) -> None:
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n", encoding="utf-8")


def test_command_line_embeds_a_directory_in_order(model_dir, tmp_path):
    # First in this module: the command starts (and stops) a local Ray of its own.
    docs = _documents(90)
    source = tmp_path / "in"
    source.mkdir()
    _write_jsonl(source / "part-0.jsonl", docs[:50])
    _write_jsonl(source / "part-1.jsonl", docs[50:])
    (source / "_SUCCESS").write_text("")  # what other tools leave beside their output: skipped
    (source / "_temporary").mkdir()
    _write_jsonl(source / "_temporary" / "part-9.jsonl", docs[:3])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "kv_embeddings_integrations.cli", "embed-dataset", "--model", str(model_dir)]
    command += ["--input", str(source), "--output", str(out), "--layers", "1,2", "--concurrency", "2", *PAPER_ARGS]
    env = {**os.environ, "KV_EMBED_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote embeddings to {out}" in done.stderr
    table = pq.read_table(str(out))
    rows = table.to_pylist()
    embedder = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], **PAPER)
    expected = embedder.encode([d["text"] for d in docs])
    _check(rows, docs, expected)
    _search_in_lancedb_and_duckdb(out, embedder, docs, tmp_path / "lancedb")


def _search_in_lancedb_and_duckdb(out, embedder: KVEmbedder, docs: list[dict], lance_dir) -> None:
    """The README's second command: the Parquet output loaded into LanceDB and DuckDB, searched."""
    import duckdb
    import lancedb

    from kv_embeddings_integrations.stores import EmbedderMismatchError, verify_arrow_schema

    files = sorted(str(p) for p in out.glob("*.parquet"))
    # Every file's embedding column names the embedder that made it, and it is this one.
    for path in files:
        assert verify_arrow_schema(pq.read_schema(path), embedder)["layers"] == [1, 2]
    other = KVEmbedder(embedder.model, embedder.tokenizer, layers=[2, 3], **PAPER)
    with pytest.raises(EmbedderMismatchError, match=r"layers: stored \[1, 2\], now \[2, 3\]"):
        verify_arrow_schema(pq.read_schema(files[0]), other)

    whole = pq.read_table(str(out))  # the directory, as the README reads it
    verify_arrow_schema(whole.schema, embedder)
    stored = np.stack(whole.column("embedding").to_numpy(zero_copy_only=False))
    query = embedder.encode(["the with statement and context managers"], prompt_type="query")[0]
    cosines = stored @ query
    row_ids = whole.column("id").to_pylist()
    expected = [row_ids[i] for i in np.argsort(-cosines, kind="stable")[:5]]

    table = lancedb.connect(str(lance_dir)).create_table("docs", data=whole)
    reopened = lancedb.connect(str(lance_dir)).open_table("docs")
    verify_arrow_schema(reopened.schema, embedder)  # the record survives into the LanceDB table
    hits = reopened.search(query).distance_type("cosine").limit(5).to_list()
    assert table.count_rows() == len(docs) and [h["id"] for h in hits] == expected
    np.testing.assert_allclose([h["_distance"] for h in hits], 1 - np.sort(cosines)[::-1][:5], atol=1e-5)

    dim = embedder.dimension
    sql = (
        f"SELECT id, array_cosine_similarity(embedding::FLOAT[{dim}], $q::FLOAT[{dim}]) AS score "
        f"FROM read_parquet('{out}/*.parquet') ORDER BY score DESC LIMIT 5"
    )
    found = duckdb.sql(sql, params={"q": query.tolist()}).fetchall()
    assert [i for i, _ in found] == expected
    np.testing.assert_allclose([s for _, s in found], np.sort(cosines)[::-1][:5], atol=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "{tmp}/nothing-*.jsonl"], "no input files match"),
        (["--input", "{tmp}/in.txt"], "cannot tell the input format"),
        (["--input", "{tmp}/in.jsonl", "--output", "{tmp}"], "output directory is not empty"),
        (["--input", "{tmp}/in.jsonl", "--bias", "x"], "invalid float value"),
        (["--input", "{tmp}/in.jsonl", "--layers", "-1"], "layers"),
    ],
)
def test_command_line_errors_before_starting_ray(args, message, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "in.txt").write_text("a\n")
    argv = ["embed-dataset", "--output", str(tmp_path / "new")] + [a.format(tmp=tmp_path) for a in args]
    try:
        status = main(argv)
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("ray-cache"))
    ray.init(
        # 2 one-CPU actors, and a CPU slot for the readers and writers (they are Ray tasks too).
        num_cpus=3,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"KV_EMBED_CACHE": cache, "OMP_NUM_THREADS": "1"}},
    )
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    yield
    ray.shutdown()


def _check(rows: list[dict], docs: list[dict], expected: np.ndarray) -> None:
    assert [r["id"] for r in rows] == [d["id"] for d in docs]  # ids and order preserved
    got = np.stack([r["embedding"] for r in rows])
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, cosine.min()


def test_two_actors_match_local_encode(local_ray, model_dir):
    docs = _documents()
    ds = ray.data.from_items(docs, override_num_blocks=8)
    out = embed_dataset(ds, model=str(model_dir), layers=[1, 2], concurrency=2, batch_size=32, **PAPER)
    expected = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], **PAPER).encode([d["text"] for d in docs])
    _check(out.take_all(), docs, expected)


def test_files_in_and_out_with_automatic_layers(local_ray, model_dir, tmp_path, monkeypatch):
    docs = _documents(120)
    source = tmp_path / "in"
    source.mkdir()
    _write_jsonl(source / "docs.jsonl", docs)
    ds = ray.data.read_json(str(source / "docs.jsonl"))
    out = embed_dataset(ds, model=str(model_dir), prompt_type="query", concurrency=2, batch_size=16, **PAPER)
    out.write_parquet(str(tmp_path / "out"))
    files = sorted(tmp_path.glob("out/*.parquet"))
    assert files
    column = pq.read_table(files[0]).schema.field("embedding").type  # what any Parquet reader sees
    assert pa.types.is_fixed_size_list(column) and column.list_size == 64, column
    assert column.value_type == pa.float32()
    rows = ray.data.read_parquet(str(tmp_path / "out")).take_all()
    monkeypatch.setenv("KV_EMBED_CACHE", ray.get_runtime_context().runtime_env["env_vars"]["KV_EMBED_CACHE"])
    local = KVEmbedder.from_pretrained(str(model_dir), **PAPER)  # reads the selection the Ray task cached
    assert local.layer_selection.from_cache
    _check(rows, docs, local.encode([d["text"] for d in docs], prompt_type="query"))


def test_named_prompts_and_precision_set_the_column(local_ray, model_dir, monkeypatch):
    docs = _documents(40)
    prompts = {"topic": "The topic of: {text}"}
    # The retrieval default's vectors: 64 dense columns and the 4096-column lexical half, the actors'
    # equal to the local embedder's.
    width_of = {"int8": 64 + 4096, "ubinary": (64 + 4096) // 8}
    for precision, arrow_type in (("int8", pa.int8()), ("ubinary", pa.uint8())):
        width = width_of[precision]
        out = embed_dataset(
            ray.data.from_items(docs, override_num_blocks=4),
            model=str(model_dir),
            layers=[1, 2],
            prompts=prompts,
            prompt_name="topic",
            precision=precision,
        )
        table = pa.concat_tables(ray.get(out.to_arrow_refs()))
        column = table.schema.field("embedding")
        assert column.type.value_type == arrow_type and column.type.list_size == width, column.type
        identity = json.loads(column.metadata[b"kv_embed_identity"])
        assert identity["quantization"]["precision"] == precision and identity["named_templates"] == prompts
        got = dict(zip(table.column("id").to_pylist(), table.column("embedding").to_pylist(), strict=True))
        # The driver fitted the ranges through the cache the actors share: the same ones here.
        monkeypatch.setenv("KV_EMBED_CACHE", ray.get_runtime_context().runtime_env["env_vars"]["KV_EMBED_CACHE"])
        local = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], prompts=prompts)
        if precision == "int8":
            assert identity["quantization"]["ranges_sha256"] == local.quantization_ranges.digest()
        expected = local.encode([d["text"] for d in docs], prompt_name="topic", precision=precision)
        rows = np.stack([got[d["id"]] for d in docs]).astype(np.int16)
        # Another process may round a value at a level's (or zero's) edge the other way: at most one level.
        if precision == "int8":
            assert np.abs(rows - expected).max() <= 1 and (rows == expected).mean() > 0.99
        else:
            bits = np.unpackbits(rows.astype(np.uint8), axis=1), np.unpackbits(expected, axis=1)
            assert (bits[0] == bits[1]).mean() > 0.99


def test_a_cpu_actor_runs_one_torch_thread_per_reserved_cpu(local_ray, model_dir):
    from kv_embeddings_integrations.parallel.ray_data import DatasetEmbedder

    threads = {}
    for cpus in (1, 2):
        actor = ray.remote(num_cpus=cpus)(DatasetEmbedder).remote(
            str(model_dir), {"layers": [1], "device": "cpu", **PAPER}, "text", "embedding", "document", True
        )
        threads[cpus] = ray.get(actor.__ray_call__.remote(lambda self: __import__("torch").get_num_threads()))
        ray.kill(actor)
    assert threads == {1: 1, 2: 2}


def test_bad_arguments_fail_before_any_actor_starts(local_ray, model_dir):
    ds = ray.data.from_items([{"text": "a"}])
    with pytest.raises(ValueError, match="unknown prompt name 'summary'; known: 'document', 'query'"):
        embed_dataset(ds, model=str(model_dir), prompt_type="summary")
    with pytest.raises(ValueError, match="needs normalize=True"):
        embed_dataset(ds, model=str(model_dir), precision="int8", normalize=False)
    with pytest.raises(ValueError, match="concurrency"):
        embed_dataset(ds, model=str(model_dir), concurrency=0)
    with pytest.raises(ValueError):
        embed_dataset(ds, model=str(model_dir), method="nope")
    with pytest.raises(TypeError, match="ray.data.Dataset"):
        embed_dataset([{"text": "a"}], model=str(model_dir))
    with pytest.warns(UserWarning, match="leaving none for reading and writing"):
        embed_dataset(ds, model=str(model_dir), layers=[1], concurrency=3)  # 3 CPUs: all taken by actors
    missing = embed_dataset(ray.data.from_items([{"body": "a"}]), model=str(model_dir), layers=[1], **PAPER)
    with pytest.raises(Exception, match="no column 'text'"):
        missing.take_all()
    rows = [{"id": "d1", "text": "a"}, {"id": "d2", "text": None}]
    null = embed_dataset(ray.data.from_items(rows), model=str(model_dir), layers=[1], **PAPER)
    with pytest.raises(Exception, match=r"column 'text' is None, not str, in the row \{'id': 'd2'\}"):
        null.take_all()
