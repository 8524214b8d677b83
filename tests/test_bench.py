"""The benchmark harness: ROUGE on hand-made examples, and a 2-prompt smoke run so it cannot rot."""

import json

import pytest

from nest_integrations.bench.metrics import rouge, rouge_l, rouge_n
from nest_integrations.bench.run import run_benchmark
from nest_integrations.bench.tasks import completion_prompts, entity_prompts


def test_rouge_matches_hand_computed_values() -> None:
    assert rouge_n("the cat sat", "the cat sat", 1) == 1.0
    # hypothesis "the cat", reference "the cat sat on": P = 1, R = 0.5 -> F1 = 2/3
    assert rouge_n("the cat", "the cat sat on", 1) == pytest.approx(2 / 3)
    assert rouge_n("the cat", "the cat sat on", 2) == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))
    # LCS("a b c d", "a c b d") = 3 -> P = R = 3/4
    assert rouge_l("a b c d", "a c b d") == pytest.approx(0.75)
    assert rouge("", "anything") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_prompt_samples_are_seeded_and_split_correctly() -> None:
    a, b = completion_prompts(5, seed=3), completion_prompts(5, seed=3)
    assert a == b and len(a) == 5
    for p in a:
        assert len(p.text.split(" ")) == 40 and p.reference
    entities = entity_prompts(3, seed=1)
    assert all(p.text.startswith("Tell me about ") and p.reference for p in entities)


@pytest.mark.slow
def test_harness_smoke_run_on_two_prompts(tmp_path, engine) -> None:
    rows = run_benchmark(tmp_path, completion=1, entity=1, max_new_tokens=8, progress=False, engine=engine)
    systems = {r["system"] for r in rows}
    assert len(systems) == 8 and {r["task"] for r in rows} == {"completion", "entity"}
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["measurements"]) == 16
    assert (tmp_path / "results.png").stat().st_size > 10_000
    for r in rows:
        assert 0.0 <= r["rougeL"] <= 1.0 and r["tokens_per_s"] > 0
        if r["system"].startswith("a:"):
            assert r["speed_ratio"] == 1.0
    assert "| e: NEST warm cache |" in (tmp_path / "results.md").read_text()
