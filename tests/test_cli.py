import json

import pytest

from nest_integrations import cli


@pytest.fixture
def reuse_model(monkeypatch, lm):
    monkeypatch.setattr("nest_integrations.lm.load_lm", lambda *a, **k: lm)


@pytest.mark.slow
def test_ask_json_has_the_documented_fields(reuse_model, capsys, corpus_retriever) -> None:
    assert cli.main(["ask", "Tell me about Robert Boulter.", "--json", "--max-new-tokens", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"text", "citations", "stats", "finish_reason"}
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
