"""Framework call options -> engine overrides: the mapping, its validation, and that the same
``nest_config`` decodes to the same text through ChatNest, the LlamaIndex NestLLM and the
OpenAI-compatible server (real HTTP)."""

from __future__ import annotations

import math

import httpx
import pytest
from server_harness import running

from nest_integrations import ConfigError, NestConfig, NestEngine, StaticRetriever, default_config, default_corpus
from nest_integrations.call_options import MAX_SEED, engine_overrides, last_user_text
from nest_integrations.index import chunk_documents

QUESTION = "Tell me about Robert Boulter."


def test_nothing_set_leaves_everything_to_the_config() -> None:
    assert engine_overrides() == {}
    assert engine_overrides(temperature=None, top_p=None, max_tokens=None, stop=None, seed=None) == {}


def test_temperature_none_keeps_the_configs_sampling() -> None:
    sampled = NestConfig(do_sample=True, temperature=0.8, seed=3)
    out = engine_overrides(nest_config=sampled, temperature=None)
    assert out == sampled.model_dump()
    assert out["do_sample"] is True and out["temperature"] == 0.8 and out["seed"] == 3


def test_temperature_zero_is_greedy_and_above_zero_samples() -> None:
    sampled = NestConfig(do_sample=True, temperature=0.8)
    assert engine_overrides(nest_config=sampled, temperature=0)["do_sample"] is False
    assert engine_overrides(nest_config=sampled, temperature=0)["temperature"] == 0.8  # untouched
    assert engine_overrides(temperature=0.0) == {"do_sample": False}
    assert engine_overrides(temperature=1.3) == {"do_sample": True, "temperature": 1.3}


def test_other_options_map_to_config_fields() -> None:
    out = engine_overrides(
        nest_config={"alpha": 0.2, "stop": ["\n\n"]}, top_p=0.9, max_tokens=17, stop=["END", "\n\n"], seed=MAX_SEED
    )
    assert out == {"alpha": 0.2, "stop": ["\n\n", "END"], "top_p": 0.9, "max_new_tokens": 17, "seed": MAX_SEED}
    assert engine_overrides(stop="END") == {"stop": ["END"]}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.1},
        {"temperature": 10.5},
        {"temperature": math.nan},
        {"temperature": "hot"},
        {"top_p": 0},
        {"top_p": 1.01},
        {"max_tokens": 0},
        {"max_tokens": 32769},
        {"max_tokens": True},
        {"max_tokens": 2.5},
        {"seed": -1},
        {"seed": MAX_SEED + 1},
        {"seed": 1.5},
        {"stop": [""]},
        {"nest_config": {"alpha": 2.0}},
        {"nest_config": {"not_a_field": 1}},
        {"nest_config": "greedy"},
    ],
)
def test_out_of_range_options_raise_config_error(kwargs) -> None:
    with pytest.raises(ConfigError) as info:
        engine_overrides(**kwargs)
    assert isinstance(info.value, ValueError)
    name = next(iter(kwargs))
    assert name in str(info.value)


def test_last_user_text_is_the_one_helper() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "  "},
    ]
    assert last_user_text(messages) == "first"


# The same nest_config through both adapters and the server ------------------------------------------


@pytest.fixture(scope="module")
def boulter():
    return [p for p in chunk_documents(default_corpus()) if p.document_id == "Robert_Boulter"][:6]


def _via_server(engine: NestEngine) -> str:
    from nest_integrations.server.openai_api import create_app

    with running(create_app(engine)) as url:
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": engine.lm.name, "messages": [{"role": "user", "content": QUESTION}]},
            timeout=600,
        )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


@pytest.mark.slow
def test_same_nest_config_gives_the_same_text_in_both_adapters_and_the_server(boulter) -> None:
    langchain_nest = pytest.importorskip("langchain_nest", reason="install adapters/langchain-nest")
    li_nest = pytest.importorskip("llama_index.llms.nest", reason="install adapters/llama-index-nest")
    from nest_integrations import shared_engine

    base = default_config("SmolLM2-135M-Instruct")
    configs = {
        "sampled": base.model_copy(update={"do_sample": True, "temperature": 1.5, "seed": 11, "max_new_tokens": 40}),
        "greedy": base.model_copy(update={"do_sample": False, "max_new_tokens": 40}),
    }
    lm = shared_engine("default").lm  # the adapters' shared engine: one model load for all three
    texts = {}
    for name, cfg in configs.items():
        retriever = StaticRetriever(boulter)
        chat = langchain_nest.ChatNest(retriever=retriever, nest_config=cfg).invoke(QUESTION).text
        llm = li_nest.NestLLM(retriever=retriever, nest_config=cfg)
        assert llm.temperature is None
        completion = llm.complete(QUESTION).text
        served = _via_server(NestEngine(lm, retriever=retriever, config=cfg))
        assert chat == completion == served, name
        texts[name] = chat
    # The sampled config really sampled (a temperature default forcing greedy would fail here).
    assert texts["sampled"].strip() and texts["sampled"] != texts["greedy"]


def test_chatnest_reads_a_lone_stop_string_as_one_and_rejects_an_empty_one() -> None:
    from langchain_nest._base import _stops

    assert _stops(None, "END") == ["END"]  # not ["E", "N", "D"]
    assert _stops(["\n\n"], ["END"]) == ["\n\n", "END"]
    assert _stops(None, None) is None
    with pytest.raises(ConfigError):
        engine_overrides(stop=_stops(None, ""))
