"""Passage relevance: first-stage scores and query-term overlap, relative to the best passage."""

import pytest
import torch

from nest_integrations import Passage
from nest_integrations.relevance import (
    key_terms,
    passage_relevance,
    query_term_overlap,
    relative_scores,
    source_coverage,
)

BOULTER = Passage(id="b", title="Robert Boulter", text="He had a guest role in The Bill in 2000.")
KERSHAW = Passage(id="k", title="Clayton Kershaw", text="Kershaw is an American professional baseball pitcher.")
ROBERT = Passage(id="r", title="Robert Gore", text="Robert Gore was a lawyer.")


def test_relative_scores_scale_to_the_best_and_ties_count_as_relevant() -> None:
    assert relative_scores([2.0, 4.0, 3.0]).tolist() == [0.0, 1.0, 0.5]
    assert relative_scores([1.0, 1.0]).tolist() == [1.0, 1.0]
    assert relative_scores([]).numel() == 0


def test_query_terms_find_the_asked_entity_through_the_title() -> None:
    rel = query_term_overlap("Tell me about Robert Boulter.", [BOULTER, KERSHAW, ROBERT])
    assert rel[0] == 1.0 and rel[1] == 0.0
    # "robert" is in two of three passages, "boulter" in one: sharing only "robert" counts less than half.
    assert 0.0 < rel[2] < 0.5


def test_query_without_content_words_or_matches_says_nothing() -> None:
    assert query_term_overlap("Tell me about it.", [BOULTER, KERSHAW]).tolist() == [1.0, 1.0]
    assert query_term_overlap("Zorblax?", [BOULTER, KERSHAW]).tolist() == [1.0, 1.0]


def test_both_signals_must_agree_and_missing_scores_count_as_one() -> None:
    passages = [BOULTER, KERSHAW]
    query = "Which guest role did he have?"  # no name: the two signals must agree
    assert passage_relevance(query, passages, [0.0, 1.0], "score").tolist() == [0.0, 1.0]
    assert passage_relevance(query, passages, [0.0, 1.0], "both").tolist() == [0.0, 0.0]
    assert passage_relevance(query, passages, None, "both").tolist() == [1.0, 0.0]
    assert passage_relevance(query, passages, [None, 1.0], "both").tolist() == [1.0, 0.0]  # a missing score: none
    torch.testing.assert_close(passage_relevance(query, passages, None, "score"), torch.ones(2))


def test_a_low_score_never_drops_the_source_that_names_everything_the_query_names() -> None:
    # A break test's case: min-max scaling put the last-ranked passage at 0, and it was the one asked about.
    anna = Passage(id="a", title="Anna Berg", text="Anna Berg was a Swedish painter who studied in Paris.")
    lars = Passage(id="l", title="Lars Berg", text="Lars Berg was a Norwegian chemist who studied enzymes.")
    query = "Tell me about Lars Berg."
    anna_relevance, lars_relevance = passage_relevance(query, [anna, lars], [0.9, 0.8], "both").tolist()
    assert lars_relevance == 1.0 and anna_relevance < 0.5  # Anna's biography names "Berg" only
    # Without a key term, or when no source names all of them, the scores still count.
    assert passage_relevance("Tell me about chemistry.", [anna, lars], [0.9, 0.8], "both").tolist()[1] == 0.0
    assert passage_relevance("Tell me about Lars Nilsson.", [anna, lars], [0.9, 0.8], "both").tolist()[1] == 0.0


