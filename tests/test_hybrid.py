import pytest

from nest_integrations import HybridRetriever, Passage
from nest_integrations.passages import fuse_scores
from nest_integrations.passages.embedder import SentenceEmbedder

PASSAGES = [
    Passage(id="cat", title="Cats", text="The domestic cat is a small carnivorous mammal kept as a pet."),
    Passage(id="rome", title="Rome", text="Rome is the capital city of Italy, founded according to legend in 753 BC."),
    Passage(id="py", title="Python", text="Python is a programming language created by Guido van Rossum."),
]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder()


def test_embeddings_are_normalised_and_semantic(embedder: SentenceEmbedder) -> None:
    v = embedder.encode(["a kitten", "a small cat", "the Italian capital"])
    assert v.shape == (3, 384)
    assert abs(float((v[0] ** 2).sum()) - 1) < 1e-5
    assert v[0] @ v[1] > v[0] @ v[2]


def test_hybrid_ranks_relevant_passage_first(embedder: SentenceEmbedder) -> None:
    r = HybridRetriever(PASSAGES, embedder=embedder)
    assert r.retrieve("Which city is the capital of Italy?", k=2)[0].passage.id == "rome"
    assert r.retrieve("who created the python language", k=1)[0].passage.id == "py"


def test_index_round_trips_through_disk(tmp_path, embedder: SentenceEmbedder) -> None:
    r = HybridRetriever(PASSAGES, embedder=embedder)
    r.save(tmp_path / "idx")
    assert not list((tmp_path / "idx").rglob("*.pkl"))
    loaded = HybridRetriever.load(tmp_path / "idx", embedder=embedder)
    assert loaded.passages == r.passages
    q = "pet animals"
    assert [(s.passage.id, round(s.score, 5)) for s in loaded.retrieve(q, 3)] == [
        (s.passage.id, round(s.score, 5)) for s in r.retrieve(q, 3)
    ]


def test_empty_corpus_and_empty_query_return_nothing(tmp_path, embedder: SentenceEmbedder) -> None:
    empty = HybridRetriever([], embedder=embedder)
    assert empty.retrieve("anything", 5) == []
    empty.save(tmp_path / "e")
    assert HybridRetriever.load(tmp_path / "e").retrieve("anything", 5) == []
    assert HybridRetriever(PASSAGES, embedder=embedder).retrieve("   ", 3) == []


def test_loading_a_non_index_directory_says_how_to_build_one(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nest index"):
        HybridRetriever.load(tmp_path)


def test_fusion_is_bm25_plus_weighted_dense_with_lowest_score_for_missing() -> None:
    fused = fuse_scores({1: 0.9, 2: 0.5}, {2: 10.0, 3: 4.0}, dense_weight=0.3)
    assert fused == pytest.approx({1: 4.0 + 0.27, 2: 10.0 + 0.15, 3: 4.0 + 0.15})


def test_default_corpus_retrieval_finds_the_asked_article(corpus_retriever) -> None:
    hits = corpus_retriever.retrieve("Tell me about Clayton Kershaw.", 20)
    assert len(hits) == 20
    assert hits[0].passage.document_id == "Clayton_Kershaw"
