"""Load on `nest serve`: N concurrent chat requests against a real server process on loopback.

Usage: python benchmarks/server_load.py [--requests 50] [--max-tokens 32] [--max-batch 8] [--max-queue 64]
    [--queue-timeout 300]
Reports completed / 429 / 503 / other, p50 and p95 latency of completed requests, and the
server's peak RSS. Bounded: every request has a 600 s timeout, and the server is stopped.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--queue-timeout", type=float, default=300.0)
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "nest_integrations.cli",
        "serve",
        "--port",
        str(port),
        "--max-queue",
        str(args.max_queue),
        "--max-batch",
        str(args.max_batch),
        "--queue-timeout",
        str(args.queue_timeout),
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None:
                    raise SystemExit("server failed to start") from None
                time.sleep(0.5)
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        proc = psutil.Process(server.pid)
        peak, stop = proc.memory_info().rss, threading.Event()

        def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, proc.memory_info().rss)
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Tell me about Du Fu."}],
            "max_tokens": args.max_tokens,
        }

        def call(_: int) -> tuple[int, float]:
            t = time.perf_counter()
            r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
            return r.status_code, time.perf_counter() - t

        with ThreadPoolExecutor(max_workers=args.requests) as pool:
            results = list(pool.map(call, range(args.requests)))
        stop.set()
        watcher.join()
        codes = [c for c, _ in results]
        done = sorted(t for c, t in results if c == 200)
        healthy = httpx.get(f"{url}/health").json()["status"]
        print(
            f"{args.requests} requests at once (max_tokens {args.max_tokens}, batch {args.max_batch}, "
            f"queue {args.max_queue}): "
            f"{codes.count(200)} completed, {codes.count(429)} x 429, {codes.count(503)} x 503, "
            f"{len(codes) - codes.count(200) - codes.count(429) - codes.count(503)} other; "
            f"p50 {statistics.median(done):.2f}s p95 {done[int(0.95 * (len(done) - 1))]:.2f}s; "
            f"server peak RSS {peak / 2**20:.0f} MiB; health after: {healthy}"
        )
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
