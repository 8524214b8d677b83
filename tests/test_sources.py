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
