"""One benchmark system in its own process: ``python -m nest_integrations.bench.worker SPEC INDEX``.

Prints one JSON line (measurements and the process's peak RSS) for ``run_benchmark(isolate=True)``.
"""

from __future__ import annotations

import json
import sys

from .run import run_one_system


def main() -> None:
    spec, index = json.loads(sys.argv[1]), int(sys.argv[2])
    print(json.dumps(run_one_system(spec, index)))


if __name__ == "__main__":
    main()
