"""SQuAD QA task (issue 13): SQuAD normalisation and F1 on hand-computed examples, scoring of
constructed measurements, the data lookup, and an end-to-end run on a small SQuAD-format
corpus made from default-corpus paragraphs (the real SQuAD files are not in the repository)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nest_integrations.bench import squad
from nest_integrations.bench.squad import (
    Question,
    SquadDataNotFoundError,
    contains_answer,
    find_squad_dir,
    normalize_answer,
    sample_questions,
    score,
    token_f1,
)
from nest_integrations.bench.systems import CitedSpan, Measurement
from nest_integrations.corpus import default_corpus


def test_squad_normalisation_and_token_f1_match_hand_computed_values() -> None:
    assert normalize_answer("The Denver Broncos!") == "denver broncos"
    assert normalize_answer("  A   cat, an apple;  THE end. ") == "cat apple end"
    assert normalize_answer("Levi's Stadium") == "levis stadium"
    assert normalize_answer("theater anthem") == "theater anthem"  # articles only as whole words
    # pred [denver, broncos, won], gold [denver, broncos]: P = 2/3, R = 1 -> F1 = 0.8
    assert token_f1("The Denver Broncos won.", ["Denver Broncos"]) == pytest.approx(0.8)
    # the best over the gold answers: "carolina" shares nothing, "Denver" gives P = 1/3, R = 1 -> 0.5
    assert token_f1("The Denver Broncos won.", ["Carolina Panthers", "Denver"]) == pytest.approx(0.5)
    assert token_f1("", ["x"]) == 0.0 and token_f1("the", ["a"]) == 0.0
    # repeated tokens count once per occurrence in both: pred [a1 a1 b], gold [a1 b b] -> common 2, F1 = 2/3
    assert token_f1("a1 a1 b", ["a1 b b"]) == pytest.approx(2 / 3)


def test_containment_is_any_normalised_answer_on_word_boundaries() -> None:
    out = "It was played at Levi's Stadium, in Santa Clara."
    assert contains_answer(out, ["Santa Clara, California", "Levi's Stadium"])
    assert contains_answer("THE DENVER broncos", ["Denver Broncos"])
    assert not contains_answer("a 2011 platform game", ["1", "201"])  # no match inside a word
    assert not contains_answer("anything", ["", "!!"])  # an answer empty after normalising matches nothing


def _measure(system: str, text: str, cited: list[str | None], seconds: float = 1.0, **kw: object) -> Measurement:
    return Measurement(
        system=system,
        task="squad",
        prompt="q",
        document_id="0-0",
        text=text,
        tokens=10,
        seconds=seconds,
        cited=[CitedSpan(d, 5) for d in cited],
        **kw,  # type: ignore[arg-type]
    )


def test_scoring_of_constructed_measurements() -> None:
    qs = [
        Question("q1", "Who?", ["Simon Stephens"], "Robert Boulter", "0-0"),
        Question("q2", "Where?", ["Royal Court Theatre"], "Robert Boulter", "0-1"),
    ]
    titles = {"0-0": "Robert Boulter", "0-1": "Robert Boulter", "1-0": "Nero"}
    claims = {"sentences": 2, "cited_sentences": 2, "spliced_sentences": 1, "citations": 4}
    claims |= {"fragment_citations": 1, "supported_chars": 30, "output_chars": 60}
    ms = [
        _measure("a: plain generate", "Simon Stephens wrote it.", []),
        _measure("a: plain generate", "I do not know.", [], seconds=3.0),
        _measure("d: NEST", "By Simon Stephens.", ["0-0", "0-1", "1-0"], claims=claims),
        _measure("d: NEST", "At the Royal Court Theatre", ["0-1"], claims=claims),
    ]
    plain, nest = score(ms, qs, [True, False], titles)
    assert plain["containment"] == 0.5 and plain["latency_s"] == 2.0 and plain["tokens_per_s"] == 5.0
    assert plain["precision_article"] is None and plain["recall_at_k"] is None and plain["spliced_rate"] is None
    assert plain["f1"] == pytest.approx((2 * 0.5 * 1 / 1.5) / 2)  # [simon stephens wrote it] vs gold: P 1/2, R 1
    assert nest["containment"] == 1.0 and nest["recall_at_k"] == 0.5
    # 4 citations: articles right for 3 (not "Nero"); paragraphs right for 2 ("0-0" for q1, "0-1" for q2)
    assert nest["precision_article"] == 0.75 and nest["precision_paragraph"] == 0.5
    assert (nest["spliced_rate"], nest["fragment_citation_rate"], nest["verbatim_share"]) == (0.5, 0.25, 0.5)


def _tiny_squad(directory: Path) -> Path:
    """A SQuAD-format corpus of default-corpus lead paragraphs (Boulter's first two, then distractors)."""
    docs = {d.id: d for d in default_corpus()}
    corpus = []
    for a, doc_id in enumerate(["Robert_Boulter", "Nero", "Bintulu", "Du_Fu"]):
        paragraphs = [p for p in docs[doc_id].text.split("\n\n") if len(p.split()) > 40][:2]
        corpus += [{"id": f"{a}-{i}", "title": docs[doc_id].title, "text": p} for i, p in enumerate(paragraphs)]
    questions = [
        ("Who wrote the play Herons?", ["Simon Stephens"], "0-0"),
        ("Who directed the 2007 theatre production of How to Curse?", ["Josie Rourke"], "0-1"),
        ("In which year was Herons performed at the Royal Court Theatre?", ["2001"], "0-0"),
    ]
    text = {c["id"]: c["text"] for c in corpus}
    assert all(a[0] in text[gold] for _, a, gold in questions)
    directory.mkdir()
    (directory / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus), encoding="utf-8")
    (directory / "questions.jsonl").write_text(
        "".join(
            json.dumps(
                {"id": f"q{i}", "question": q, "answers": a, "title": docs["Robert_Boulter"].title, "gold_passage": g}
            )
            + "\n"
            for i, (q, a, g) in enumerate(questions)
        ),
        encoding="utf-8",
    )
    return directory


