"""Where the first stage runs: the encoder's torch device, the dense index's FAISS device, and
the dense-only view of the hybrid retriever."""

from __future__ import annotations

import types

import faiss
import numpy as np
import pytest
import torch

from nest_integrations import ConfigError, HybridRetriever, Passage, PassageRetriever
from nest_integrations.passages.devices import faiss_gpu_count, resolve_torch_device, use_gpu_faiss
from nest_integrations.passages.embedder import SentenceEmbedder

PASSAGES = [
    Passage(id="cat", title="Cats", text="The domestic cat is a small carnivorous mammal kept as a pet."),
    Passage(id="rome", title="Rome", text="Rome is the capital city of Italy, founded according to legend in 753 BC."),
    Passage(id="py", title="Python", text="Python is a programming language created by Guido van Rossum."),
    Passage(id="dog", title="Dogs", text="The dog is a domesticated descendant of the wolf, kept as a pet."),
]
HAS_CUDA = torch.cuda.is_available()
FAISS_GPUS = faiss_gpu_count()


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder()


def test_default_torch_device_is_cuda_when_present_else_cpu() -> None:
    assert resolve_torch_device(None) == torch.device("cuda" if HAS_CUDA else "cpu")
    assert resolve_torch_device("cpu") == torch.device("cpu")
    assert resolve_torch_device(torch.device("cpu")) == torch.device("cpu")


def test_unknown_or_unavailable_torch_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Unknown device 'tpu9'"):
        resolve_torch_device("tpu9")
    if not HAS_CUDA:
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            resolve_torch_device("cuda")
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            SentenceEmbedder(device="cuda")


def test_embedder_runs_on_the_resolved_device(embedder: SentenceEmbedder) -> None:
    assert embedder.device == resolve_torch_device(None)
    assert next(embedder.model.parameters()).device.type == embedder.device.type


@pytest.mark.parametrize(
    ("dense_device", "num_gpus", "expected"),
    [("auto", 0, False), ("auto", 1, True), ("auto", 4, True), ("cpu", 0, False), ("cpu", 2, False), ("cuda", 1, True)],
)
def test_dense_index_goes_to_the_gpu_only_when_faiss_sees_one_and_it_is_not_kept_on_cpu(
    dense_device: str, num_gpus: int, expected: bool
) -> None:
    assert use_gpu_faiss(dense_device, num_gpus) is expected


def test_asking_for_gpu_faiss_without_one_or_an_unknown_device_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match="pip install faiss-gpu"):
        use_gpu_faiss("cuda", 0)
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        use_gpu_faiss("gpu", 1)


def test_gpu_count_is_zero_for_a_faiss_without_gpu_support() -> None:
    assert faiss_gpu_count(types.SimpleNamespace()) == 0  # a build with no get_num_gpus at all
    assert (faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0) == FAISS_GPUS


@pytest.mark.skipif(FAISS_GPUS > 0, reason="this FAISS sees a GPU; the CPU-only case cannot be checked here")
def test_with_cpu_faiss_the_dense_index_stays_a_cpu_index(embedder: SentenceEmbedder, tmp_path) -> None:
    r = HybridRetriever(PASSAGES, embedder=embedder)
    assert r.dense_device == "auto" and r.dense_on_gpu is False
    assert type(r._dense_search) is faiss.IndexFlatIP and r._dense_search is r._dense
    with pytest.raises(ConfigError, match="faiss-gpu"):
        HybridRetriever(PASSAGES, embedder=embedder, dense_device="cuda")
    r.save(tmp_path / "idx")
    with pytest.raises(ConfigError, match="faiss-gpu"):
        HybridRetriever.load(tmp_path / "idx", embedder=embedder, dense_device="cuda")
    assert HybridRetriever.load(tmp_path / "idx", embedder=embedder, dense_device="cpu").dense_on_gpu is False


def test_an_unknown_dense_device_is_rejected_before_any_work() -> None:
    with pytest.raises(ConfigError, match="dense_device"):
        HybridRetriever(PASSAGES, embedder=None, dense_device="gpu")  # no encoder is loaded for this


@pytest.mark.skipif(
    FAISS_GPUS == 0, reason="needs a GPU build of FAISS (faiss-gpu) and a GPU; see docs/first-stages.md"
)
def test_on_gpu_faiss_the_index_moves_there_and_ranks_as_on_cpu(embedder: SentenceEmbedder, tmp_path) -> None:
    gpu = HybridRetriever(PASSAGES, embedder=embedder)
    cpu = HybridRetriever(PASSAGES, embedder=embedder, dense_device="cpu")
    assert gpu.dense_on_gpu is True and cpu.dense_on_gpu is False
    for q in ("pet animals", "the capital of Italy"):
        assert [s.passage.id for s in gpu.retrieve(q, 4)] == [s.passage.id for s in cpu.retrieve(q, 4)]
        assert [s.score for s in gpu.retrieve(q, 4)] == pytest.approx([s.score for s in cpu.retrieve(q, 4)], abs=1e-5)
    gpu.save(tmp_path / "idx")  # the CPU copy is what is written
    assert type(faiss.read_index(str(tmp_path / "idx" / "dense.faiss"))) is faiss.IndexFlatIP


def test_dense_only_view_is_a_passage_retriever_ranking_by_cosine(embedder: SentenceEmbedder) -> None:
    r = HybridRetriever(PASSAGES, embedder=embedder)
    dense = r.dense_only()
    assert isinstance(dense, PassageRetriever) and len(dense) == len(PASSAGES) and dense.passages == PASSAGES
    query = "pet animals"
    hits = dense.retrieve(query, 3)
    # Exactly the cosine similarity of the query with each passage's "title. text", best first.
    q = embedder.encode([query])[0]
    vectors = embedder.encode([f"{p.title}. {p.text}" for p in PASSAGES])
    cosine = {p.id: float(vectors[i] @ q) for i, p in enumerate(PASSAGES)}
    expected = sorted(cosine.items(), key=lambda kv: -kv[1])[:3]
    assert [s.passage.id for s in hits] == [pid for pid, _ in expected]
    assert [s.score for s in hits] == pytest.approx([c for _, c in expected], abs=1e-5)
    assert np.isclose(sum(v * v for v in q), 1.0, atol=1e-5)
    assert dense.retrieve("   ", 3) == [] and HybridRetriever([], embedder=embedder).dense_only().retrieve("x", 3) == []
    # It differs from the fused ranking's scores (BM25 is left out).
    assert [s.score for s in hits] != [s.score for s in r.retrieve(query, 3)]
