"""The ``nest`` command line: ``nest index`` builds a passage index, ``nest ask`` answers with citations."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .citations import NestResult, mark_citations

if TYPE_CHECKING:
    from .config import NestConfig


def _ask(args: argparse.Namespace) -> int:
    from .config import NestConfig
    from .corpus import DEFAULT_CORPUS_NOTICE
    from .engine import NestEngine
    from .index import default_retriever, load_index
    from .lm import load_lm

    lm = load_lm(args.model, device=args.device, dtype=args.dtype)
    base = _config(args, lm.name)
    config = NestConfig.model_validate(
        {**base.model_dump(), "max_new_tokens": args.max_new_tokens, "num_passages": args.passages}
    )
    if args.no_retrieval:
        retriever = None
    elif args.index:
        retriever = load_index(args.index)
    else:
        retriever = default_retriever(tokenizer=lm.tokenizer)
        if not args.json:
            print(DEFAULT_CORPUS_NOTICE, file=sys.stderr)
    engine = NestEngine(lm, retriever=retriever, config=config)
    result = engine.generate(args.question)
    if args.json:
        print(result.model_dump_json(indent=2, exclude={"passages"}))
    else:
        print(format_answer(result))
    return 0


def _config(args: argparse.Namespace, model_name: str) -> NestConfig:
    """``--config FILE`` if given, else the model's default (calibrated for the embedded model)."""
    from .config import NestConfig, default_config

    return NestConfig.from_file(args.config) if args.config else default_config(model_name)


def format_answer(result: NestResult) -> str:
    """The answer with [n] after each cited span, then the numbered sources with their quotes."""
    marks = [mark_citations(result.text, [c.output_end for c in result.citations]).strip()]
    if result.citations:
        marks.append("\nSources:")
        for n, c in enumerate(result.citations, 1):
            where = (
                f"{c.document_id or c.passage_id} chars {c.document_start}-{c.document_end}"
                if c.document_start is not None
                else c.passage_id
            )
            marks.append(f'[{n}] {c.title or c.passage_id} ({where}): "{c.quote}"')
    s = result.stats
    if s.passages and not s.passages_searched:
        marks.append("\n(No retrieved passage is about the query: answered by the model alone, nothing cited.)")
    marks.append(
        f"\n{s.tokens_generated} tokens, {s.tokens_copied} copied ({s.attribution_ratio:.0%}), "
        f"{s.spans_accepted}/{s.spans_proposed} spans accepted, {s.tokens_per_second:.1f} tokens/s"
    )
    return "\n".join(marks)


