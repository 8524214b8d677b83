"""The dense first stage on CPU and GPU (issue 15, item 3): FAISS search and sentence embedding.

Usage: python benchmarks/gpu_first_stage.py [--vectors 100000] [--queries 1024] [--texts 1024]

(i) Exact inner-product search (``faiss.IndexFlatIP``, what ``HybridRetriever`` builds) over
``--vectors`` random unit vectors of the encoder's size (384), top-100 for ``--queries``
queries, one query per call (as ``retrieve`` does) and in batches of 64; on the CPU, and on
every GPU when the installed FAISS is a GPU build that sees one (``faiss-gpu``, docs/first-stages.md),
with the share of GPU top-100 ids equal to the CPU's.
(ii) The embedded encoder (all-MiniLM-L6-v2) on ``--texts`` default-corpus passages, batches
of 64, and one short query at a time; on the CPU and on CUDA when torch sees it.
Prints a Markdown table (and writes it with ``--out FILE``). Figures are medians of repeats.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nest_integrations import default_corpus
from nest_integrations.index import chunk_documents
from nest_integrations.passages.devices import faiss_gpu_count
from nest_integrations.passages.embedder import SentenceEmbedder

K = 100
BATCH = 64


def median_seconds(fn: Callable[[], object], repeats: int, sync: bool = False) -> float:
    """Median wall time of ``fn`` in seconds after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def search_rows(vectors: int, queries: int, repeats: int) -> list[list[str]]:
    import faiss

    dim = 384
    cpu = faiss.IndexFlatIP(dim)
    cpu.add(unit_vectors(vectors, dim, 0))
    q = unit_vectors(queries, dim, 1)
    indexes = [("cpu", cpu)]
    gpus = faiss_gpu_count(faiss)
    if gpus:
        indexes.append((f"gpu x{gpus}", faiss.index_cpu_to_all_gpus(cpu)))
    _, cpu_ids = cpu.search(q, K)
    rows = []
    for device, index in indexes:

        def one_by_one(index=index) -> None:
            for i in range(min(queries, 256)):
                index.search(q[i : i + 1], K)

        def batched(index=index) -> None:
            for b in range(0, queries, BATCH):
                index.search(q[b : b + BATCH], K)

        single = median_seconds(one_by_one, repeats) / min(queries, 256)
        batch = median_seconds(batched, repeats) / queries
        _, ids = index.search(q, K)
        same = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, cpu_ids, strict=True)]))
        agreement = "-" if index is cpu else f"{same:.4f}"
        setting = f"{vectors:,} x {dim} flat IP, top-{K}"
        rows.append(["dense search", device, setting, "1 query/call", f"{single * 1e3:.3f}", f"{1 / single:,.0f}", "-"])
        rows.append(
            ["dense search", device, setting, f"{BATCH}/call", f"{batch * 1e3:.3f}", f"{1 / batch:,.0f}", agreement]
        )
    return rows


def embedding_rows(texts: int, repeats: int) -> list[list[str]]:
    passages = [p.text for p in chunk_documents(default_corpus())][:texts]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        embedder = SentenceEmbedder(device=device)
        sync = device == "cuda"
        batch = median_seconds(lambda e=embedder: e.encode(passages, batch_size=BATCH), repeats, sync) / len(passages)
        query = median_seconds(lambda e=embedder: e.encode(["Tell me about Robert Boulter."]), 5 * repeats, sync)
        setting = f"all-MiniLM-L6-v2, {len(passages)} passages"
        rows.append(["embedding", device, setting, f"{BATCH}/batch", f"{batch * 1e3:.3f}", f"{1 / batch:,.0f}", "-"])
        rows.append(
            [
                "embedding",
                device,
                "all-MiniLM-L6-v2, one query",
                "1/call",
                f"{query * 1e3:.3f}",
                f"{1 / query:,.0f}",
                "-",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000, help="dense index size (default 100,000)")
    parser.add_argument("--queries", type=int, default=1024, help="search queries (default 1,024)")
    parser.add_argument("--texts", type=int, default=1024, help="passages to embed (default 1,024)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (default 3)")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    header = ["stage", "device", "setting", "calls", "ms per item", "items/s", "top-100 = CPU"]
    rows = search_rows(args.vectors, args.queries, args.repeats) + embedding_rows(args.texts, args.repeats)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, GPU: {gpu}; "
        f"torch {torch.__version__}, FAISS GPUs: {faiss_gpu_count()}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
