"""One place that turns user options (CLI flags, benchmark settings) into a ``NestEngine``.

:func:`check_options` rejects bad options before anything heavy is loaded (torch is imported
only to ask whether an accelerator exists); :func:`build_engine` then loads the model, picks
the first stage, and attaches the on-disk key store so passages are encoded once across runs.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, IndexNotFoundError, OutputPathError

if TYPE_CHECKING:
    from .config import NestConfig
    from .engine import NestEngine
    from .lm import LoadedLM
    from .passages.retriever import PassageRetriever


@dataclass(frozen=True)
class EngineOptions:
    """What a user chooses when building an engine from the outside.

    ``index``: a directory from ``nest index`` (None: the built-in corpus's cached index);
    ``retrieval=False``: no first stage. ``config``: a NestConfig JSON file (None: the
    model's own default), with ``overrides`` (NestConfig fields) on top. ``key_store``: keep
    passage keys on disk next to the index (True), in memory only (False), or in this directory.
    ``progress``: progress bars on stderr while building the index or encoding passages.
    ``max_batch``: requests decoded together (continuous batching; 1: one at a time).
    """

    model: str = "default"
    device: str | None = None
    dtype: str | None = None
    index: Path | None = None
    retrieval: bool = True
    config: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    key_store: bool | Path = True
    progress: bool = False
    max_batch: int = 1


def check_index(directory: Path) -> None:
    """Raise :class:`IndexNotFoundError` unless ``directory`` holds a passage index."""
    if directory.exists() and not directory.is_dir():
        raise IndexNotFoundError(f"{directory} is a file, not an index directory; build one with `nest index`.")
    if not directory.is_dir():
        raise IndexNotFoundError(f"Index directory {directory} does not exist; build one with `nest index`.")
    if not (directory / "meta.json").is_file():
        raise IndexNotFoundError(
            f"{directory} is not a NEST passage index (no meta.json); build one with `nest index`."
        )


def check_output_dir(directory: Path, what: str = "the output directory") -> None:
    """Raise :class:`OutputPathError` unless ``directory`` is, or can be created as, a writable directory."""
    if directory.exists() and not directory.is_dir():
        raise OutputPathError(f"{what} {directory} is an existing file; give a directory (new or existing).")
    _check_parents(directory, what)


def check_output_file(path: Path, what: str = "the output file") -> None:
    """Raise :class:`OutputPathError` unless a file can be written at ``path`` (new or replaced)."""
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a directory; give a file name, e.g. {path / 'config.json'}.")
    _check_parents(path, what)


def _check_parents(path: Path, what: str) -> None:
    """The nearest existing ancestor of ``path`` (or ``path`` itself) must be a writable directory."""
    existing = path if path.is_dir() else next((p for p in path.absolute().parents if p.exists()), None)
    if existing is None:  # pragma: no cover - the root always exists
        return
    if not existing.is_dir():
        raise OutputPathError(f"{what} {path} cannot be created: {existing} is a file, not a directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {path} cannot be written: no write permission in {existing}.")


def check_options(options: EngineOptions) -> NestConfig | None:
    """Validate every option without loading the model; returns the config from ``options.config``.

    Raises:
        InvalidPromptError / ConfigError: a bad config file, override, device or dtype.
        IndexNotFoundError: ``index`` is not an index directory.
        ModelNotFoundError: the model is not available locally.
    """
    from .config import NestConfig
    from .lm import DTYPES, check_device, check_model

    if options.dtype is not None and options.dtype not in DTYPES:
        raise ConfigError(f"Unknown dtype {options.dtype!r}; choose one of {', '.join(DTYPES)}.")
    if options.retrieval and options.index is not None:
        check_index(options.index)
    config = None
    if options.config is not None:
        if options.config.is_dir():
            raise ConfigError(f"Config file {options.config} is a directory; give a NestConfig JSON file.")
        if not options.config.is_file():
            raise ConfigError(f"Config file {options.config} does not exist.")
        try:
            config = NestConfig.from_file(options.config)
        except ValueError as e:  # JSON or validation error
            raise ConfigError(f"Config file {options.config} is invalid: {one_line(e)}") from e
    if options.overrides:
        base = config or NestConfig()
        try:
            NestConfig.model_validate({**base.model_dump(), **options.overrides})
        except ValueError as e:
            raise ConfigError(one_line(e)) from e
    if options.max_batch < 1:
        raise ConfigError(f"max_batch must be >= 1, got {options.max_batch}.")
    check_device(options.device)
    check_model(options.model)
    return config


def one_line(error: BaseException) -> str:
    """An error's message on one line (pydantic's validation errors: ``field: message`` each)."""
    details = getattr(error, "errors", None)
    if callable(details) and type(error).__name__ == "ValidationError":
        return "; ".join(f"{'.'.join(str(x) for x in d['loc']) or 'value'}: {d['msg']}" for d in details())
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def key_store_dir(index_dir: Path, model_name: str, dtype: str) -> Path:
    """Where the keys of ``model_name`` (in ``dtype``) over the passages of ``index_dir`` live."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", model_name)
    return index_dir / f"keys-{slug}-{dtype}"


def build_retriever(options: EngineOptions, lm: LoadedLM) -> tuple[PassageRetriever | None, Path | None]:
    """The first stage the options ask for, and the index directory it was read from."""
    from .index import default_index_dir, default_retriever, load_index

    if not options.retrieval:
        return None, None
    if options.index is not None:
        return load_index(options.index), options.index
    return default_retriever(tokenizer=lm.tokenizer, progress=options.progress), default_index_dir()


def build_engine(options: EngineOptions, *, lm: LoadedLM | None = None, config: NestConfig | None = None) -> NestEngine:
    """Check ``options``, load the model (or reuse ``lm``), the first stage and the key store.

    ``config`` replaces ``options.config`` (the options' overrides still apply on top).
    Errors: those of :func:`check_options`, then the model's and the index's own.
    """
    from . import lm as lm_module
    from .config import NestConfig, default_config
    from .engine import NestEngine
    from .token_index import KeyStore

    from_file = check_options(options)
    loaded = lm or lm_module.load_lm(options.model, device=options.device, dtype=options.dtype)
    base = config or from_file or default_config(loaded.name)
    if options.overrides:
        base = NestConfig.model_validate({**base.model_dump(), **options.overrides})
    retriever, index_dir = build_retriever(options, loaded)
    engine = NestEngine(loaded, retriever=retriever, config=base, max_batch=options.max_batch)
    engine.encoder.progress = options.progress
    where: Path | None = None
    if isinstance(options.key_store, Path):
        where = options.key_store
    elif options.key_store and index_dir is not None:
        where = key_store_dir(index_dir, loaded.name, str(loaded.dtype).removeprefix("torch."))
    if where is not None:
        with contextlib.suppress(OSError):  # an index on a read-only disk: keys stay in memory
            engine.encoder.key_store = KeyStore.open(where, model=loaded.name, dim=loaded.hidden_size, writable=True)
    return engine