def test_score_led_trusts_the_scores_when_the_best_scored_source_names_everything() -> None:
    # Two paragraphs of one article: both name "Lars Berg", so "both" rates them alike. Both
    # titles name him too: only the best-scored of them is kept whatever its score.
    first = Passage(id="1", document_id="p1", title="Lars Berg", text="Lars Berg studied enzymes in Oslo.")
    later = Passage(id="2", document_id="p2", title="Lars Berg", text="In 1990 Lars Berg retired to Bergen.")
    anna = Passage(id="a", document_id="a", title="Anna Berg", text="Anna Berg was a Swedish painter.")
    query = "Where did Lars Berg study enzymes?"
    both = passage_relevance(query, [first, later], [1.0, 0.2], "both").tolist()
    assert both == [1.0, pytest.approx(0.589, abs=0.01)]
    assert passage_relevance(query, [first, later], [1.0, 0.2], "score_led").tolist() == [1.0, 0.0]
    # When the best-scored source misses a key term, the guard still keeps the one that names everything.
    rel = passage_relevance("Tell me about Lars Berg.", [anna, later], [0.9, 0.8], "score_led").tolist()
    assert rel == passage_relevance("Tell me about Lars Berg.", [anna, later], [0.9, 0.8], "both").tolist()
    assert rel[1] == 1.0
    # A break test's case: the best-scored page names Lars Berg in passing; his own page (its title
    # names him) must not be dropped by its score.
    sister = Passage(id="s", document_id="s", title="Anna Berg", text="Her brother Lars Berg taught her to paint.")
    rel = passage_relevance("Tell me about Lars Berg.", [sister, later], [0.9, 0.2], "score_led").tolist()
    assert rel[1] == 1.0
    # A second break test's case: his page has no title, so nothing says what it is about: guarded as under "both".
    untitled = later.model_copy(update={"title": ""})
    assert passage_relevance("Tell me about Lars Berg.", [sister, untitled], [0.9, 0.1], "score_led").tolist()[1] == 1.0
    # A third: his page's title is its file name, which says nothing about what it is about. Only
    # the best-scored page's own article is ranked by score; another title keeps the guard.
    for title in ("bio2", "Bergen"):
        file_named = later.model_copy(update={"title": title})
        rel = passage_relevance("Tell me about Lars Berg.", [sister, file_named], [0.9, 0.1], "score_led").tolist()
        assert rel[1] == 1.0
    # A fourth: both pages carry one generic title ("Biography"); his page opens with his name, so it is about him.
    anna_bio = sister.model_copy(
        update={"title": "Biography", "text": "Anna Berg is a painter. Her brother Lars Berg is not."}
    )
    lars_bio = later.model_copy(update={"title": "Biography", "text": "Lars Berg (born 1954) is a Swedish engineer."})
    rel = passage_relevance("Tell me about Lars Berg.", [anna_bio, lars_bio], [10.0, 5.0], "score_led").tolist()
    assert rel == [1.0, 1.0]
    # Paragraphs of the best-scored page's article (its title, which does not name him) are ranked by score.
    p1 = first.model_copy(update={"title": "Oslo enzymology"})
    p2 = later.model_copy(update={"title": "Oslo enzymology"})
    assert passage_relevance(query, [p1, p2], [1.0, 0.2], "score_led").tolist() == [1.0, 0.0]
    assert passage_relevance(query, [p1, p2], [1.0, 0.2], "both").tolist() == both
    # ... unless a paragraph opens with everything the query names: then it is about that, and guarded.
    p2_opening = p2.model_copy(update={"text": "Lars Berg retired to Bergen in 1990."})
    assert passage_relevance(query, [p1, p2_opening], [1.0, 0.2], "score_led").tolist() == both


@pytest.mark.parametrize("signal", ["score", "query_terms", "both", "score_led"])
def test_relevance_is_between_zero_and_one(signal) -> None:
    rel = passage_relevance("Robert baseball", [BOULTER, KERSHAW, ROBERT], [3.0, -1.0, 0.5], signal)
    assert rel.shape == (3,) and bool(((rel >= 0) & (rel <= 1)).all())
    if signal in ("score", "query_terms"):  # the smaller of two signals need not reach 1 anywhere
        assert float(rel.max()) == 1.0


def test_a_source_is_as_relevant_as_its_best_passage() -> None:
    boulter_later = Passage(id="b2", title="Robert Boulter", document_id="Robert_Boulter", text="In 2003 he starred.")
    boulter = BOULTER.model_copy(update={"document_id": "Robert_Boulter"})
    kershaw = KERSHAW.model_copy(update={"document_id": "Clayton_Kershaw"})
    rel = passage_relevance(
        "What did Boulter do? He starred", [boulter, boulter_later, kershaw], [3.0, 0.0, 1.0], "score"
    )
    assert rel.tolist() == [1.0, 1.0, pytest.approx(1 / 3)]


@pytest.mark.parametrize(
    ("query", "terms"),
    [
        ("Tell me about Robert Boulter.", {"robert", "boulter"}),
        ("Which television series did Robert Boulter appear in?", {"robert", "boulter"}),
        ("When did the 1933 hurricane hit Florida?", {"1933", "florida"}),
        ("He met Du Fu in Chang'an. Then he left.", {"du", "fu", "chang"}),
        ("who sang kiss you", set()),
        ("Describe it. Explain why.", set()),
    ],
)
def test_key_terms_are_names_and_numbers_not_sentence_openers(query, terms) -> None:
    assert key_terms(query) == terms


def test_source_coverage_is_absolute_and_counts_a_document_as_one_source() -> None:
    query = "Tell me about Robert Boulter."
    assert source_coverage(query, [BOULTER, KERSHAW]) == 1.0
    # Only "Robert" (of Robert Gore) is found: no source is about Boulter.
    assert source_coverage(query, [KERSHAW, ROBERT]) == 0.5
    assert source_coverage(query, []) == 0.0
    assert source_coverage("who is he?", [BOULTER]) is None
    assert source_coverage("?!?", [BOULTER]) == 0.0  # a query without a word is about nothing
    halves = [
        Passage(id="1", text="Robert was born in 1977.", document_id="d"),
        Passage(id="2", text="Boulter acted on stage.", document_id="d"),
    ]
    assert source_coverage(query, halves) == 1.0
    assert source_coverage(query, [h.model_copy(update={"document_id": None}) for h in halves]) == 0.5
