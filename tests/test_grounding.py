"""Issue 13 end to end: claim-level citations, no spliced sentences, one text one source, abstention."""

from __future__ import annotations

import itertools
import unicodedata

import pytest
from citation_checks import assert_claim_level, spliced_sentences

from nest_integrations import NestConfig, NestEngine, Passage, default_corpus
from nest_integrations.citations import mark_citations
from nest_integrations.text_stream import joined, word_count


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    return {d.id: d.text for d in default_corpus()}


@pytest.mark.slow
@pytest.mark.parametrize("question", ["Tell me about Robert Boulter.", "Who was Nero?"])
def test_reported_answers_have_no_spliced_sentence_and_no_fragment_sources(engine, documents, question) -> None:
    result = engine.generate(question)
    assert result.citations, result.text
    assert_claim_level(result, documents)
    # Fragments stay measurable: attribution counts them, the sources list does not.
    copied_chars = sum(len(c.quote) for c in result.citations + result.fragments)
    assert copied_chars <= len(result.text)


@pytest.mark.slow
def test_splicing_happens_without_the_sentence_lock(engine, documents) -> None:
    """The rule above is not vacuous: with the lock off, the Boulter answer's copies are spliced (issue 13's
    report). The claim checks then demote some of them to fragments, so copies of two or more words
    count here whether cited or not."""
    result = engine.generate("Tell me about Robert Boulter.", sentence_lock=False)
    copies = [c for c in result.citations + result.fragments if word_count(c.quote) >= 2]
    as_cited = result.model_copy(update={"citations": sorted(copies, key=lambda c: c.output_start)})
    assert spliced_sentences(as_cited, documents)


def _opening(documents: dict[str, str]) -> str:
    text = documents["Robert_Boulter"]
    return text[: text.index(".", 600) + 1]


@pytest.mark.slow
def test_the_same_text_in_two_files_is_copied_once_and_cites_one_holder(lm, documents) -> None:
    opening = _opening(documents)
    passages = [
        Passage(id="a.txt", text=opening, title="a.txt", document_id="a.txt"),
        Passage(id="b.txt", text=opening, title="b.txt", document_id="b.txt"),
    ]
    result = NestEngine(lm).generate("Tell me about Robert Boulter.", passages=passages)
    assert result.citations
    assert_claim_level(result)
    quotes = [c.quote for c in result.citations]
    assert len(set(quotes)) == len(quotes), quotes
    # No sentence is copied twice: the cited source ranges never overlap.
    ranges = sorted((c.passage_start, c.passage_end) for c in result.citations)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges)), ranges
    assert {c.passage_id for c in result.citations} == {"a.txt"}
    assert all(c.also_in == ["b.txt"] for c in result.citations)


