import json

import numpy as np
import pytest

from nest_integrations import HybridRetriever, Passage
from nest_integrations.passages import convex_fusion, fuse_scores
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


def test_convex_fusion_scales_each_list_and_weights_them() -> None:
    # dense 0.9 / 0.5 -> 1 / 0; bm25 10 / 4 -> 1 / 0; a passage missing from a list gets its lowest (0).
    fused = convex_fusion({1: 0.9, 2: 0.5}, {2: 10.0, 3: 4.0}, dense_weight=0.25)
    assert fused == pytest.approx({1: 0.25 * 1.0, 2: 0.75 * 1.0 + 0.25 * 0.0, 3: 0.0})
    assert convex_fusion({4: 0.3}, {}, 0.5) == {4: 0.5}  # one candidate: it is the list's best
    assert convex_fusion({}, {}, 0.5) == {}


def test_a_clear_dense_preference_outweighs_a_small_bm25_one_only_when_scaled() -> None:
    # BM25 scores run to tens, cosines to 1: summed raw, a 0.2 BM25 lead beats a 0.6 cosine lead.
    dense = {1: 0.9, 2: 0.3, 3: 0.2}
    bm25 = {1: 12.0, 2: 12.2, 3: 2.0}
    summed = fuse_scores(dense, bm25, 0.3)
    scaled = convex_fusion(dense, bm25, 0.5)
    assert max(summed, key=summed.__getitem__) == 2
    assert max(scaled, key=scaled.__getitem__) == 1


def test_convex_fusion_scores_are_in_0_1_and_sum_stays_the_default(embedder: SentenceEmbedder) -> None:
    convex = HybridRetriever(PASSAGES, embedder=embedder, fusion="convex")
    summed = HybridRetriever(PASSAGES, embedder=embedder)
    assert (summed.fusion, summed.dense_weight, convex.dense_weight) == ("sum", 0.3, 0.5)
    assert all(0.0 <= s.score <= 1.0 for s in convex.retrieve("the capital of Italy", 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fusion": "rrf"}, "fusion must be one of sum, convex"),
        ({"fusion": "convex", "dense_weight": 1.5}, r"in \[0, 1\]"),
        ({"fusion": "convex", "dense_weight": float("nan")}, r"in \[0, 1\]"),
        ({"dense_weight": -1.0}, "finite and >= 0"),
        ({"dense_weight": float("inf")}, "finite and >= 0"),
        ({"dense_weight": "0.5"}, "dense_weight must be a number"),
        ({"dense_weight": True}, "dense_weight must be a number"),
    ],
)
def test_bad_fusion_settings_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        HybridRetriever(PASSAGES, embedder=None, **kwargs)


def test_bad_k_and_bad_weights_of_the_fusion_function_are_refused(tmp_path, embedder: SentenceEmbedder) -> None:
    r = HybridRetriever(PASSAGES, embedder=embedder)
    for retrieve in (r.retrieve, r.dense_retrieve, r.dense_only().retrieve):
        assert retrieve("capital of Italy", 0) == []
        for k in (-1, 1.5, True, "3"):
            with pytest.raises(ValueError, match="k must be an integer >= 0"):
                retrieve("capital of Italy", k)
    for w in (-0.5, 1.5, float("nan"), float("inf"), "0.5", True, None):
        with pytest.raises(ValueError, match="dense_weight must be a number in"):
            convex_fusion({1: 0.5}, {1: 3.0}, w)
    for w in (-0.5, float("nan"), float("inf"), "0.5", True, None):
        with pytest.raises(ValueError, match="dense_weight must be a number finite and >= 0"):
            fuse_scores({1: 0.5}, {1: 3.0}, w)
    for bad in (float("inf"), float("-inf"), float("nan")):
        for fuse in (convex_fusion, fuse_scores):
            with pytest.raises(ValueError, match="scores must be finite"):
                fuse({1: 0.5, 2: bad}, {1: 3.0}, 0.5)
            with pytest.raises(ValueError, match="scores must be finite"):
                fuse({1: 0.5}, {1: bad, 2: 1.0}, 0.5)
    assert convex_fusion({1: 0.5, 2: 0.1}, {}, np.float32(0.25)) == pytest.approx({1: 0.25, 2: 0.0})
    assert HybridRetriever(PASSAGES, embedder=None, fusion="convex", dense_weight=np.float32(0.4)).dense_weight == (
        pytest.approx(0.4)
    )
    r.save(tmp_path / "idx")
    with pytest.raises(ValueError, match="fusion must be one of"):
        HybridRetriever.load(tmp_path / "idx", fusion="")  # a bad value, not "the saved one"


