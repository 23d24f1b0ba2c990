"""The kv-embed command line, on a tiny model saved to a directory."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import PAPER, PAPER_ARGS, TEXTS, tiny_model_dir

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.cli import main


def _embed_argv(model_dir, *args: str) -> list[str]:
    """``kv-embed embed`` on the tiny model with the paper preset (what these tests were written for)."""
    return ["embed", "--model", str(model_dir), *PAPER_ARGS, *args]


def test_embed_txt_and_jsonl(model_dir, tmp_path, capsys):
    txt = tmp_path / "texts.txt"
    txt.write_text("\n".join(TEXTS), encoding="utf-8")
    out = tmp_path / "out.npy"
    assert main(_embed_argv(model_dir, "--layers", "1,2", "--input", str(txt), "--output", str(out))) == 0
    vectors = np.load(out)
    assert vectors.shape == (len(TEXTS), 64) and vectors.dtype == np.float32
    expected = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], **PAPER).encode(TEXTS)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)

    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "body": t}) for i, t in enumerate(TEXTS)), encoding="utf-8")
    out_q = tmp_path / "q.npy"
    args = _embed_argv(model_dir, "--layers", "1,2", "--input", str(jsonl), "--text-field", "body")
    assert main([*args, "--output", str(out_q), "--prompt-type", "query"]) == 0
    queries = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], **PAPER).encode(TEXTS, prompt_type="query")
    np.testing.assert_allclose(np.load(out_q), queries, atol=1e-5)


@pytest.mark.processes
def test_embed_data_parallel_budget_and_device_map(model_dir, tmp_path):
    txt = tmp_path / "texts.txt"
    txt.write_text("\n".join(TEXTS * 3), encoding="utf-8")
    expected = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], **PAPER).encode(TEXTS * 3)
    base = _embed_argv(model_dir, "--layers", "1,2", "--input", str(txt))
    runs = {
        "pool": ["--devices", "cpu", "cpu"],
        "budget": ["--max-tokens-per-batch", "64"],
        "map": ["--device-map", "auto"],
    }
    for name, extra in runs.items():
        out = tmp_path / f"{name}.npy"
        assert main([*base, "--output", str(out), *extra]) == 0
        np.testing.assert_allclose(np.load(out), expected, atol=1e-5, err_msg=name)


def test_similarity(model_dir, capsys):
    assert (
        main(["similarity", "--model", str(model_dir), "--method", "mean", "--postprocess", "none", TEXTS[0], TEXTS[1]])
        == 0
    )
    score = float(capsys.readouterr().out)
    a, b = KVEmbedder.from_pretrained(str(model_dir), method="mean", postprocess="none").encode(TEXTS[:2])
    assert abs(score - float(a @ b)) < 1e-3


@pytest.mark.parametrize(
    "setup,args,message",
    [
        (None, ["--input", "{tmp}/missing.txt"], "input file not found"),
        ("", ["--input", "{tmp}/in.txt"], "input file has no texts"),
        ("a\nb", ["--input", "{tmp}/in.txt", "--output", "{tmp}/out.csv"], "must end in .npy"),
        ("a\nb", ["--input", "{tmp}/in.txt", "--output", "{tmp}/nodir/out.npy"], "output directory does not exist"),
        ("a\nb", ["--input", "{tmp}/in.txt", "--model", "{tmp}/no-such-model"], "cannot load model"),
        ("a\nb", ["--input", "{tmp}/in.txt", "--layers", "99"], "out of range"),
        ("a\nb", ["--input", "{tmp}/in.txt", "--devices", "cpu", "nonsense"], "devices[1]"),
        ("a\nb", ["--input", "{tmp}/in.txt", "--prompt-name", "topic"], "unknown --prompt-name 'topic'; known:"),
        ("a\nb", ["--input", "{tmp}/in.txt", "--prompt", "topic"], "--prompt takes NAME=TEMPLATE"),
        ("a\nb", ["--input", "{tmp}/in.txt", "--precision", "int8", "--no-normalize"], "needs normalize=True"),
    ],
)
def test_clear_errors(model_dir, tmp_path, capsys, setup, args, message):
    if setup is not None:
        (tmp_path / "in.txt").write_text(setup, encoding="utf-8")
    argv = _embed_argv(model_dir, "--output", str(tmp_path / "out.npy"))
    argv += [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_embed_with_a_named_prompt_in_each_precision(model_dir, tmp_path):
    txt = tmp_path / "texts.txt"
    txt.write_text("\n".join(TEXTS), encoding="utf-8")
    prompts = {"topic": "The topic of: {text}"}
    core = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], prompts=prompts)
    for precision in ("float32", "int8", "binary"):
        out = tmp_path / f"{precision}.npy"
        argv = ["embed", "--model", str(model_dir), "--layers", "1,2", "--prompt", "topic=" + prompts["topic"]]
        argv += ["--prompt-name", "topic", "--precision", precision, "--input", str(txt), "--output", str(out)]
        assert main(argv) == 0
        expected = core.encode(TEXTS, prompt_name="topic", precision=precision)
        got = np.load(out)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-5)  # quantized: the same levels and bits


def test_bad_jsonl_line(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"title": "no text"}\n', encoding="utf-8")
    assert main(_embed_argv(model_dir, "--input", str(bad), "--output", str(tmp_path / "o.npy"))) == 2
    assert "bad.jsonl:2: no string field 'text'" in capsys.readouterr().err


def test_bad_option_is_rejected_by_argparse(model_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "embed",
                "--model",
                str(model_dir),
                "--method",
                "bogus",
                "--input",
                "x.txt",
                "--output",
                "o.npy",
            ]
        )
    assert exit_info.value.code == 2


def test_select_layers_prints_curve_and_plots(model_dir, tmp_path, capsys):
    from helpers import CORPUS

    texts = tmp_path / "calibration.txt"
    texts.write_text("\n".join(f"{a} {b}" for a in CORPUS for b in TEXTS), encoding="utf-8")
    plot = tmp_path / "id.png"
    argv = ["select-layers", "--model", str(model_dir), "--method", "kv", "--texts", str(texts), "--plot", str(plot)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "calibration: user (40 texts)" in out and "(computed)" in out
    rows = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3] and all(float(r[1]) > 0 for r in rows)
    chosen = [int(r[0]) for r in rows if "re-routed" in " ".join(r)]
    assert out.strip().splitlines()[-3] == f"chosen layers: {','.join(map(str, chosen))}"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The same selection now comes from the cache, and KVEmbedder(layers="auto") agrees.
    assert main(argv[:-2]) == 0
    assert "(cache)" in capsys.readouterr().out
    lines = texts.read_text(encoding="utf-8").splitlines()
    assert KVEmbedder.from_pretrained(str(model_dir), calibration_texts=lines, **PAPER).layers == chosen


def test_select_layers_needs_enough_texts(model_dir, tmp_path, capsys):
    texts = tmp_path / "few.txt"
    texts.write_text("one\ntwo\nthree\n", encoding="utf-8")
    assert main(["select-layers", "--model", str(model_dir), "--texts", str(texts)]) == 2
    assert "at least 20 distinct calibration texts, got 3" in capsys.readouterr().err


def test_a_crashed_embed_run_resumes_from_its_finished_chunks(model_dir, tmp_path, monkeypatch):
    texts = [f"{TEXTS[i % len(TEXTS)]} ({i})" for i in range(23)]
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts), encoding="utf-8")
    out = tmp_path / "out.npy"
    args = _embed_argv(model_dir, "--layers", "1,2", "--input", str(source), "--output", str(out))
    args += ["--chunk-size", "5"]
    calls: list[int] = []
    original = KVEmbedder.embed  # what kv-embed embed calls per chunk

    def crash_on_third_chunk(self, chunk, **kwargs):
        calls.append(len(chunk))
        if calls == [5, 5, 5]:
            raise RuntimeError("power cut")
        return original(self, chunk, **kwargs)

    monkeypatch.setattr(KVEmbedder, "embed", crash_on_third_chunk)
    with pytest.raises(RuntimeError, match="power cut"):
        main(args)
    partial = tmp_path / "out.npy.partial"
    assert sorted(p.name for p in partial.glob("chunk-*.npy")) == ["chunk-000000.npy", "chunk-000001.npy"]
    assert not out.exists()
    assert main(args) == 2  # without --resume the earlier work is neither lost nor mixed in
    calls.clear()
    assert main([*args, "--resume"]) == 0
    assert calls == [5, 5, 3]  # only the three missing chunks
    assert not partial.exists()
    monkeypatch.setattr(KVEmbedder, "embed", original)
    expected = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], **PAPER).encode(texts)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)  # complete and in order
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain np.save would leave it


def test_resume_refuses_another_run(model_dir, tmp_path, monkeypatch, capsys):
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(TEXTS), encoding="utf-8")
    out = tmp_path / "out.npy"
    args = _embed_argv(model_dir, "--layers", "1,2", "--input", str(source), "--output", str(out))
    monkeypatch.setattr(KVEmbedder, "embed", lambda self, texts, **kw: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError):
        main([*args, "--chunk-size", "2"])
    monkeypatch.undo()
    assert main([*args, "--chunk-size", "2", "--resume", "--layers", "1"]) == 2
    assert "differs in layers" in capsys.readouterr().err
    source.write_text("\n".join(TEXTS[::-1]), encoding="utf-8")
    assert main([*args, "--chunk-size", "2", "--resume"]) == 2
    assert "differs in sha256" in capsys.readouterr().err


def test_resume_refuses_changed_weights_under_the_same_name(tmp_path, monkeypatch, capsys):
    # A checkpoint overwritten in place (a fine-tune saved over the folder) keeps the name the run
    # was started with; resuming would mix two models' vectors in one file.
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir(), model_dir)
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(TEXTS), encoding="utf-8")
    out = tmp_path / "out.npy"
    args = _embed_argv(model_dir, "--layers", "1,2", "--input", str(source), "--output", str(out), "--chunk-size", "2")
    original, calls = KVEmbedder.embed, []

    def stop_after_one_chunk(self, chunk, **kwargs):
        calls.append(len(chunk))
        if len(calls) == 2:
            raise RuntimeError("stop")
        return original(self, chunk, **kwargs)

    monkeypatch.setattr(KVEmbedder, "embed", stop_after_one_chunk)
    with pytest.raises(RuntimeError, match="stop"):
        main(args)
    monkeypatch.undo()
    partial = tmp_path / "out.npy.partial"
    assert [p.name for p in partial.glob("chunk-*.npy")] == ["chunk-000000.npy"]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    model.save_pretrained(model_dir)
    assert main([*args, "--resume"]) == 2
    assert "differs in weights" in capsys.readouterr().err
    assert not out.exists()
    assert [p.name for p in partial.glob("chunk-*.npy")] == ["chunk-000000.npy"]  # kept, nothing mixed in


def test_option_choices_and_defaults_come_from_the_config():
    import typing

    from kv_embeddings_integrations import EmbedderConfig
    from kv_embeddings_integrations.cli import build_parser
    from kv_embeddings_integrations.cli.options import MODEL_OPTIONS, embedder_config

    parser = build_parser()
    args = parser.parse_args(["embed", "--input", "x.txt", "--output", "x.npy"])
    # No option given: exactly the config's defaults.
    assert embedder_config(args) == EmbedderConfig()
    embed = next(a for a in parser._actions if a.dest == "command").choices["embed"]  # argparse's own, on purpose
    actions = {a.dest: a for a in embed._actions}
    for name in MODEL_OPTIONS:
        field = EmbedderConfig.model_fields[name]
        assert actions[name].default == field.default, name
        literals = [a for a in (field.annotation, *typing.get_args(field.annotation)) if typing.get_origin(a)]
        literals = [a for a in literals if typing.get_origin(a) is typing.Literal]
        if literals and name != "layers":
            assert tuple(actions[name].choices) == typing.get_args(literals[0]), name


def test_embed_reports_tokens_and_truncated_texts(model_dir, tmp_path, capsys):
    from kv_embeddings_integrations import KVEmbedder as Core

    source = tmp_path / "texts.txt"
    source.write_text("\n".join(["a", " ".join(TEXTS * 4)]), encoding="utf-8")
    args = _embed_argv(model_dir, "--layers", "1", "--max-length", "24", "--input", str(source))
    assert main([*args, "--output", str(tmp_path / "out.npy")]) == 0
    err = capsys.readouterr().err
    expected = Core.from_pretrained(str(model_dir), layers=[1], max_length=24, **PAPER).embed(
        ["a", " ".join(TEXTS * 4)]
    )
    assert expected.truncated == (False, True)
    assert "1 of 2 texts were longer than max_length=24" in err
    assert f"({expected.total_tokens} tokens embedded by this run)" in err


def test_embed_with_a_family_and_post_processing(model_dir, tmp_path):
    from helpers import CORPUS

    txt = tmp_path / "texts.txt"
    txt.write_text("\n".join(TEXTS), encoding="utf-8")
    fit = tmp_path / "fit.txt"
    fit_texts = [f"{a} {b}" for a in CORPUS for b in TEXTS]
    fit.write_text("\n".join(fit_texts), encoding="utf-8")
    out = tmp_path / "out.npy"
    argv = [
        "embed",
        "--model",
        str(model_dir),
        "--method",
        "kv_pcot",
        "--layers",
        "1",
        "--postprocess",
        "pca",
    ]
    argv += ["--dimensions", "8", "--postprocess-texts", str(fit), "--input", str(txt), "--output", str(out)]
    assert main(argv) == 0
    core = KVEmbedder.from_pretrained(
        str(model_dir), method="kv_pcot", layers=[1], postprocess="pca", dimensions=8, postprocess_texts=fit_texts
    )
    np.testing.assert_allclose(np.load(out), core.encode(TEXTS), atol=1e-5)


def test_select_layers_measures_the_method_and_stops_at_its_pooled_layer(model_dir, capsys):
    assert main(["select-layers", "--model", str(model_dir), "--method", "kv_pcot"]) == 0
    out = capsys.readouterr().out
    chosen = [int(line.split()[0]) for line in out.splitlines() if "re-routed" in line]
    assert chosen and max(chosen) <= 2  # pcot pools layer 2 of the tiny model's 4
    assert KVEmbedder.from_pretrained(str(model_dir), method="kv_pcot").layers == chosen


def test_serve_options_come_from_the_environment_below_the_flags(monkeypatch):
    from kv_embeddings_integrations.cli import build_parser

    monkeypatch.setenv("KV_EMBED_PORT", "9000")
    monkeypatch.setenv("KV_EMBED_MAX_CLIENT_BATCH_SIZE", "16")
    monkeypatch.setenv("KV_EMBED_DTYPE", "bfloat16")
    monkeypatch.setenv("KV_EMBED_LAYERS", "1,2")
    monkeypatch.setenv("KV_EMBED_TRUST_REMOTE_CODE", "true")
    args = build_parser().parse_args(["serve"])
    assert (args.port, args.max_client_batch_size, args.dtype, args.layers) == (9000, 16, "bfloat16", [1, 2])
    assert args.trust_remote_code is True
    args = build_parser().parse_args(["serve", "--port", "9001", "--dtype", "float32"])  # a flag wins
    assert (args.port, args.dtype, args.max_client_batch_size) == (9001, "float32", 16)
    monkeypatch.delenv("KV_EMBED_PORT")
    assert build_parser().parse_args(["serve"]).port == 8080  # then the default
    # Named prompts: one NAME=TEMPLATE, or a JSON object of them.
    monkeypatch.setenv("KV_EMBED_PROMPT", "topic=Topic: {text}")
    assert build_parser().parse_args(["serve"]).prompt == ["topic=Topic: {text}"]
    monkeypatch.setenv("KV_EMBED_PROMPT", '{"topic": "Topic: {text}", "intent": "Intent: {text}"}')
    assert build_parser().parse_args(["serve"]).prompt == ["topic=Topic: {text}", "intent=Intent: {text}"]


def test_tei_flag_names_are_aliases():
    from kv_embeddings_integrations.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--model-id", "m", "--max-batch-tokens", "4096", "--payload-limit", "100", "--auto-truncate"]
    )
    assert (args.model, args.max_tokens_per_batch, args.max_request_bytes) == ("m", 4096, 100)
    assert args.revision is None and args.trust_remote_code is False


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("KV_EMBED_PORT", "eighty", "$KV_EMBED_PORT='eighty' is not a valid --port"),
        ("KV_EMBED_POSTPROCESS", "zca", "$KV_EMBED_POSTPROCESS='zca': --postprocess takes one of none, center"),
        ("KV_EMBED_TRUST_REMOTE_CODE", "maybe", "$KV_EMBED_TRUST_REMOTE_CODE='maybe': expected one of"),
        ("KV_EMBED_LAYERS", "1,x", "$KV_EMBED_LAYERS='1,x' is not a valid --layers"),
    ],
)
def test_a_bad_environment_value_is_a_clear_error(monkeypatch, capsys, variable, value, message):
    monkeypatch.setenv(variable, value)
    assert main(["serve"]) == 2
    assert message in capsys.readouterr().err
