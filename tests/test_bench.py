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
    # The engine's config has the guards on, so the paper's settings run as (e0) too; (l) runs
    # only where a llama.cpp binding is installed.
    peer = any(s.startswith("l:") for s in systems)
    assert len(systems) == 10 + peer and "e0: NEST warm, paper settings" in systems
    assert "s: plain, static cache" in systems
    assert {r["task"] for r in rows} == {"completion", "entity"}
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["measurements"]) == 2 * len(systems)
    for task in ("completion", "entity"):
        plain = [r for r in rows if r["task"] == task and r["system"][:2] in ("a:", "s:", "l:")]
        assert max(r["speed_vs_best_plain"] for r in plain) == 1.0
        best = max(r["tokens_per_s"] for r in plain)
        for r in rows:
            if r["task"] == task:
                assert r["speed_vs_best_plain"] == pytest.approx(r["tokens_per_s"] / best)
    assert (tmp_path / "results.png").stat().st_size > 10_000
    for r in rows:
        assert 0.0 <= r["rougeL"] <= 1.0 and r["tokens_per_s"] > 0
        if r["system"].startswith("a:"):
            assert r["speed_ratio"] == 1.0
        if r["system"][:2] in ("a:", "b:", "c:"):  # list no citations: no claim columns
            assert r["spliced_rate"] is r["fragment_citation_rate"] is r["verbatim_share"] is None
        if r["system"][:2] in ("d:", "e:"):  # NEST: every answer has a verbatim share
            assert r["verbatim_share"] is not None
        for k in ("spliced_rate", "fragment_citation_rate", "verbatim_share"):
            assert r[k] is None or 0.0 <= r[k] <= 1.0, (r["system"], k, r[k])
    assert "| e: NEST warm cache |" in (tmp_path / "results.md").read_text()
    assert "| spliced | spliced uncited too | fragment cit. | verbatim |" in (tmp_path / "results.md").read_text()


def test_sentence_start_and_mid_sentence_openings() -> None:
    from nest_integrations.bench.metrics import is_sentence_start, starts_mid_sentence

    text = "Boulter is an actor. He had a role.\nIn 2003 he starred."
    assert is_sentence_start(text, 0) and is_sentence_start(text, text.index("He"))
    assert is_sentence_start(text, text.index("In 2003")) and not is_sentence_start(text, text.index("is an"))
    assert starts_mid_sentence("Wade - like him", copied_from_sentence_start=False)
    assert not starts_mid_sentence("He had a role.", copied_from_sentence_start=True)
    assert starts_mid_sentence(" had a role.", None) and starts_mid_sentence(", 1758 -", None)
    assert not starts_mid_sentence('"Boulter" is', None) and not starts_mid_sentence("", None)


def test_calibration_search_keeps_the_best_value_per_parameter(tmp_path, monkeypatch) -> None:
    from nest_integrations import NestConfig
    from nest_integrations.bench import calibrate as cal

    def fake_evaluate(engine, prompts, params, max_new_tokens, floor, stages) -> cal.Trial:
        # Best at alpha = 0.2 and gamma = 0.05; attribution falls under the floor for beta = 0.3.
        attribution = 0.4 if params["beta"] == 0.3 else 0.9
        score = -abs(params["alpha"] - 0.2) - abs(params["gamma"] - 0.05)
        objective = score if attribution >= floor else attribution - 1.0
        return cal.Trial(dict(params), objective, 0.3, 1.0, attribution, 100.0)

    class FakeEngine:
        config = NestConfig()
        retriever = None

    monkeypatch.setattr(cal, "evaluate", fake_evaluate)
    grid = {"alpha": [0.1, 0.2, 0.3], "beta": [0.3, 0.5], "gamma": [5e-4, 5e-2]}
    config, trials = cal.calibrate(FakeEngine(), [], grid=grid, stages=[], margin=0.0)  # type: ignore[arg-type]
    assert (config.alpha, config.beta, config.gamma) == (0.2, 0.5, 0.05)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == len(trials)
    path = tmp_path / "calibrated.json"
    cal.write_calibration(path, config, trials, {"model": "test"})
    assert NestConfig.from_file(path) == config
    assert json.loads(path.read_text())["calibration"]["chosen"]["params"]["alpha"] == 0.2


def test_held_in_prompts_avoid_the_benchmark_sample() -> None:
    from nest_integrations.bench.calibrate import held_in_prompts

    held = held_in_prompts(10, 10, seed=0)
    bench_entities = {p.document_id for p in entity_prompts(20, 0)}
    bench_completions = {p.text for p in completion_prompts(50, 0)}
    assert len(held) == 20
    assert not {p.document_id for p in held} & bench_entities
    assert not {p.text for p in held if p.task == "completion"} & bench_completions


@pytest.mark.slow
def test_mixed_and_held_out_first_stages(engine) -> None:
    from nest_integrations.bench.first_stages import first_stage

    prompt = entity_prompts(1, 0)[0]
    passages = first_stage("mixed", engine)(prompt)
    own = [s for s in passages if s.passage.document_id == prompt.document_id]
    assert len(passages) == 20 and 1 <= len(own) <= 6 and all(s.score is None for s in passages)
    completion = completion_prompts(1, 0)[0]
    held = first_stage("held-out", engine)(completion)
    assert len(held) == 20 and all(s.passage.document_id != completion.document_id for s in held)
    with pytest.raises(ValueError, match="unknown first stage"):
        first_stage("nope", engine)


@pytest.mark.slow
def test_a_worker_process_runs_one_system_and_reports_its_own_peak_rss() -> None:
    import subprocess
    import sys

    from nest_integrations.bench.systems import measurement_from_dict

    spec = {"completion": 0, "entity": 1, "max_new_tokens": 4, "seed": 0}
    spec |= {"model": "default", "first_stage": "built-in", "config": None}
    done = subprocess.run(
        [sys.executable, "-m", "nest_integrations.bench.worker", json.dumps(spec), "5"],  # a, s, b, c, d, e
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["systems"] >= 8 and report["model"] == "SmolLM2-135M-Instruct"
    (m,) = [measurement_from_dict(d) for d in report["measurements"]]
    assert m.system == "e: NEST warm cache" and 0 < m.tokens <= 4
    assert list(report["peak_rss_mib"]) == [m.system] and report["peak_rss_mib"][m.system] > 100


@pytest.mark.slow
def test_gpu_overhead_script_runs_on_cpu() -> None:
    """benchmarks/gpu_overhead.py waits for a GPU session; this keeps it from rotting meanwhile."""
    import importlib.util
    from pathlib import Path

    import torch

    path = Path(__file__).parents[1] / "benchmarks" / "gpu_overhead.py"
    spec = importlib.util.spec_from_file_location("gpu_overhead", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cpu = torch.device("cpu")
    rows = module.verification_cost("135M", cpu, torch.float32, context=32, ns=[1, 8], repeats=1)
    assert [r["n"] for r in rows] == [1, 8] and rows[0]["x_one_step"] == 1.0 and rows[1]["ms"] > 0
    knn = module.knn_overhead(cpu, dim=64, keys=2000, positions=4, repeats=1)
    assert knn["keys"] == 2000 and knn["search_knn_mixture_ms"] > 0
