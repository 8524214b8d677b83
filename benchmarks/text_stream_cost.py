"""Text handling cost of one long generation: incremental detokenisation, stop strings and
claim-level citations (``streaming.AnswerAssembler``), without the model.

    python benchmarks/text_stream_cost.py --tokens 2048 [--span-steps]

Feeds the tokens of a default-corpus article as if decoded (copied in runs of 24 tokens with
8 generated tokens between), and prints the total time spent in text handling, streamed (a
chunk each step, as ``stream`` yields) and as ``generate`` does it (no chunk before the result). By default
every token is its own step (plain decoding's worst case: one chunk a token); with
``--span-steps`` each copied run arrives as one step, as an accepted span does in NEST.
Issue 14's target: < 5 ms for 2,048 tokens (the engine before it: 416 ms).
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from transformers import AutoTokenizer

from nest_integrations import default_corpus
from nest_integrations.citations import Provenance
from nest_integrations.lm import find_embedded_gguf
from nest_integrations.passages.types import Passage, ScoredPassage
from nest_integrations.streaming import AnswerAssembler
from nest_integrations.token_index import EncodedPassage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stop", action="append", default=["\n\n\n"], help="stop strings scanned for")
    parser.add_argument("--span-steps", action="store_true", help="a copied run of 24 tokens is one step")
    args = parser.parse_args()

    gguf = find_embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    text = " ".join(d.text for d in default_corpus())
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][: args.tokens]
    spans = np.asarray(enc["offset_mapping"][: args.tokens], dtype=np.int64)
    source = text[: int(spans[-1, 1])]
    passage = ScoredPassage(passage=Passage(id="p", text=source))
    encoded = EncodedPassage(torch.tensor(ids), spans, 0, 0, torch.zeros((len(ids) - 1, 1)))
    # Copied in runs of 24 tokens; the 8 generated tokens between them differ from the source.
    provenance = [None if i % 32 >= 24 else Provenance(0, i, 0.9) for i in range(len(ids))]
    ids = [t if i % 32 < 24 else tokenizer.convert_tokens_to_ids("Ġthe") for i, t in enumerate(ids)]

    bounds = [i for i in range(len(ids) + 1) if not args.span_steps or i % 32 == 0 or i % 32 >= 24]
    steps = [(ids[a:b], provenance[a:b]) for a, b in itertools.pairwise(bounds)]

    for stream in (True, False):
        timings, cpu = [], []
        for _ in range(args.repeats):
            answer = AnswerAssembler(tokenizer, set(), args.stop, [passage], [encoded], stream=stream)
            t0, c0 = time.perf_counter(), time.process_time()
            for step_ids, step_provenance in steps:
                answer.put(step_ids, step_provenance)
            final, _, _ = answer.finish()
            timings.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        assert final == tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        ms, cpu_ms = sorted(1000 * t for t in timings), sorted(1000 * t for t in cpu)
        how = "stream (a chunk a step)" if stream else "generate (no chunk before the result)"
        print(
            f"{how}: {len(ids)} tokens in {len(steps)} steps, {len(answer.claims.citations)} citations: text "
            f"handling {ms[len(ms) // 2]:.1f} ms wall median (min {ms[0]:.1f}, max {ms[-1]:.1f}), "
            f"{cpu_ms[len(cpu_ms) // 2]:.1f} ms CPU median, over {args.repeats} runs"
        )


if __name__ == "__main__":
    main()