@pytest.mark.slow
def test_overlapping_chunks_of_one_document_cite_each_document_char_once(lm, documents) -> None:
    text = _opening(documents)
    half = text.index(" ", len(text) // 3) + 1
    first = Passage(id="c0", text=text[: 2 * half], document_id="doc", start=0, end=2 * half, title="Robert Boulter")
    second = Passage(id="c1", text=text[half:], document_id="doc", start=half, end=len(text), title="Robert Boulter")
    result = NestEngine(lm).generate("Tell me about Robert Boulter.", passages=[first, second])
    assert result.citations
    assert_claim_level(result, {"doc": text})
    # Each document sentence is cited once (a one-word fragment may reuse a word: see fragments).
    spans = sorted((c.document_start, c.document_end) for c in result.citations)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
    for c in result.citations:
        assert c.document_start is not None and c.document_end is not None
        in_overlap = half <= c.document_start and c.document_end <= 2 * half
        assert (c.also_in != []) == in_overlap, (c.quote, c.also_in)


@pytest.mark.slow
def test_decomposed_unicode_gets_quotes_and_marks_at_grapheme_boundaries(lm) -> None:
    text = unicodedata.normalize(
        "NFD",
        "Zoë Séverine Dupré is a French écrivaine born in Besançon. Dupré wrote the novel Été à Montréal in 2003, "
        "and the novel Ève et René in 2007. Dupré received the Prix Médicis for Été à Montréal.",
    )
    assert any(unicodedata.combining(ch) for ch in text)
    passages = [Passage(id="dupre", text=text, title="Zoë Dupré", document_id="dupre")]
    result = NestEngine(lm).generate("Tell me about Zoë Séverine Dupré.", passages=passages, min_source_coverage=0.0)
    assert result.citations + result.fragments, result.text
    assert_claim_level(result)
    for c in result.citations + result.fragments:
        assert not joined(text, c.passage_start) and not joined(text, c.passage_end), c.quote
    marked = mark_citations(result.text, [c.output_end for c in result.citations])
    assert "\u0301 [" not in marked and not any(
        unicodedata.combining(marked[i + 2]) for i in range(len(marked) - 2) if marked[i : i + 2] == " ["
    )
    # The NFD passage is searched in its NFC form: the same answer and citations as the NFC text,
    # each quote the NFD passage's own text (a break test saw "Brontë̈̈̈̈" loops before).
    nfc = Passage(id="dupre", text=unicodedata.normalize("NFC", text), title="Zoë Dupré", document_id="dupre")
    same = NestEngine(lm).generate("Tell me about Zoë Séverine Dupré.", passages=[nfc], min_source_coverage=0.0)
    assert result.text == same.text and unicodedata.is_normalized("NFC", result.text)
    assert [(c.output_start, c.output_end) for c in result.citations] == [
        (c.output_start, c.output_end) for c in same.citations
    ]
    assert [unicodedata.normalize("NFC", c.quote) for c in result.citations] == [c.quote for c in same.citations]


@pytest.mark.slow
def test_grounded_only_abstains_when_no_source_covers_the_query(engine) -> None:
    question = "Tell me about Zorblax Quenterworth."
    plain = engine.generate(question, max_new_tokens=16)
    assert plain.finish_reason != "abstain" and not plain.stats.abstained
    result = engine.generate(question, grounded_only=True, max_new_tokens=16)
    assert result.finish_reason == "abstain" and result.stats.abstained
    assert result.text.startswith("The sources do not cover") and "Zorblax Quenterworth" in result.text
    assert result.citations == [] and result.stats.tokens_generated == 0
    chunks = list(engine.stream(question, grounded_only=True))
    assert "".join(c.text for c in chunks) == result.text and chunks[-1].result is not None


@pytest.mark.slow
def test_grounded_only_answers_as_usual_when_a_source_covers_the_query(engine) -> None:
    result = engine.generate("Tell me about Robert Boulter.", grounded_only=True, max_new_tokens=32)
    assert result.finish_reason != "abstain" and result.citations


def test_grounded_only_is_off_by_default_and_in_the_paper_config() -> None:
    assert NestConfig().grounded_only is False and NestConfig.paper().sentence_lock is False


@pytest.mark.parametrize("byte_table", [True, False])
def test_incremental_text_equals_a_full_decode(lm, byte_table) -> None:
    import random

    from nest_integrations.text_stream import IncrementalDetokenizer

    tok = lm.tokenizer
    seeded = tok("Zoë e\u0301 😀 Nero's 2001.\n\nOK", add_special_tokens=False)["input_ids"]
    rng = random.Random(1)
    for ids in [seeded, *([rng.randrange(len(tok)) for _ in range(40)] for _ in range(20))]:
        detok = IncrementalDetokenizer(tok)
        if not byte_table:
            detok._bytes = None  # the path for tokenizers that are not byte-level BPE
        for start in range(0, len(ids), 3):
            detok.put(ids[start : start + 3])
        detok.flush()
        expected = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        text = str(detok.text)
        # Ids ending inside a character: it is dropped, not shown as U+FFFD (tests/test_text_stream.py).
        dropped = expected[len(text) :]
        assert text == expected or (detok.dropped and expected.startswith(text) and set(dropped) == {"\ufffd"})
        assert detok.committed == len(ids) and detok.ends[-1] == len(text)
