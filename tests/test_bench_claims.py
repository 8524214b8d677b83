"""Claim metrics (issue 13) on constructed results: spliced sentences, gaps, fragments. No model."""

from __future__ import annotations

import pytest

from nest_integrations.bench.claims import claim_counts, claim_rates, sentence_spans
from nest_integrations.citations import Citation, NestResult
from nest_integrations.passages.types import Passage, ScoredPassage

DOC = (
    "Boulter starred in the play Herons written by Simon Stephens, at the Royal Court Theatre. "
    "In 2011 he appeared in the film Mercenaries directed by Paris Leonti."
)
# Two overlapping chunks of one document, so document offsets differ from passage offsets.
P1 = Passage(id="b-0", text=DOC[:60], document_id="Boulter", start=0, end=60, title="Boulter")
P2 = Passage(id="b-1", text=DOC[40:], document_id="Boulter", start=40, end=len(DOC), title="Boulter")
OTHER = Passage(id="o-0", text="Herons is a play by Simon Stephens.", document_id="Herons", start=0, end=35)


def cite(output: str, quote: str, passage: Passage, nth: int = 0) -> Citation:
    """A citation of ``quote`` at its ``nth`` place in ``output`` and its first place in ``passage``."""
    at = -1
    for _ in range(nth + 1):
        at = output.index(quote, at + 1)
    src = passage.text.index(quote)
    assert passage.start is not None
    return Citation(
        output_start=at,
        output_end=at + len(quote),
        quote=quote,
        passage_id=passage.id,
        document_id=passage.document_id,
        passage_start=src,
        passage_end=src + len(quote),
        document_start=passage.start + src,
        document_end=passage.start + src + len(quote),
        score=1.0,
    )


def result(text: str, citations: list[Citation], **extra: object) -> NestResult:
    passages = [ScoredPassage(passage=p) for p in (P1, P2, OTHER)]
    r = NestResult(text=text, citations=citations, passages=passages)
    for k, v in extra.items():
        object.__setattr__(r, k, v)  # e.g. ``fragments``, which NestResult may not have yet
    return r


def test_sentences_split_at_end_marks_followed_by_space_and_at_newlines() -> None:
    text = "Hi there. Version 3.5 is out!\nNext line? yes"
    pieces = [text[s:e] for s, e in sentence_spans(text)]
    assert pieces == ["Hi there.", "Version 3.5 is out!", "Next line?", "yes"]
    assert sentence_spans("  \n ") == []


def test_the_boulter_splice_is_spliced_and_its_one_word_copies_are_fragments() -> None:
    # "... the play Herons" then "directed by Paris Leonti" from another sentence of the article.
    text = "Boulter starred in the play Herons directed by Paris Leonti."
    cits = [
        cite(text, "Boulter starred in the play Herons", P1),
        cite(text, "directed", P2),
        cite(text, "by Paris Leonti", P2),
    ]
    c = claim_counts(result(text, cits))
    assert (c.sentences, c.cited_sentences, c.spliced_sentences) == (1, 1, 1)
    assert (c.citations, c.fragment_citations, c.supported_chars) == (3, 1, 0)
    assert claim_rates([c]) == {
        "spliced_rate": 1.0,
        "spliced_copy_rate": 1.0,
        "fragment_citation_rate": pytest.approx(1 / 3),
        "verbatim_share": 0.0,
    }


def test_a_gap_equal_to_the_source_text_between_two_copies_keeps_a_sentence_verbatim() -> None:
    # Two copies with " written by " between them, which the output reproduces (generated, not copied),
    # the second copy read from the other chunk: one contiguous slice of the document.
    text = "Boulter starred in the play Herons written by Simon Stephens, at the Royal Court Theatre. Great."
    first = cite(text, "Boulter starred in the play Herons", P1)
    second = cite(text, "Simon Stephens, at the Royal Court Theatre.", P2)
    c = claim_counts(result(text, [first, second]))
    assert (c.sentences, c.cited_sentences, c.spliced_sentences) == (2, 1, 0)
    # Supported: from the first copy's start to the second's end (the sentence without " Great.").
    assert c.supported_chars == len(
        "Boulter starred in the play Herons written by Simon Stephens, at the Royal Court Theatre."
    )
    assert claim_rates([c])["verbatim_share"] == pytest.approx(c.supported_chars / len(text))

    # The same two copies with a gap the source does not have: spliced.
    text2 = text.replace(" written by ", " by ")
    c2 = claim_counts(
        result(
            text2,
            [
                cite(text2, "Boulter starred in the play Herons", P1),
                cite(text2, "Simon Stephens, at the Royal Court Theatre.", P2),
            ],
        )
    )
    assert (c2.cited_sentences, c2.spliced_sentences, c2.supported_chars) == (1, 1, 0)


def test_copies_from_two_documents_or_out_of_order_are_spliced() -> None:
    text = "Boulter starred in the play Herons is a play by Simon Stephens."
    two_docs = [cite(text, "Boulter starred in the play", P1), cite(text, "Herons is a play by Simon Stephens.", OTHER)]
    assert claim_counts(result(text, two_docs)).spliced_sentences == 1
    # Same document, but the later copy comes from earlier in the document.
    text = "the film Mercenaries Boulter starred in"
    backwards = [cite(text, "the film Mercenaries", P2), cite(text, "Boulter starred in", P1)]
    assert claim_counts(result(text, backwards)).spliced_sentences == 1


def test_fragments_count_for_the_rate_only_when_listed_and_never_splice() -> None:
    text = "Herons written by Simon Stephens. Boulter was there."
    substantive = cite(text, "Herons written by Simon Stephens", P1)
    frag = cite(text, "Boulter", P1, nth=0)
    listed = claim_counts(result(text, [substantive, frag]))
    assert (listed.cited_sentences, listed.spliced_sentences, listed.fragment_citations) == (1, 0, 1)
    # After the decoder moves fragments to ``result.fragments``: no longer listed, still no splice.
    moved = claim_counts(result(text, [substantive], fragments=[frag]))
    assert (moved.citations, moved.fragment_citations, moved.spliced_sentences) == (1, 0, 0)
    assert moved.supported_chars == listed.supported_chars == len("Herons written by Simon Stephens")


def test_a_copy_across_two_sentences_supports_both_and_rates_ignore_empty_denominators() -> None:
    text = "Simon Stephens, at the Royal Court Theatre. In 2011 he appeared"
    c = claim_counts(result(text, [cite(text, text, P2)]))
    assert (c.sentences, c.cited_sentences, c.spliced_sentences, c.supported_chars) == (2, 2, 0, len(text) - 1)
    none = claim_counts(result("Nothing copied here.", []))
    assert claim_rates([none]) == {
        "spliced_rate": None,
        "spliced_copy_rate": None,
        "fragment_citation_rate": None,
        "verbatim_share": 0.0,
    }
    assert claim_rates([]) == dict.fromkeys(claim_rates([none]))


def test_a_spliced_sentence_without_a_listed_citation_is_not_cited_but_still_counts_as_spliced_copies() -> None:
    text = "Boulter starred in the play Herons directed by Paris Leonti."
    copies = [cite(text, "Boulter starred in the play Herons", P1), cite(text, "by Paris Leonti", P2)]
    c = claim_counts(result(text, [], fragments=copies))
    assert (c.cited_sentences, c.spliced_sentences, c.copied_sentences, c.spliced_copy_sentences) == (0, 0, 1, 1)
    assert claim_rates([c])["spliced_rate"] is None and claim_rates([c])["spliced_copy_rate"] == 1.0