def test_data_lookup_and_seeded_sample(tmp_path, monkeypatch) -> None:
    with pytest.raises(SquadDataNotFoundError, match="--squad-dir DIR or set NEST_SQUAD_DIR"):
        find_squad_dir(tmp_path / "missing")
    data = _tiny_squad(tmp_path / "squad")
    assert find_squad_dir(data) == data
    monkeypatch.setenv("NEST_SQUAD_DIR", str(data))
    assert find_squad_dir() == data
    a, b = sample_questions(data, 2, seed=4), sample_questions(data, 2, seed=4)
    assert a == b and len(a) == 2 and len(sample_questions(data, 10)) == 3


@pytest.mark.slow
def test_squad_task_end_to_end_reports_every_column_in_range(tmp_path, monkeypatch, engine) -> None:
    from nest_integrations import index as index_module

    monkeypatch.setenv("NEST_CACHE_DIR", str(tmp_path / "cache"))
    data = _tiny_squad(tmp_path / "squad")
    rows = squad.run_squad(
        tmp_path / "out", questions=3, max_new_tokens=24, squad_dir=data, engine=engine, progress=False
    )
    assert [r["system"] for r in rows] == ["a: plain generate", "b: in-context RAG", "d: NEST cold cache"]
    for r in rows:
        assert set(r) >= {k for k, _ in squad.COLUMNS} and r["prompts"] == 3
        for k in ("containment", "f1", "attribution_ratio"):
            assert 0.0 <= r[k] <= 1.0, (r["system"], k, r[k])
        assert r["latency_s"] > 0 and r["decoding_s"] > 0 and r["tokens_per_s"] > 0
    plain, rag, nest = rows
    assert plain["recall_at_k"] is None and plain["precision_article"] is None and plain["verbatim_share"] is None
    assert rag["recall_at_k"] == nest["recall_at_k"] == 1.0  # 8 paragraphs, b = 20: every gold paragraph is read
    assert nest["first_stage_s"] > 0 and nest["attribution_ratio"] > 0
    for k in ("precision_article", "precision_paragraph", "spliced_rate", "fragment_citation_rate", "verbatim_share"):
        assert nest[k] is not None and 0.0 <= nest[k] <= 1.0, (k, nest[k])
    report = (tmp_path / "out" / "squad.md").read_text()
    assert "| d: NEST cold cache | 3 |" in report and "CC BY-SA 4.0" in report
    saved = json.loads((tmp_path / "out" / "squad.json").read_text())
    assert len(saved["measurements"]) == 9 and saved["summary"] == json.loads(json.dumps(rows))

    # The index is cached under the cache dir: a second run loads it instead of building it.
    def no_build(*a: object, **k: object) -> None:
        raise AssertionError("the SQuAD index was rebuilt")

    monkeypatch.setattr(index_module, "build_index", no_build)
    again = squad.squad_index(data, tokenizer=engine.lm.tokenizer, progress=False)
    assert len(again) == sum(1 for _ in again.passages) > 0


def test_nest_bench_squad_says_where_it_looked_when_the_data_is_absent(tmp_path, capsys) -> None:
    from nest_integrations.cli import main

    missing = tmp_path / "missing"
    assert main(["bench", "--squad", "2", "--squad-dir", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "SQuAD data not found" in err and str(missing) in err and "NEST_SQUAD_DIR" in err
    assert not (tmp_path / "out").exists()
