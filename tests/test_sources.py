"""Source selection on constructed passages (no model): ids that name one text each."""

from nest_integrations import NestConfig, Passage
from nest_integrations.passages.types import ScoredPassage
from nest_integrations.sources import select_sources


def test_passages_sharing_an_id_but_not_their_text_get_distinct_ids_and_identical_ones_stay_duplicates() -> None:
    # A break test's case: a loader copied metadata["id"] into every chunk of a document.
    texts = ["Oskar Brandt was a sculptor.", "Oskar Brandt was a rower.", "Oskar Brandt was a sculptor."]
    retrieved = [ScoredPassage(passage=Passage(id="brandt", text=t, title="Oskar Brandt")) for t in texts]
    retrieved.append(ScoredPassage(passage=Passage(id="brandt#2", text="Oskar Brandt was a judge.")))
    config = NestConfig(min_passage_relevance=0.0, min_source_coverage=0.0)
    selection = select_sources("Tell me about Oskar Brandt.", retrieved, config)
    ids = [s.passage.id for s in selection.retrieved]
    assert ids == ["brandt", "brandt#3", "brandt", "brandt#2"]
    by_id: dict[str, str] = {}
    for s in selection.retrieved:
        assert by_id.setdefault(s.passage.id, s.passage.text) == s.passage.text
    assert [s.passage.id for s in selection.searched] == ["brandt", "brandt#3", "brandt#2"]
    assert [p.text for p in selection.duplicates[0]] == [texts[0]]


def test_a_query_without_a_word_searches_no_source() -> None:
    # A break test's case: "?!?" retrieved passages by their embedding alone and copied from them.
    retrieved = [ScoredPassage(passage=Passage(id="a", title="A", text="Some text here."), score=1.0)]
    for query in ("?!?", "...", "  ", "\u2026 \U0001f642"):
        selection = select_sources(query, retrieved, NestConfig())
        assert selection.gated and not selection.searched
    assert not select_sources("?!?", retrieved, NestConfig(min_source_coverage=0)).gated  # the gate is off
    assert select_sources("\u6771\u4eac?", retrieved, NestConfig()).searched  # CJK words are words


def test_a_page_about_the_query_with_a_file_name_title_is_searched_under_the_shipped_config() -> None:
    # A break test's case: "Tell me about Lars Berg." when his page is a file titled "bio2" and his
    # sister's page, which mentions him, scores best: "score_led" dropped his page.
    from nest_integrations.config import default_config

    anna = Passage(
        id="Anna_Berg#0",
        document_id="Anna_Berg",
        title="Anna_Berg",
        text="Anna Berg (born 1961) is a Swedish chemist known for her work on catalytic converters. She studied "
        "at Uppsala University and later led a research group at the Royal Institute of Technology in Stockholm. "
        "Her younger brother, Lars Berg, is a painter. Anna Berg received the Polhem Prize in 1998 for a platinum "
        "catalyst design.",
    )
    lars = Passage(
        id="bio2#0",
        document_id="bio2",
        title="bio2",
        text="Lars Berg (born 1965) is a Swedish painter who works mainly in oil on large canvases. He trained at "
        "the Royal Swedish Academy of Fine Arts and has exhibited in Gothenburg, Oslo and Berlin.",
    )
    query = "Tell me about Lars Berg."
    # The scores the break test's index gave them (convex re-ranking: BM25 put his page last).
    retrieved = [ScoredPassage(passage=anna, score=0.89), ScoredPassage(passage=lars, score=0.5)]
    selection = select_sources(query, retrieved, default_config("SmolLM2-135M-Instruct"))
    assert {s.passage.id for s in selection.searched} == {"Anna_Berg#0", "bio2#0"}
