"""One place builds engines from options; the benchmark's hooks use only the public API."""

from pathlib import Path

import pytest
import torch

from nest_integrations import (
    ConfigError,
    IndexNotFoundError,
    ModelNotFoundError,
    StaticRetriever,
)
from nest_integrations.builder import EngineOptions, build_engine, check_options, key_store_dir
from nest_integrations.formatting import format_with_sources
from nest_integrations.hooks import clear_passage_cache, dense_retriever, plain_generate
from nest_integrations.lm import build_prompt_ids, normalize_messages


def test_check_options_rejects_each_bad_option_with_its_error(tmp_path) -> None:
    (tmp_path / "bad.json").write_text('{"alpha": 7}')
    cases = [
        (EngineOptions(index=tmp_path / "none"), IndexNotFoundError, "does not exist"),
        (EngineOptions(index=tmp_path), IndexNotFoundError, "no meta.json"),
        (EngineOptions(model="nobody/nothing"), ModelNotFoundError, "never downloaded"),
        (EngineOptions(device="gpu"), ConfigError, "Unknown device"),
        (EngineOptions(dtype="int4"), ConfigError, "Unknown dtype"),
        (EngineOptions(config=tmp_path / "bad.json"), ConfigError, "alpha"),
        (EngineOptions(overrides={"num_passages": 0}), ConfigError, "num_passages"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            check_options(options)
    assert check_options(EngineOptions(index=tmp_path, retrieval=False)) is None  # no index needed


def test_build_engine_attaches_a_writable_key_store_next_to_the_index(tmp_path, lm, corpus_retriever) -> None:
    corpus_retriever.save(tmp_path / "idx")
    engine = build_engine(EngineOptions(index=tmp_path / "idx", overrides={"num_passages": 3}), lm=lm)
    assert engine.config.num_passages == 3 and len(engine.retriever) == len(corpus_retriever)  # type: ignore[arg-type]
    store = engine.encoder.key_store
    assert store is not None and store.writable
    assert store.directory == key_store_dir(tmp_path / "idx", lm.name, "float32")
    memory_only = build_engine(EngineOptions(index=tmp_path / "idx", key_store=False), lm=lm)
    assert memory_only.encoder.key_store is None
    assert build_engine(EngineOptions(retrieval=False), lm=lm).retriever is None


def test_dense_view_is_the_dense_ranking_through_the_retriever_protocol(corpus_retriever) -> None:
    query = "Tell me about Robert Boulter."
    view = dense_retriever(corpus_retriever)
    got = [(s.passage.id, s.score) for s in view.retrieve(query, 7)]
    assert got == [(s.passage.id, s.score) for s in corpus_retriever.dense_retrieve(query, 7)]
    with pytest.raises(ConfigError, match="no dense-only ranking"):
        dense_retriever(StaticRetriever([]))


def test_plain_generate_is_greedy_generate_and_the_static_cache_agrees(lm) -> None:
    ids = build_prompt_ids(lm.tokenizer, normalize_messages("Tell me about Robert Boulter."))
    out = plain_generate(lm, ids, 16)
    with torch.inference_mode():
        ref = lm.model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)
    expected = [t for t in ref[0, len(ids) :].tolist() if t not in lm.eos_token_ids]
    assert out.token_ids == expected and out.text == lm.tokenizer.decode(expected, skip_special_tokens=True)
    assert out.seconds > 0
    assert plain_generate(lm, ids, 16, static_cache=True).token_ids == expected


def test_clear_passage_cache_makes_the_next_call_encode_again(engine, boulter_passages) -> None:
    engine.encoder.encode(boulter_passages[:2])
    clear_passage_cache(engine)
    before = engine.encoder.misses
    engine.encoder.encode(boulter_passages[:2])
    assert engine.encoder.misses == before + 2


def test_format_with_sources_marks_spans_and_lists_quotes() -> None:
    cites = [
        {"output_start": 0, "output_end": 6, "quote": "Robert", "passage_id": "p1", "title": "Robert Boulter"},
        {"output_start": 7, "output_end": 14, "quote": "Boulter", "passage_id": "p2", "title": None},
    ]
    assert format_with_sources("Robert Boulter acts.", cites) == (
        'Robert [1] Boulter [2] acts.\n[1] Robert Boulter: "Robert"\n[2] p2: "Boulter"'
    )
    located = [{**cites[0], "document_id": "Robert_Boulter", "document_start": 10, "document_end": 16}]
    assert format_with_sources("Robert Boulter acts.", located, locations=True, heading="Sources:") == (
        'Robert [1] Boulter acts.\n\nSources:\n[1] Robert Boulter (Robert_Boulter chars 10-16): "Robert"'
    )
    assert format_with_sources("No sources.", [], heading="Sources:") == "No sources."


def test_bench_code_uses_only_public_hooks() -> None:
    root = Path(__file__).parent.parent
    bench = [*(root / "nest_integrations" / "bench").glob("*.py"), *(root / "benchmarks").glob("*.py")]
    for path in bench:
        text = path.read_text()
        for private in ("engine.lm.model", "engine.encoder", "isinstance(engine.retriever", "dense_retrieve("):
            assert private not in text, (path.name, private)
