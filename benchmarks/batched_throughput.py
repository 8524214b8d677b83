"""Aggregate throughput and latency of concurrent requests: batched decoding vs one at a time.

Usage: python benchmarks/batched_throughput.py [--concurrency 1 4 8 16] [--max-new-tokens 64]
    [--requests-per-client 3] [--device cpu|cuda] [--dtype ...] [--prompts 16]
    [--serial-up-to C] [--set FIELD=JSON ...] [--rounds R] [--out FILE]

For each concurrency c, c client threads send c x ``--requests-per-client`` entity prompts
("Tell me about X.", the benchmark's entity task over the built-in corpus) taken from one
shared list, each client its next request as soon as its previous one is answered (a closed
loop, as vLLM's ``benchmark_serving --max-concurrency``: c requests in flight until the list
runs out), to (a) an engine that decodes one request at a time (``max_batch=1``: the lock
serialises them) and (b) an engine that batches them (``max_batch=c``, continuous batching).
Reported per system: aggregate generated tokens/s (all tokens / wall time), p50 / p95 request
latency, and the ratio to (a). Passage keys are warmed first (a pass over every prompt), so this
measures decoding. Greedy outputs of (a) and (b) are compared and any difference is reported.

Also per system: the model's forwards (one per batched step), and with ``--time-forwards`` the
mean wall time of one and their share of the wall time (synchronised on a GPU), so what is left
is NEST's own per-row work. First every prompt is sent once, alone (the table's "single
requests" row): a single request's tokens/s and p95 latency over the same prompts the loads
cycle through (a load of fewer requests than prompts sends the first ones). ``x one
request``: aggregate tokens/s over that (the issue's GPU measure); ``p95 / single p95``: a
row's p95 latency over the single requests' (the issue's CPU latency measure).
``--serial-up-to C`` skips the one-at-a-time system above C concurrent requests (it decodes
one request at a time, so its rate does not depend on c).

``--rounds R`` runs all of it R times over, alternating the systems within each round, and ends
with the median of each figure and of each round's ratios. A shared or virtual machine's speed
drifts by 10% or more between runs minutes apart (benchmarks/RESULTS.md, session 13); a ratio of
two systems measured in the same round is far steadier than either figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import torch

from nest_integrations import LoadedLM, NestEngine, default_retriever, load_lm
from nest_integrations.bench.tasks import entity_prompts


class ForwardTimer:
    """Counts ``lm.model``'s forwards and, when ``timed``, their wall time (waiting for the GPU to
    finish each: that stops the CPU from queuing the next step's work early, so it slows a GPU run)."""

    def __init__(self, lm: LoadedLM, timed: bool) -> None:
        self.calls = 0
        self.seconds = 0.0
        self.timed = timed
        sync = torch.cuda.synchronize if timed and lm.device.type == "cuda" else (lambda: None)
        inner = lm.model.forward

        def forward(*args: object, **kwargs: object) -> object:
            sync()
            t = time.perf_counter()
            out = inner(*args, **kwargs)
            sync()
            self.calls += 1
            self.seconds += time.perf_counter() - t
            return out

        lm.model.forward = forward

    def reset(self) -> tuple[int, float]:
        """(forwards, seconds) since the last reset."""
        calls, seconds = self.calls, self.seconds
        self.calls, self.seconds = 0, 0.0
        return calls, seconds


def closed_loop(
    engine: NestEngine, prompts: list[str], concurrency: int, max_new_tokens: int, overrides: dict
) -> tuple[float, list[float], list]:
    """``concurrency`` client threads take the next prompt from one shared list as soon as their
    previous request is answered (vLLM's ``--max-concurrency`` load), so ``concurrency``
    requests are in flight until the list runs out. Wall time, latencies, results in list order."""
    results: list = [None] * len(prompts)
    latencies: list[float] = []
    todo = iter(range(len(prompts)))
    take = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)

    def client() -> None:
        barrier.wait()
        while True:
            with take:
                i = next(todo, None)
            if i is None:
                return
            t = time.perf_counter()
            results[i] = engine.generate(prompts[i], max_new_tokens=max_new_tokens, **overrides)
            latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, results


