"""The ``nest`` command line: ``nest index`` builds a passage index, ``nest ask`` answers with citations."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a command runs, so `nest --help` starts in a fraction of a second
    from .builder import EngineOptions
    from .citations import NestResult
    from .config import NestConfig


def _options(args: argparse.Namespace, **extra: Any) -> EngineOptions:
    """The engine options every model-loading subcommand shares."""
    from .builder import EngineOptions

    return EngineOptions(
        model=args.model,
        device=getattr(args, "device", None),
        dtype=getattr(args, "dtype", None),
        index=getattr(args, "index", None),
        config=getattr(args, "config", None),
        **extra,
    )


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def _quiet_library_warnings() -> None:
    """Warnings a user of `nest` cannot act on (they are the library's to fix), hidden narrowly."""
    # transformers 5 logs (once) that a model's `past_key_values=` argument is deprecated in favour
    # of `cache` (our step model passes `cache=`; older model code and `generate` may still log it).
    logging.getLogger("transformers.utils.generic").addFilter(_DropMessage("`past_key_values`/`cache_params`"))
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*past_key_values.*")
    # transformers: sampling-only fields of the model's generation config unused by greedy decoding.
    warnings.filterwarnings("ignore", category=UserWarning, message=r".*generation flags are not valid.*")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights": the model loads from the local cache in a second


def _ask(args: argparse.Namespace) -> int:
    from .builder import build_engine, check_options
    from .errors import InvalidPromptError
    from .lm import normalize_messages

    _check_number("--max-new-tokens", args.max_new_tokens, *_config_bounds("max_new_tokens"))
    _check_number("--passages", args.passages, *_config_bounds("num_passages"))
    if not args.question.strip():
        raise InvalidPromptError("The question is empty; give a non-empty question.")
    normalize_messages(args.question)  # invisible-only or invalid Unicode: exit 2 before any loading
    options = _options(
        args,
        retrieval=not args.no_retrieval,
        overrides={
            "max_new_tokens": args.max_new_tokens,
            "num_passages": args.passages,
            **({"grounded_only": True} if args.grounded_only else {}),
        },
        key_store=not args.no_key_store,
        progress=not args.quiet,
    )
    check_options(options)  # everything else a user can get wrong, before the model is loaded
    if options.retrieval and options.index is None and not args.json:
        from .corpus import DEFAULT_CORPUS_NOTICE

        print(DEFAULT_CORPUS_NOTICE, file=sys.stderr)
    _quiet_library_warnings()
    engine = build_engine(options)
    result = engine.generate(args.question)
    if args.json:
        print(result.model_dump_json(indent=2, exclude={"passages"}))
    else:
        print(format_answer(result, max_new_tokens=args.max_new_tokens))
    return 0


def _check_number(
    flag: str, value: float, least: float | None = None, most: float | None = None, *, above: float | None = None
) -> None:
    """Raise a ``ConfigError`` naming ``flag`` unless ``least <= value <= most`` (and ``value > above``),
    in plain words, before anything loads (NaN is outside every range)."""
    from .errors import ConfigError

    if above is not None and not value > above:
        raise ConfigError(f"{flag} must be more than {above:g}, got {value}.")
    if least is not None and not value >= least:
        raise ConfigError(f"{flag} must be at least {least:g}, got {value}.")
    if most is not None and not value <= most:
        raise ConfigError(f"{flag} must be at most {most:g}, got {value}.")


def _config_bounds(field: str) -> tuple[float | None, float | None]:
    """The ``ge`` and ``le`` bounds of a ``NestConfig`` field (for the flag that sets it)."""
    from .config import NestConfig

    metadata = NestConfig.model_fields[field].metadata
    least = next((m.ge for m in metadata if hasattr(m, "ge")), None)
    most = next((m.le for m in metadata if hasattr(m, "le")), None)
    return least, most


def format_answer(result: NestResult, max_new_tokens: int | None = None) -> str:
    """What `nest ask` prints (see :func:`nest_integrations.formatting.format_answer`), with a
    ``[cut at max_new_tokens=N]`` line under the answer when the token limit ended it."""
    from .formatting import format_answer as format_result

    text = format_result(result)
    if result.finish_reason == "length":
        limit = max_new_tokens if max_new_tokens is not None else result.stats.tokens_generated
        reached = "max_new_tokens" if result.stats.tokens_generated >= limit else "the model's context length"
        note = f"[cut at {reached}={limit}]" if reached == "max_new_tokens" else f"[cut at {reached}]"
        answer, sep, rest = text.partition("\n\n")
        text = f"{answer}\n{note}{sep}{rest}"
    return text


def _index(args: argparse.Namespace) -> int:
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"No such file or directory: {', '.join(missing)}")
    from .builder import check_output_dir

    check_output_dir(args.out, "--out")  # before any model loads: an existing file cannot hold an index
    from .corpus import read_documents
    from .index import build_index
    from .lm import check_device, check_model

    check_device(args.device)
    if args.model != "none":
        check_model(args.model)
    keys = args.keys if args.keys is not None else args.model != "none"
    if keys and args.model == "none":
        raise ValueError("--keys needs a model to encode passages with; drop --model none.")
    docs = list(read_documents(args.paths))  # a bad file is reported before any model loads
    if not docs:
        print("nest index: no .txt, .md or .jsonl documents found in the given paths", file=sys.stderr)
        return 2
    _quiet_library_warnings()  # as `nest ask`: no "Loading weights" bar for the embedder or the model
    lm = tokenizer = None
    if keys:
        from .lm import load_lm

        lm = load_lm(args.model, device=args.device, dtype=args.dtype)
        tokenizer = lm.tokenizer
    elif args.model != "none":
        from .lm import load_tokenizer

        tokenizer = load_tokenizer(args.model)
    progress = not args.quiet
    retriever = build_index(
        docs,
        args.out,
        tokenizer=tokenizer,
        max_tokens=args.max_tokens,
        progress=progress,
        fusion=args.fusion,
        rerank=None if args.rerank == "none" else args.rerank,
    )
    print(f"Indexed {len(docs)} documents into {len(retriever)} passages in {args.out}")
    if lm is not None:
        from .builder import key_store_dir
        from .token_index import KeyStore, PassageEncoder

        where = key_store_dir(args.out, lm.name, str(lm.dtype).removeprefix("torch."))
        store = KeyStore.build(PassageEncoder(lm), retriever.passages, where, progress=progress)
        print(f"Stored the token keys of {len(store)} passages in {where}")
    return 0