def _index(args: argparse.Namespace) -> int:
    from .corpus import read_documents
    from .index import build_index
    from .lm import load_tokenizer

    docs = list(read_documents(args.paths))
    if not docs:
        print("nest index: no .txt, .md or .jsonl documents found in the given paths", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(args.model) if args.model != "none" else None
    retriever = build_index(docs, args.out, tokenizer=tokenizer, max_tokens=args.max_tokens, progress=True)
    print(f"Indexed {len(docs)} documents into {len(retriever)} passages in {args.out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    from .engine import NestEngine
    from .index import default_retriever, load_index
    from .lm import load_lm
    from .server.openai_api import ServerLimits, create_app

    try:
        import uvicorn
    except ImportError as e:
        raise RuntimeError('`nest serve` needs the "serve" extra: pip install "nest-integrations[serve]"') from e
    lm = load_lm(args.model, device=args.device, dtype=args.dtype)
    retriever = load_index(args.index) if args.index else default_retriever(tokenizer=lm.tokenizer)
    engine = NestEngine(lm, retriever=retriever, config=_config(args, lm.name))
    limits = ServerLimits(max_tokens=args.max_tokens_limit, max_waiting=args.max_queue)
    app = create_app(engine, api_key=args.api_key or os.environ.get("NEST_API_KEY"), limits=limits)
    # uvicorn finishes in-flight requests on SIGTERM/SIGINT, up to the graceful timeout.
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=args.graceful_timeout)
    return 0


def _mcp(args: argparse.Namespace) -> int:
    from .engine import NestEngine
    from .index import default_retriever, load_index
    from .lm import load_lm
    from .server.mcp_server import create_mcp_server

    lm = load_lm(args.model, device=args.device, dtype=args.dtype)
    retriever = load_index(args.index) if args.index else default_retriever(tokenizer=lm.tokenizer, progress=False)
    create_mcp_server(NestEngine(lm, retriever=retriever, config=_config(args, lm.name))).run("stdio")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench.run import run_benchmark
    from .config import NestConfig

    if args.squad:
        return _bench_squad(args)
    rows = run_benchmark(
        args.out,
        completion=None if args.full else args.completion,
        entity=None if args.full else args.entity,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        model=args.model,
        sweep=args.sweep,
        first_stage=args.first_stage,
        config=NestConfig.from_file(args.config) if args.config else None,
        isolate=args.isolate,
    )
    print((args.out / "results.md").read_text(encoding="utf-8"))
    print(f"Wrote {args.out}/results.md, results.json and results.png ({len(rows)} rows)")
    return 0


def _bench_squad(args: argparse.Namespace) -> int:
    from .bench.squad import run_squad
    from .config import NestConfig

    rows = run_squad(
        args.out,
        questions=args.squad,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        model=args.model,
        config=NestConfig.from_file(args.config) if args.config else None,
        squad_dir=args.squad_dir,
    )
    print((args.out / "squad.md").read_text(encoding="utf-8"))
    print(f"Wrote {args.out}/squad.md and squad.json ({len(rows)} rows)")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from .bench.calibrate import calibrate, held_in_prompts, write_calibration
    from .config import NestConfig
    from .engine import NestEngine
    from .index import default_retriever
    from .lm import load_lm

    lm = load_lm(args.model, device=args.device, dtype=args.dtype)
    start = NestConfig.from_file(args.config) if args.config else NestConfig()
    engine = NestEngine(lm, retriever=default_retriever(tokenizer=lm.tokenizer), config=start)
    prompts = held_in_prompts(args.entity, args.completion, args.seed)

    def show(t: Any) -> None:
        print(
            f"objective {t.objective:.3f}  ROUGE-L {t.rouge_l:.3f}  precision {t.citation_precision:.3f}  "
            f"attribution {t.attribution_ratio:.2f}  {t.tokens_per_s:.0f} tok/s  {t.params}",
            flush=True,
        )

    config, trials = calibrate(
        engine,
        prompts,
        passes=args.passes,
        max_new_tokens=args.max_new_tokens,
        floor=args.floor,
        speed_floor=args.speed_floor,
        margin=args.margin,
        on_trial=show,
    )
    about = {
        "model": lm.name,
        "command": " ".join(["nest", *sys.argv[1:]]) if sys.argv[0].endswith("nest") else "nest calibrate",
        "prompts": {"entity": args.entity, "completion": args.completion, "seed": args.seed},
        "held_in": "articles outside the benchmark's entity sample (nest bench --entity 20)",
        "first_stages": "built-in hybrid over the default corpus, and 'mixed' (6 own + 14 other passages)",
    }
    write_calibration(args.out, config, trials, about)
    print(f"Wrote {args.out}; load it with --config {args.out} or NestConfig.from_file()")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nest", description="Grounded, cited generation with NEST.")
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer a question with citations")
    ask.add_argument("question")
    ask.add_argument("--index", type=Path, help="index directory from `nest index` (default: the built-in corpus)")
    ask.add_argument("--model", default="default", help="'default' (embedded SmolLM2), an HF id or a local path")
    ask.add_argument("--max-new-tokens", type=int, default=128)
    ask.add_argument("--passages", type=int, default=20, help="passages from the first stage (b)")
    ask.add_argument("--config", type=Path, help="a NestConfig JSON file (default: the model's own)")
    ask.add_argument("--device")
    ask.add_argument("--dtype")
    ask.add_argument("--no-retrieval", action="store_true", help="plain LM decoding, no citations")
    ask.add_argument("--json", action="store_true", help="print the NestResult as JSON")
    ask.set_defaults(func=_ask)

    index = sub.add_parser("index", help="build a passage index from .txt/.md/.jsonl files")
    index.add_argument("paths", nargs="+", type=Path)
    index.add_argument("--out", type=Path, required=True, help="directory to write the index to")
    index.add_argument("--max-tokens", type=int, default=100, help="passage length in LM tokens")
    index.add_argument(
        "--model", default="default", help="count passage tokens with this model's tokenizer ('none': an estimate)"
    )
    index.set_defaults(func=_index)
    serve = sub.add_parser("serve", help="serve an OpenAI-compatible API (needs the 'serve' extra)")
    serve.add_argument("--index", type=Path, help="index directory from `nest index` (default: the built-in corpus)")
    serve.add_argument("--model", default="default")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="require this bearer token (default: $NEST_API_KEY, else none)")
    serve.add_argument("--max-tokens-limit", type=int, default=512, help="largest max_tokens a request may ask")
    serve.add_argument("--max-queue", type=int, default=8, help="requests that may wait; more get 429")
    serve.add_argument("--graceful-timeout", type=int, default=30, help="seconds to finish in-flight requests")
    serve.add_argument("--config", type=Path, help="a NestConfig JSON file (default: the model's own)")
    serve.add_argument("--device")
    serve.add_argument("--dtype")
    serve.set_defaults(func=_serve)

    bench = sub.add_parser("bench", help="compare NEST with plain and in-context RAG decoding (speed, quality)")
    bench.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results directory")
    bench.add_argument("--completion", type=int, default=50, help="completion prompts (seeded sample)")
    bench.add_argument("--entity", type=int, default=20, help="entity prompts (seeded sample)")
    bench.add_argument("--full", action="store_true", help="every prompt of the default corpus")
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--model", default="default")
    bench.add_argument("--sweep", action="store_true", help="also sweep gamma, beta and the number of passages")
    bench.add_argument(
        "--first-stage",
        choices=["built-in", "mixed", "held-out"],
        default="built-in",
        help=(
            "'mixed': a weak first stage mixing other articles' passages in (citation precision); "
            "'held-out': the built-in one without the prompt's own article (no copying the reference)"
        ),
    )
    bench.add_argument("--config", type=Path, help="a NestConfig JSON file (default: the model's own)")
    bench.add_argument("--isolate", action="store_true", help="one process per system: per-system peak RSS")
    bench.add_argument(
        "--squad",
        type=int,
        metavar="N",
        help="instead: the SQuAD QA task on N seeded questions (plain, in-context RAG, NEST; writes squad.md)",
    )
    bench.add_argument(
        "--squad-dir", type=Path, help="SQuAD data (default: $NEST_SQUAD_DIR, else ../shared/data/squad)"
    )
    bench.set_defaults(func=_bench)

    cal = sub.add_parser("calibrate", help="fit alpha, tau, beta, gamma, ... for a model on held-in prompts")
    cal.add_argument("--out", type=Path, required=True, help="JSON file to write (load it with --config)")
    cal.add_argument("--model", default="default")
    cal.add_argument("--config", type=Path, help="start from this config (default: NestConfig())")
    cal.add_argument("--entity", type=int, default=12, help="held-in entity prompts")
    cal.add_argument("--completion", type=int, default=8, help="held-in completion prompts")
    cal.add_argument("--max-new-tokens", type=int, default=128)
    cal.add_argument("--passes", type=int, default=2, help="coordinate-search passes over the parameters")
    cal.add_argument("--floor", type=float, default=0.5, help="lowest attribution ratio a config may have")
    cal.add_argument("--speed-floor", type=float, default=0.8, help="lowest tokens/s relative to the start config")
    cal.add_argument("--margin", type=float, default=0.01, help="objective gain needed to change a parameter")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--device")
    cal.add_argument("--dtype")
    cal.set_defaults(func=_calibrate)

    mcp = sub.add_parser("mcp", help="run an MCP server on stdio (needs the 'serve' extra)")
    mcp.add_argument("--index", type=Path, help="index directory from `nest index` (default: the built-in corpus)")
    mcp.add_argument("--model", default="default")
    mcp.add_argument("--config", type=Path, help="a NestConfig JSON file (default: the model's own)")
    mcp.add_argument("--device")
    mcp.add_argument("--dtype")
    mcp.set_defaults(func=_mcp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"nest {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