def p95(xs: list[float]) -> float:
    return sorted(xs)[round(0.95 * (len(xs) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16, help="entity prompts cycled through")
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="a NestConfig override")
    parser.add_argument("--serial-up-to", type=int, help="skip one-at-a-time above this concurrency")
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything; report medians")
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument(
        "--time-forwards", action="store_true", help="time each forward (synchronised: slows a GPU run)"
    )
    parser.add_argument("--no-prefix-cache", action="store_true", help="batched rows run their whole prompts")
    parser.add_argument("--freeze-heap", action="store_true", help="freeze the startup heap, as servers do")
    args = parser.parse_args()
    for name in ("rounds", "max_new_tokens", "requests_per_client", "prompts"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if min(args.concurrency) < 1:
        parser.error(f"--concurrency must be at least 1, got {min(args.concurrency)}")
    if args.no_prefix_cache:
        from nest_integrations import step_model

        init = step_model.BatchedStepModel.__init__
        step_model.BatchedStepModel.__init__ = lambda self, *a, **k: init(self, *a, **{**k, "prefix_cache": False})
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}

    lm = load_lm("default", device=args.device, dtype=args.dtype)
    retriever = default_retriever(tokenizer=lm.tokenizer, progress=False)
    texts = [p.text for p in entity_prompts(args.prompts)]
    one_at_a_time = NestEngine(lm, retriever=retriever)
    for text in texts:  # warm the passage-key cache (shared below) and the kernels
        one_at_a_time.generate(text, max_new_tokens=4)
    timer = ForwardTimer(lm, timed=args.time_forwards)
    if args.freeze_heap:
        from nest_integrations.server.heap import freeze_startup_heap

        freeze_startup_heap()
    lines = [
        f"device {lm.device} ({torch.cuda.get_device_name() if lm.device.type == 'cuda' else 'CPU'}), "
        f"dtype {lm.dtype}, torch {torch.__version__}, {args.max_new_tokens} new tokens, {len(texts)} entity "
        f"prompts, {args.requests_per_client} requests per client, overrides {overrides}, prefix cache "
        f"{'off' if args.no_prefix_cache else 'on'}, heap {'frozen' if args.freeze_heap else 'not frozen'}",
        "",
        "| concurrent | system | aggregate tok/s | p50 latency s | p95 latency s | x one-at-a-time | x one request "
        "| p95 / single p95 | forwards | ms a forward | forward share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    table: dict[tuple[int, str], list[dict[str, float]]] = {}
    for round_ in range(1, args.rounds + 1):
        # A single request's figures: every prompt once, alone (the same prompts the loads cycle through).
        wall, lone_latencies, lone_results = closed_loop(one_at_a_time, texts, 1, args.max_new_tokens, overrides)
        timer.reset()
        lone = sum(r.stats.tokens_generated for r in lone_results) / wall
        lone_p95 = p95(lone_latencies)
        line = (
            f"| 1 | single requests{f' (round {round_})' if args.rounds > 1 else ''} | {lone:.1f} | "
            f"{statistics.median(lone_latencies):.2f} | {lone_p95:.2f} | - | 1.00 | 1.00 | - | - | - |"
        )
        lines.append(line)
        print(line, flush=True)
        serial: float | None = None
        for c in args.concurrency:
            prompts = [texts[i % len(texts)] for i in range(c * args.requests_per_client)]
            batched = NestEngine(lm, retriever=retriever, max_batch=max(c, 2))
            batched.encoder = one_at_a_time.encoder  # the same warm passage keys
            systems = [("batched", batched)]
            if args.serial_up_to is None or c <= args.serial_up_to:
                systems.insert(0, ("one at a time", one_at_a_time))
            rows = {}
            for name, engine in systems:
                timer.reset()
                wall, latencies, results = closed_loop(engine, prompts, c, args.max_new_tokens, overrides)
                forwards, forward_s = timer.reset()
                tokens = sum(r.stats.tokens_generated for r in results)
                per_forward = forward_s / max(forwards, 1)
                rows[name] = (tokens / wall, latencies, results, forwards, per_forward, forward_s / wall)
            if "one at a time" in rows:
                serial = rows["one at a time"][0]
            for name, (rate, latencies, _, forwards, per_forward, share) in rows.items():
                vs_serial = f"{rate / serial:.2f}" if serial else "-"
                vs_lone = f"{rate / lone:.2f}"
                timing = f"{per_forward * 1000:.1f} | {share:.0%}" if args.time_forwards else "- | -"
                line = (
                    f"| {c} | {name} | {rate:.1f} | {statistics.median(latencies):.2f} | {p95(latencies):.2f} | "
                    f"{vs_serial} | {vs_lone} | {p95(latencies) / lone_p95:.2f} | {forwards} | {timing} |"
                )
                lines.append(line)
                print(line, flush=True)
                table.setdefault((c, name), []).append(
                    {
                        "tok/s": rate,
                        "p95 s": p95(latencies),
                        "x one-at-a-time": rate / serial if serial else float("nan"),
                        "x one request": rate / lone,
                        "p95 / single p95": p95(latencies) / lone_p95,
                        "single tok/s": lone,
                        "single p95 s": lone_p95,
                    }
                )
            if "one at a time" in rows:
                pairs = list(zip(rows["one at a time"][2], rows["batched"][2], strict=True))
                differ = [i for i, (a, b) in enumerate(pairs) if a.text != b.text]
                if differ:
                    first = differ[0]
                    a, b = pairs[first]
                    same = next((k for k in range(min(len(a.text), len(b.text))) if a.text[k] != b.text[k]), None)
                    line = f"|   | (outputs differ for {len(differ)} of {len(pairs)} requests; first at char {same}) |"
                    lines.append(line)
                    print(line, flush=True)
    if args.rounds > 1:
        figures = ["tok/s", "p95 s", "x one-at-a-time", "x one request", "p95 / single p95"]
        figures += ["single tok/s", "single p95 s"]
        summary = [
            "",
            f"Medians over {args.rounds} rounds (each ratio taken within its round):",
            "",
            "| concurrent | system | " + " | ".join(figures) + " |",
            "|---|---|" + "---|" * len(figures),
        ]
        for (c, name), measured in table.items():
            medians = [statistics.median(m[f] for m in measured) for f in figures]
            summary.append(f"| {c} | {name} | " + " | ".join("-" if v != v else f"{v:.2f}" for v in medians) + " |")
        lines.extend(summary)
        print("\n".join(summary), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