def _require_extra(command: str, extra: str, modules: Sequence[str]) -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` when one of ``modules`` cannot be imported."""
    import importlib

    from .errors import MissingExtraError

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name.partition(".")[0])
    if missing:
        raise MissingExtraError(
            f"`nest {command}` needs {', '.join(dict.fromkeys(missing))}, not installed: "
            f'pip install "nest-integrations[{extra}]"'
        )


def _serve(args: argparse.Namespace) -> int:
    import os

    _check_number("--port", args.port, 0, 65535)  # the flags first: before any import of weight
    _check_number("--max-tokens-limit", args.max_tokens_limit, 1)
    _check_number("--max-batch", args.max_batch, 1)
    _check_number("--max-queue", args.max_queue, 0)
    _check_number("--queue-timeout", args.queue_timeout, above=0)
    _check_number("--graceful-timeout", args.graceful_timeout, 0)
    _require_extra("serve", "serve", ["fastapi", "uvicorn"])  # before any model loads
    import uvicorn

    from .builder import build_engine, check_options
    from .server.heap import freeze_startup_heap
    from .server.openai_api import ServerLimits, create_app

    options = _options(args, key_store=False, max_batch=args.max_batch)
    check_options(options)
    engine = build_engine(options)
    limits = ServerLimits(
        max_tokens=args.max_tokens_limit, max_waiting=args.max_queue, queue_timeout_s=args.queue_timeout
    )
    app = create_app(engine, api_key=args.api_key or os.environ.get("NEST_API_KEY"), limits=limits)
    freeze_startup_heap()
    # uvicorn finishes in-flight requests on SIGTERM/SIGINT, up to the graceful timeout.
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=args.graceful_timeout)
    return 0


def _mcp(args: argparse.Namespace) -> int:
    _require_extra("mcp", "serve", ["mcp.server.mcpserver"])  # before any model loads
    from .builder import build_engine, check_options
    from .server.heap import freeze_startup_heap
    from .server.mcp_server import create_mcp_server

    options = _options(args, key_store=False)
    check_options(options)
    server = create_mcp_server(build_engine(options))
    freeze_startup_heap()
    server.run("stdio")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .builder import check_options, check_output_dir

    check_output_dir(args.out, "--out")
    config = check_options(_options(args, key_store=False))
    if args.squad:
        return _bench_squad(args, config)
    from .bench.run import run_benchmark

    rows = run_benchmark(
        args.out,
        completion=None if args.full else args.completion,
        entity=None if args.full else args.entity,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        model=args.model,
        sweep=args.sweep,
        first_stage=args.first_stage,
        config=config,
        isolate=args.isolate,
    )
    print((args.out / "results.md").read_text(encoding="utf-8"))
    print(f"Wrote {args.out}/results.md, results.json and results.png ({len(rows)} rows)")
    return 0


def _bench_squad(args: argparse.Namespace, config: NestConfig | None) -> int:
    from .bench.squad import run_squad

    rows = run_squad(
        args.out,
        questions=args.squad,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        model=args.model,
        config=config,
        squad_dir=args.squad_dir,
    )
    print((args.out / "squad.md").read_text(encoding="utf-8"))
    print(f"Wrote {args.out}/squad.md and squad.json ({len(rows)} rows)")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from .builder import check_output_file

    check_output_file(args.out, "--out")  # before a calibration of minutes, not after it
    from .bench.calibrate import calibrate, held_in_prompts, write_calibration
    from .builder import build_engine, check_options
    from .config import NestConfig

    options = _options(args, key_store=False, progress=True)
    start = check_options(options) or NestConfig()  # calibration starts from the paper's defaults
    engine = build_engine(options, config=start)
    lm = engine.lm
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
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer a question with citations")
    ask.add_argument("question")
    ask.add_argument("--index", type=Path, help="index directory from `nest index` (default: the built-in corpus)")
    ask.add_argument("--model", default="default", help="'default' (embedded SmolLM2), an HF id or a local path")
    ask.add_argument("--max-new-tokens", type=int, default=128)
    ask.add_argument("--passages", type=int, default=20, help="passages from the first stage (b)")
    ask.add_argument("--config", type=Path, help="a NestConfig JSON file (default: the model's own)")
    _device_args(ask)
    ask.add_argument("--no-retrieval", action="store_true", help="plain LM decoding, no citations")
    ask.add_argument(
        "--grounded-only",
        action="store_true",
        help="when no source covers the question, say so instead of answering from the plain LM",
    )
    ask.add_argument("--json", action="store_true", help="print the NestResult as JSON")
    ask.add_argument(
        "--no-key-store",
        action="store_true",
        help="keep passage keys in memory only (default: on disk next to the index, reused by later runs)",
    )
    ask.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    ask.set_defaults(func=_ask)

    index = sub.add_parser("index", help="build a passage index from .txt/.md/.jsonl files")
    index.add_argument("paths", nargs="+", type=Path)
    index.add_argument("--out", type=Path, required=True, help="directory to write the index to")
    index.add_argument("--max-tokens", type=int, default=100, help="passage length in LM tokens")
    index.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    index.add_argument(
        "--fusion",
        choices=["sum", "convex"],
        default="sum",
        help="how BM25 and dense scores are fused: 'sum' (bm25 + 0.3 * dense, the official NEST code's) or "
        "'convex' (min-max scaled, 0.5 each; ranks better with MiniLM; see docs/first-stages.md)",
    )
    index.add_argument(
        "--rerank",
        choices=["convex", "sum", "none"],
        default="convex",
        help="order and score the passages the fusion chose by this fusion ('none': by the fusion itself); "
        "the scores are what passage relevance reads",
    )
    index.add_argument(
        "--model",
        default="default",
        help="count passage tokens with this model's tokenizer and encode their keys ('none': an estimate, no keys)",
    )
    index.add_argument(
        "--keys",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store the passages' token keys for `nest ask` (default: yes unless --model none)",
    )
    _device_args(index)
    index.set_defaults(func=_index)
    serve = sub.add_parser("serve", help="serve an OpenAI-compatible API (needs the 'serve' extra)")
    serve.add_argument("--index", type=Path, help="index directory from `nest index` (default: the built-in corpus)")
    serve.add_argument("--model", default="default")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="require this bearer token (default: $NEST_API_KEY, else none)")
    serve.add_argument("--max-tokens-limit", type=int, default=512, help="largest max_tokens a request may ask")
    serve.add_argument(
        "--max-batch", type=int, default=8, help="requests decoded together (continuous batching); 1: one at a time"
    )
    serve.add_argument("--max-queue", type=int, default=8, help="requests that may wait beyond the batch; more get 429")
    serve.add_argument(
        "--queue-timeout", type=float, default=60.0, help="seconds a request may wait for the batch; then 503"
    )
    serve.add_argument("--graceful-timeout", type=int, default=30, help="seconds to finish in-flight requests")
    serve.add_argument("--config", type=Path, help="a NestConfig JSON file (default: the model's own)")
    _device_args(serve)
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
    _device_args(cal)
    cal.set_defaults(func=_calibrate)

    mcp = sub.add_parser("mcp", help="run an MCP server on stdio (needs the 'serve' extra)")
    mcp.add_argument("--index", type=Path, help="index directory from `nest index` (default: the built-in corpus)")
    mcp.add_argument("--model", default="default")
    mcp.add_argument("--config", type=Path, help="a NestConfig JSON file (default: the model's own)")
    _device_args(mcp)
    mcp.set_defaults(func=_mcp)
    return parser


def _device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)")
    parser.add_argument(
        "--dtype",
        help="auto, float32, bfloat16 or float16 (default: bf16 on GPU, fp32 on CPU; "
        "bfloat16 is ~1.8x faster on a CPU with native bf16)",
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nest-integrations")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nest`` command; returns the exit code (2: a usage or input error, one line on stderr)."""
    args = build_parser().parse_args(argv)
    from .builder import one_line
    from .errors import NestError

    try:
        return int(args.func(args))
    except (NestError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"nest {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nest {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
