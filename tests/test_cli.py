import json
import subprocess
import sys

import pytest

from nest_integrations import HybridRetriever, cli


@pytest.fixture
def reuse_model(monkeypatch, lm):
    monkeypatch.setattr("nest_integrations.lm.load_lm", lambda *a, **k: lm)


@pytest.mark.slow
def test_ask_json_has_the_documented_fields(reuse_model, capsys, corpus_retriever) -> None:
    assert cli.main(["ask", "Tell me about Robert Boulter.", "--json", "--max-new-tokens", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"text", "citations", "fragments", "stats", "finish_reason"}
    assert out["citations"]
    assert set(out["citations"][0]) == {
        "output_start",
        "output_end",
        "quote",
        "passage_id",
        "document_id",
        "title",
        "passage_start",
        "passage_end",
        "document_start",
        "document_end",
        "score",
        "metadata",
        "also_in",
    }
    assert set(out["stats"]) >= {
        "attribution_ratio",
        "tokens_generated",
        "tokens_copied",
        "spans_proposed",
        "spans_accepted",
        "mean_accepted_span",
        "first_stage_seconds",
        "token_index_seconds",
        "decoding_seconds",
    }


@pytest.mark.slow
def test_ask_prints_numbered_citations_and_sources(reuse_model, capsys, corpus_retriever) -> None:
    assert cli.main(["ask", "Tell me about Robert Boulter.", "--max-new-tokens", "32"]) == 0
    out = capsys.readouterr().out
    assert "[1]" in out and "Sources:" in out and "Robert Boulter" in out


def test_index_then_ask_over_own_files(tmp_path, reuse_model, capsys) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "reactor.md").write_text(
        "The Zorblax reactor was commissioned in 1987 by the Veltran Institute in Oslo. "
        "It produced power for the northern district until 2011."
    )
    assert cli.main(["index", str(tmp_path / "docs"), "--out", str(tmp_path / "idx"), "--model", "none"]) == 0
    assert (tmp_path / "idx" / "meta.json").is_file()
    capsys.readouterr()
    code = cli.main(
        [
            "ask",
            "Tell me about the Zorblax reactor.",
            "--index",
            str(tmp_path / "idx"),
            "--json",
            "--max-new-tokens",
            "24",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert all(c["document_id"] == "reactor" for c in out["citations"])


def test_index_saves_the_chosen_fusion_and_loading_the_index_uses_it(tmp_path, capsys) -> None:
    (tmp_path / "a.md").write_text("The Zorblax reactor was commissioned in 1987 in Oslo.")
    out = tmp_path / "idx"
    assert cli.main(["index", str(tmp_path / "a.md"), "--out", str(out), "--model", "none", "--fusion", "convex"]) == 0
    assert json.loads((out / "meta.json").read_text())["fusion"] == "convex"
    assert HybridRetriever.load(out, embedder=None).fusion == "convex"
    from nest_integrations.passages.hybrid import FUSIONS

    # The flag lists the fusions by hand (the CLI parses without importing torch): each must parse.
    for fusion in FUSIONS:
        assert cli.build_parser().parse_args(["index", "a", "--out", "b", "--fusion", fusion]).fusion == fusion
    with pytest.raises(SystemExit):
        cli.main(["index", str(tmp_path / "a.md"), "--out", str(tmp_path / "x"), "--fusion", "rrf"])
    assert "invalid choice: 'rrf'" in capsys.readouterr().err
    assert json.loads((out / "meta.json").read_text())["rerank"] is None  # convex re-ranks by itself: none
    plain = tmp_path / "plain"
    assert cli.main(["index", str(tmp_path / "a.md"), "--out", str(plain), "--model", "none", "--rerank", "none"]) == 0
    assert HybridRetriever.load(plain, embedder=None).rerank is None
    assert cli.build_parser().parse_args(["index", "a", "--out", "b"]).rerank == "convex"  # the default


def test_index_rejects_non_utf8_files_with_exit_code_2(tmp_path, capsys) -> None:
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe bad bytes")
    code = cli.main(["index", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "idx"), "--model", "none"])
    assert code == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_citation_marks_follow_each_cited_span() -> None:
    from nest_integrations.citations import mark_citations

    assert mark_citations("ab cd ef", [5, 2]) == "ab [2] cd [1] ef"
    assert mark_citations("text", []) == "text"
    # A span ending inside a word is marked after the word; marks at one place stay in order.
    assert mark_citations("Robert Boulter starred", [8, 14]) == "Robert Boulter [1] [2] starred"
    assert mark_citations("ab cd", [2, 2, 1]) == "ab [1] [2] [3] cd"


def _run_cli(*args: str) -> tuple[int, str, list[str]]:
    """Run `nest ARGS` in a fresh interpreter; exit code, stderr, and the heavy modules it imported."""
    code = (
        "import sys\nfrom nest_integrations import cli\n"
        "try:\n    rc = cli.main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'faiss') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\nsys.exit(rc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    heavy = lines[-1].removeprefix("HEAVY=")
    return done.returncode, "\n".join(lines[:-1]), [m for m in heavy.split(",") if m]


def test_help_and_version_import_no_heavy_library() -> None:
    for args in (["--help"], ["--version"], ["ask", "--help"]):
        code, _, heavy = _run_cli(*args)
        assert code == 0 and heavy == [], (args, heavy)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ask", ""], "The question is empty"),
        (["ask", "   "], "The question is empty"),
        (["ask", "hi", "--index", "/nonexistent/idx"], "Index directory /nonexistent/idx does not exist"),
        (["ask", "hi", "--model", "no-such-org/no-such-model"], "neither a local directory nor in the Hugging Face"),
        (["ask", "hi", "--device", "tpu"], "Unknown device 'tpu'"),
        (["ask", "hi", "--dtype", "float8"], "Unknown dtype 'float8'"),
        (["ask", "hi", "--passages", "0"], "--passages must be at least 1, got 0."),
        (["ask", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0."),
        (["ask", "hi", "--config", "/nonexistent.json"], "Config file /nonexistent.json does not exist"),
        (["index", "/nonexistent/docs", "--out", "/tmp/never"], "No such file or directory: /nonexistent/docs"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_before_loading_anything(args, message) -> None:
    code, err, heavy = _run_cli(*args)
    assert code == 2
    assert err.count("\n") == 0 and err.startswith(f"nest {args[0]}: error: ") and message in err, err
    assert heavy == []  # rejected before torch, transformers or the index libraries were imported


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ask", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0."),
        (["ask", "hi", "--max-new-tokens", "-3"], "--max-new-tokens must be at least 1, got -3."),
        (["ask", "hi", "--max-new-tokens", "40000"], "--max-new-tokens must be at most 32768, got 40000."),
        (["ask", "hi", "--passages", "-1"], "--passages must be at least 1, got -1."),
        (["ask", "hi", "--passages", "5000"], "--passages must be at most 1000, got 5000."),
        (["serve", "--max-batch", "0"], "--max-batch must be at least 1, got 0."),
        (["serve", "--max-queue", "-1"], "--max-queue must be at least 0, got -1."),
        (["serve", "--max-tokens-limit", "0"], "--max-tokens-limit must be at least 1, got 0."),
        (["serve", "--queue-timeout", "0"], "--queue-timeout must be more than 0, got 0.0."),
        (["serve", "--queue-timeout", "nan"], "--queue-timeout must be more than 0, got nan."),
        (["serve", "--graceful-timeout", "-1"], "--graceful-timeout must be at least 0, got -1."),
        (["serve", "--port", "70000"], "--port must be at most 65535, got 70000."),
    ],
)
def test_numeric_flags_out_of_range_exit_2_in_plain_words_before_loading_anything(args, message) -> None:
    """Counts, limits and timeouts out of range name the flag and the range, not pydantic's wording."""
    code, err, heavy = _run_cli(*args)
    assert code == 2 and err == f"nest {args[0]}: error: {message}", err
    assert "Input should" not in err and "Value error" not in err
    assert heavy == []  # before torch, transformers or the index libraries were imported


def test_path_arguments_of_the_wrong_kind_exit_2_before_loading_anything(tmp_path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("The Zorblax reactor was commissioned in 1987.")
    a_file = tmp_path / "taken.txt"
    a_file.write_text("not a directory")
    docs = str(tmp_path / "docs")
    cases = [
        (["index", docs, "--out", str(a_file)], f"--out {a_file} is an existing file"),
        (["index", docs, "--out", str(a_file / "idx")], f"cannot be created: {a_file} is a file"),
        (["ask", "hi", "--index", str(a_file)], f"{a_file} is a file, not an index directory"),
        (["ask", "hi", "--config", str(tmp_path)], f"Config file {tmp_path} is a directory"),
        (["bench", "--out", str(a_file)], f"--out {a_file} is an existing file"),
        (["calibrate", "--out", str(tmp_path)], f"--out {tmp_path} is a directory"),
    ]
    for args, message in cases:
        code, err, heavy = _run_cli(*args)
        assert code == 2, (args, err)
        assert err.count("\n") == 0 and err.startswith(f"nest {args[0]}: error: ") and message in err, (args, err)
        assert heavy == [], (args, heavy)
    assert a_file.read_text() == "not a directory"


def test_build_index_refuses_an_existing_file_as_its_directory(tmp_path) -> None:
    from nest_integrations import Document, OutputPathError, build_index

    (tmp_path / "taken").write_text("x")
    with pytest.raises(OutputPathError, match="is an existing file"):
        build_index([Document(id="d", text="Some text.")], tmp_path / "taken", progress=False)


@pytest.mark.parametrize(
    ("command", "module"),
    [("serve", "fastapi"), ("serve", "uvicorn"), ("mcp", "mcp.server.mcpserver")],
)
def test_serve_and_mcp_without_the_serve_extra_exit_2_naming_it(monkeypatch, capsys, command, module) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed: importing it fails

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded although the extra is missing")

    monkeypatch.setattr("nest_integrations.builder.check_options", no_loading)
    monkeypatch.setattr("nest_integrations.lm.load_lm", no_loading)
    assert cli.main([command]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"nest {command}: error: ")
    assert module.partition(".")[0] in err and 'pip install "nest-integrations[serve]"' in err


def test_a_directory_that_is_not_an_index_or_a_model_is_rejected(tmp_path) -> None:
    code, err, heavy = _run_cli("ask", "hi", "--index", str(tmp_path))
    assert code == 2 and "is not a NEST passage index (no meta.json)" in err and heavy == []
    code, err, _ = _run_cli("ask", "hi", "--model", str(tmp_path), "--no-retrieval")
    assert code == 2 and "is not a model directory (no config.json in it)" in err


def test_a_device_this_torch_build_lacks_is_rejected_with_exit_2() -> None:
    import torch

    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    code, err, _ = _run_cli("ask", "hi", "--device", device)
    assert code == 2 and err.count("\n") == 0
    assert ("no CUDA support" in err) if device == "cuda" else ("CUDA device(s) visible" in err)


def test_an_answer_cut_by_the_token_limit_says_so() -> None:
    from nest_integrations.citations import NestResult, NestStats

    cut = NestResult(text="An answer cut mid-wo", stats=NestStats(tokens_generated=8), finish_reason="length")
    lines = cli.format_answer(cut, max_new_tokens=8).splitlines()
    assert lines[:2] == ["An answer cut mid-wo", "[cut at max_new_tokens=8]"]
    done = NestResult(text="A full answer.", stats=NestStats(tokens_generated=4), finish_reason="stop")
    assert "[cut" not in cli.format_answer(done, max_new_tokens=8)
    by_context = NestResult(text="Long", stats=NestStats(tokens_generated=3), finish_reason="length")
    assert "[cut at the model's context length]" in cli.format_answer(by_context, max_new_tokens=8)


def _index_docs(tmp_path, *extra: str) -> str:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "reactor.md").write_text(
        "The Zorblax reactor was commissioned in 1987 by the Veltran Institute in Oslo. "
        "It produced power for the northern district until 2011."
    )
    out = str(tmp_path / "idx")
    assert cli.main(["index", str(tmp_path / "docs"), "--out", out, *extra]) == 0
    return out


def _ask_json(capsys, index: str) -> tuple[dict, str]:
    capsys.readouterr()
    args = ["ask", "Tell me about the Zorblax reactor.", "--index", index, "--json", "--max-new-tokens", "24"]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_a_repeated_ask_reencodes_no_passage(tmp_path, reuse_model, capsys) -> None:
    index = _index_docs(tmp_path, "--model", "none")  # no keys stored by `nest index`
    first, err = _ask_json(capsys, index)
    assert first["stats"]["passages_encoded"] >= 1 and "Encoding passages" in err
    stores = list((tmp_path / "idx").glob("keys-*"))
    assert [s.name for s in stores] == ["keys-SmolLM2-135M-Instruct-float32"]
    again, err = _ask_json(capsys, index)
    assert again["stats"]["passages_encoded"] == 0 and "Encoding passages" not in err
    # Keys read back from disk are the keys computed: the same answer and citations.
    assert again["text"] == first["text"] and again["citations"] == first["citations"]
    assert "past_key_values" not in err and "Warning" not in err


def test_index_stores_keys_so_the_first_ask_encodes_nothing(tmp_path, reuse_model, capsys) -> None:
    index = _index_docs(tmp_path)
    assert "Stored the token keys of 1 passages" in capsys.readouterr().out
    first, _ = _ask_json(capsys, index)
    assert first["stats"]["passages_encoded"] == 0 and first["stats"]["passages"] == 1
    assert all(c["document_id"] == "reactor" for c in first["citations"])


def test_package_names_load_lazily_and_stay_importable() -> None:
    import nest_integrations

    assert {"NestEngine", "KeyStore", "load_lm"} <= set(dir(nest_integrations))
    from nest_integrations import KeyStore, NestEngine
    from nest_integrations.engine import NestEngine as direct
    from nest_integrations.token_index import KeyStore as store

    assert NestEngine is direct and KeyStore is store
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nest_integrations.nope  # noqa: B018