def test_fusion_round_trips_and_an_index_saved_before_it_loads_as_sum(tmp_path, embedder) -> None:
    HybridRetriever(PASSAGES, embedder=embedder, fusion="convex", dense_weight=0.7).save(tmp_path / "s")
    loaded = HybridRetriever.load(tmp_path / "s", embedder=embedder)
    assert (loaded.fusion, loaded.dense_weight) == ("convex", 0.7)
    q = "pet animals"
    fresh = HybridRetriever(PASSAGES, embedder=embedder, fusion="convex", dense_weight=0.7)
    assert [s.passage.id for s in loaded.retrieve(q, 3)] == [s.passage.id for s in fresh.retrieve(q, 3)]
    # Before fusion was a choice, meta.json held only the weight of the one fusion there was.
    meta_path = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["fusion"]
    meta["dense_weight"] = 0.3
    meta_path.write_text(json.dumps(meta))
    old = HybridRetriever.load(tmp_path / "s", embedder=embedder)
    assert (old.fusion, old.dense_weight) == ("sum", 0.3)
    other = HybridRetriever.load(tmp_path / "s", embedder=embedder, fusion="convex")
    assert (other.fusion, other.dense_weight) == ("convex", 0.5)


def _scored(r: HybridRetriever, k: int) -> list[tuple[str, float]]:
    return [(s.passage.id, round(s.score, 4)) for s in r.retrieve("q", k)]


def test_rerank_orders_and_scores_the_sum_fusions_choice_by_the_convex_fusion(embedder, monkeypatch) -> None:
    # Summed raw, BM25's 0.2 lead makes "rome" first; scaled, "cat"'s cosine lead wins (as above).
    dense, bm25 = {0: 0.9, 1: 0.3, 2: 0.2}, {0: 12.0, 1: 12.2, 2: 2.0}
    convex = convex_fusion(dense, bm25, 0.5)
    retrievers = {
        rerank: HybridRetriever(PASSAGES, embedder=embedder, rerank=rerank) for rerank in ("convex", None, "sum")
    }
    retrievers["convex only"] = HybridRetriever(PASSAGES, embedder=embedder, fusion="convex")
    for r in retrievers.values():
        monkeypatch.setattr(r, "_dense_scores", lambda query, n: dense)
        monkeypatch.setattr(r, "_bm25_scores", lambda query, n: bm25)
    reranked = retrievers["convex"]
    assert (reranked.fusion, reranked.rerank) == ("sum", "convex")  # the default
    # k = 1: the passage is the sum's choice ("rome"), its score the convex one.
    assert _scored(reranked, 1) == [("rome", round(convex[1], 4))]
    assert _scored(retrievers["convex only"], 1) == [("cat", round(convex[0], 4))]
    # k = 2: the same two passages as without re-ranking, in the convex order with the convex scores.
    assert _scored(reranked, 2) == [("cat", round(convex[0], 4)), ("rome", round(convex[1], 4))]
    summed = fuse_scores(dense, bm25, 0.3)
    assert _scored(retrievers[None], 2) == [("rome", round(summed[1], 4)), ("cat", round(summed[0], 4))]
    assert retrievers["sum"].rerank is None and retrievers["convex only"].rerank is None  # its own fusion: none
    assert _scored(retrievers["sum"], 3) == _scored(retrievers[None], 3)


def test_rerank_round_trips_an_old_index_does_not_rerank_and_bad_values_are_refused(tmp_path, embedder) -> None:
    HybridRetriever(PASSAGES, embedder=embedder).save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["rerank"] == "convex"
    assert HybridRetriever.load(tmp_path / "s", embedder=embedder).rerank == "convex"
    assert HybridRetriever.load(tmp_path / "s", embedder=embedder, rerank=None).rerank is None
    meta_path = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["rerank"]  # saved before re-ranking was a choice
    meta_path.write_text(json.dumps(meta))
    assert HybridRetriever.load(tmp_path / "s", embedder=embedder).rerank is None
    assert HybridRetriever.load(tmp_path / "s", embedder=embedder, rerank="convex").rerank == "convex"
    meta["rerank"] = "Convex"  # hand-edited: the error names the file; a given value still loads
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"meta\.json: the saved rerank 'Convex' is not one of sum, convex"):
        HybridRetriever.load(tmp_path / "s", embedder=embedder)
    assert HybridRetriever.load(tmp_path / "s", embedder=embedder, rerank=None).rerank is None
    for candidates in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="candidates must be an integer >= 1"):
            HybridRetriever(PASSAGES, embedder=None, candidates=candidates)  # type: ignore[arg-type]
    for bad in ("rrf", "", "none"):
        with pytest.raises(ValueError, match="rerank must be one of sum, convex"):
            HybridRetriever(PASSAGES, embedder=None, rerank=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="rerank must be one of sum, convex"):
            HybridRetriever.load(tmp_path / "s", rerank=bad)  # type: ignore[arg-type]


def test_default_corpus_retrieval_finds_the_asked_article(corpus_retriever) -> None:
    hits = corpus_retriever.retrieve("Tell me about Clayton Kershaw.", 20)
    assert len(hits) == 20
    assert hits[0].passage.document_id == "Clayton_Kershaw"
