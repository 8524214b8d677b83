"""Framework call options -> the engine's per-call overrides, in one place.

The LangChain and LlamaIndex adapters and the OpenAI/MCP servers all call
:func:`engine_overrides`, so the same options decode the same way everywhere. Sampling
fields are optional: ``None`` means "the config decides" (as in langchain-ollama).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from .config import NestConfig
from .errors import ConfigError
from .lm import last_user_text

__all__ = ["MAX_SEED", "engine_overrides", "last_user_text"]

MAX_SEED = 2**64 - 1
"""Largest seed torch's generator accepts."""


def engine_overrides(
    *,
    nest_config: NestConfig | Mapping[str, Any] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Keyword overrides for ``NestEngine.generate/stream`` from a framework's call options.

    Args:
        nest_config: a ``NestConfig`` (all its fields override the engine's config) or a dict
            of some ``NestConfig`` fields (only those override). None: the engine's config.
        temperature: None leaves ``do_sample``/``temperature`` to the config; 0 means greedy
            (``do_sample=False``); above 0 (at most 10) samples at that temperature.
        top_p: nucleus mass in (0, 1]; None: the config's.
        max_tokens: new tokens at most (1 to 32768) -> ``max_new_tokens``; None: the config's.
        stop: stop strings (non-empty), added after the config's own; None: only the config's.
        seed: sampling seed, 0 to 2**64 - 1; None: the config's.

    Returns:
        A dict of ``NestConfig`` field names to values; empty when nothing is set.

    Raises:
        ConfigError: a value is outside the range the engine accepts, or ``nest_config``
            names an unknown field.
    """
    out = _config_fields(nest_config)
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else list(stop)
        if any(not isinstance(s, str) or not s for s in stops):
            raise ConfigError(f"stop takes non-empty strings, got {stops!r}.")
        out["stop"] = list(dict.fromkeys([*out.get("stop", []), *stops]))
    if max_tokens is not None:
        if not _is_int(max_tokens) or not 1 <= max_tokens <= 32768:
            raise ConfigError(f"max_tokens must be an integer from 1 to 32768, got {max_tokens!r}.")
        out["max_new_tokens"] = max_tokens
    if temperature is not None:
        if not _is_number(temperature) or not 0 <= temperature <= 10:
            raise ConfigError(f"temperature must be a number from 0 to 10 (0: greedy), got {temperature!r}.")
        if temperature == 0:
            out["do_sample"] = False
        else:
            out.update(do_sample=True, temperature=float(temperature))
    if top_p is not None:
        if not _is_number(top_p) or not 0 < top_p <= 1:
            raise ConfigError(f"top_p must be a number above 0 and at most 1, got {top_p!r}.")
        out["top_p"] = float(top_p)
    if seed is not None:
        if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer from 0 to 2**64 - 1, got {seed!r}.")
        out["seed"] = seed
    return out


def _config_fields(nest_config: NestConfig | Mapping[str, Any] | None) -> dict[str, Any]:
    """The overrides a ``nest_config`` stands for, validated field by field."""
    if nest_config is None:
        return {}
    if isinstance(nest_config, NestConfig):
        return nest_config.model_dump()
    if not isinstance(nest_config, Mapping):
        kind = type(nest_config).__name__
        raise ConfigError(f"nest_config must be a NestConfig or a dict of its fields, got {kind}.")
    unknown = sorted(set(nest_config) - set(NestConfig.model_fields))
    if unknown:
        known = sorted(NestConfig.model_fields)
        raise ConfigError(f"nest_config has unknown fields {unknown}; the fields are {known}.")
    try:
        checked = NestConfig.model_validate(dict(nest_config))
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "nest_config"
        raise ConfigError(f"nest_config: {where}: {err['msg']}.") from e
    return {name: getattr(checked, name) for name in nest_config}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
