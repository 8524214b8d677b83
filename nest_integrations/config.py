"""NestConfig: every knob of the NEST algorithm in one validated object.

The paper's knobs default to the official demo's values (NEST, Li et al. 2024, and the demo
of its official code). The guards this project adds against wrong-source copying (passage
relevance, context guard) are on by default, the optional sentence lock off (spliced
sentences are never cited in any case); ``NestConfig.paper()`` switches them off (figures
in benchmarks/RESULTS.md). An engine given
no config uses the calibrated one shipped for its model, if any (:func:`default_config`).
This module holds configuration only; the math lives in ``mixture.py`` and ``speculative.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CALIBRATED_DIR = Path(__file__).parent / "data" / "calibrated"


class NestConfig(BaseModel):
    """Hyperparameters of Nearest Neighbor Speculative Decoding.

    Example:
        >>> NestConfig(alpha=0.3, tau=0.1).beta
        0.5
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    # First stage.
    num_passages: int = Field(20, ge=1, le=1000, description="b: passages taken from the first stage.")
    # Token index and k-NN distribution.
    num_neighbors: int = Field(1024, ge=1, description="r: token neighbors per k-NN search.")
    knn_temperature: float | None = Field(
        None,
        gt=0,
        description="Softmax temperature over -distance; None means sqrt(hidden_dim) as in the paper.",
    )
    # Relative Retrieval Confidence and mixture.
    alpha: float = Field(0.3, ge=0.0, le=1.0, description="RRC offset.")
    tau: float = Field(0.1, gt=0.0, description="RRC temperature.")
    lm_temperature: float = Field(
        0.7,
        gt=0.0,
        description=(
            "Temperature of p_LM inside the mixture (official code: 0.7). It applies with retrieval off too, "
            "so that retrieval off and lambda = 1 decode alike; greedy output is unaffected by it."
        ),
    )
    fixed_lambda: float | None = Field(
        None, ge=0.0, le=1.0, description="Use this lambda instead of RRC (1.0 turns retrieval off)."
    )
    # Dynamic span selection and relaxed speculative decoding.
    beta: float = Field(0.5, ge=0.0, le=1.0, description="Propose a span when lambda < beta.")
    span_window: int = Field(64, ge=1, le=512, description="n: longest span proposed at once.")
    gamma: float = Field(5e-4, gt=0.0, le=2.0, description="Relaxation of the acceptance test.")
    acceptance: Literal["relaxed", "strict"] = Field(
        "relaxed",
        description=(
            "'relaxed': accept while p_M(w) > gamma/2 * max p_M (official code). "
            "'strict': speculative decoding's exact rule, output distribution equals p_M."
        ),
    )
    # Guards against wrong-source copying (beyond the paper; README: "Citations that point to the right source").
    min_passage_relevance: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description=(
            "Leave passages whose source's relevance to the query, relative to the best (0-1), is below this "
            "out of the token search (they are not even encoded): no k-NN mass and no copying from them "
            "(0: every passage is searched, "
            "as in the paper). A source is a document: its passages share their best relevance."
        ),
    )
    min_source_coverage: float = Field(
        0.75,
        ge=0.0,
        le=1.0,
        description=(
            "Decode with the plain LM (no k-NN, no copying, no citations) when no retrieved source contains at "
            "least this share of the query's key terms (its names and numbers): then no source is about the "
            "query. Queries without key terms are not gated (0: never gate, as in the paper)."
        ),
    )
    passage_relevance: Literal["score", "query_terms", "both", "score_led"] = Field(
        "both",
        description=(
            "What passage relevance is measured by: the first stage's scores, the rarity-weighted share of the "
            "query's content words in the passage, or the smaller of both. Scores are min-max scaled over the "
            "retrieved passages, so 'score' always leaves the last-ranked source out; 'both' keeps the query "
            "words' relevance for a source that names every name and number of the query. 'score_led': 'both', "
            "but when the best-scored source names every name and number of the query the scores rank the others "
            "that do too (for a first stage whose scores rank paragraphs of one article well, e.g. the "
            "built-in HybridRetriever, re-ranked by convex fusion; the embedded model's shipped config uses it). "
            "Without scores (a retriever that gives none), the score signal says 1 and 'both' is 'query_terms'."
        ),
    )
    passage_prior: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description=(
            "Weight each neighbor in p_kNN by its passage's relevance to this power (0: no prior, as in the paper)."
        ),
    )
    context_guard: bool = Field(
        True,
        description=(
            "Copy only where the left context agrees: a span starts after a passage token equal to the last "
            "output token (or both end a sentence), and an answer's first token comes from sentence starts."
        ),
    )
    mask_copied: bool = Field(True, description="Mask copied positions so text is not copied twice.")
    sentence_lock: bool = Field(
        False,
        description=(
            "Also keep the decoder from splicing: once a sentence has copied two or more words from a source "
            "position, the rest of it may only continue that source run; if the LM leaves the run, the LM alone "
            "finishes the sentence. Off by default: a spliced sentence is never cited either way (its copies "
            "become fragments), and without the lock decoding copies about twice as many tokens a forward."
        ),
    )
    # Decoding.
    max_new_tokens: int = Field(128, ge=1, le=32768)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="Sampling temperature applied to p_M.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**64 - 1, description="Sampling seed (torch's generator range).")
    stop: list[str] = Field(
        default_factory=list,
        description="Stop strings (not included in the output); one string is a list of one, as in transformers.",
    )
    retrieval: bool = Field(True, description="False decodes with the plain LM (no first stage, no k-NN).")
    grounded_only: bool = Field(
        False,
        description=(
            "Abstain instead of answering from the plain LM when no retrieved source covers the query (the "
            "source-coverage gate, or nothing retrieved): the answer says the sources do not cover it, "
            "finish_reason is 'abstain' and stats.abstained is True."
        ),
    )

    def __init__(self, **data: Any) -> None:
        """Raises ``ConfigError`` (a ``ValueError``) naming the first invalid field."""
        from pydantic import ValidationError

        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _config_error(e, data) from e

    def __setattr__(self, name: str, value: Any) -> None:
        from pydantic import ValidationError

        try:
            super().__setattr__(name, value)
        except ValidationError as e:  # assignments are validated too
            raise _config_error(e, {name: value}) from e

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value: Any) -> Any:
        """``stop="\\n"`` is ``stop=["\\n"]``; items must be strings (no bytes, no numbers)."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
            raise ValueError(f"stop takes a string or a list of strings, got {value!r}")  # a set has no order
        if any(s == "" for s in value):
            raise ValueError("stop strings must be non-empty")
        return list(value)

    @classmethod
    def paper(cls, **overrides: Any) -> NestConfig:
        """The paper's official settings exactly: the guards this project adds switched off."""
        return cls(
            **{
                "min_passage_relevance": 0.0,
                "min_source_coverage": 0.0,
                "passage_prior": 0.0,
                "context_guard": False,
                "sentence_lock": False,
                **overrides,
            }
        )

    @classmethod
    def from_file(cls, path: str | Path) -> NestConfig:
        """Load a config written by :meth:`to_file` or by ``nest calibrate`` (JSON)."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("config"), dict) and "calibration" in data:
            data = data["config"]
        if not isinstance(data, dict):
            from .errors import ConfigError

            raise ConfigError(f"{path}: a config file holds a JSON object of NestConfig fields")
        return cls(**data)

    def to_file(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2), encoding="utf-8")


def calibration_file(model_name: str) -> Path:
    """Where the calibrated config shipped for ``model_name`` lives (it may not exist)."""
    return CALIBRATED_DIR / f"{model_name.replace('/', '--')}.json"


_SCALAR_KINDS: dict[Any, str] = {
    int: "an integer",
    int | None: "an integer",
    float: "a number",
    float | None: "a number",
    bool: "true or false",
}


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "true or false":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind == "an integer" else isinstance(value, (int, float))


def with_overrides(config: NestConfig, overrides: dict[str, Any]) -> NestConfig:
    """``config`` with per-call ``overrides`` (NestConfig fields) applied and validated.

    Raises:
        ConfigError: an unknown field or a value out of range (``option`` names the first).
    """
    from pydantic import ValidationError

    from .errors import ConfigError

    if not overrides:
        return config
    for name, value in overrides.items():
        field = NestConfig.model_fields.get(name)
        kind = _SCALAR_KINDS.get(field.annotation) if field is not None else None
        # Numbers and flags are taken as given: True or "8" for max_new_tokens, "0.5" for temperature
        # or "yes" for do_sample are a caller's mistake, not 1, 8, 0.5 and True.
        if kind is not None and value is not None and not _is_kind(value, kind):
            raise ConfigError(
                f"{name}: expected {kind}, got {type(value).__name__} {value!r:.80}",
                option=name,
                reason=f"expected {kind}",
            )
    try:
        return NestConfig.model_validate({**config.model_dump(), **overrides})
    except ValidationError as e:
        raise _config_error(e, overrides) from e


def _config_error(e: Any, given: dict[str, Any]) -> Exception:
    """A pydantic ``ValidationError`` of NestConfig as a ``ConfigError`` naming the first invalid field."""
    from .errors import ConfigError

    first = e.errors()[0]
    raised = first.get("ctx", {}).get("error")
    if isinstance(raised, ConfigError):  # from __init__, which model_validate runs too
        return raised
    option = str(first["loc"][0]) if first["loc"] else None
    reason = str(first["msg"]).removeprefix("Value error, ")
    value = repr(given[option]) if option in given else None
    shown = f" (got {value:.80})" if value is not None and value not in reason else ""
    return ConfigError(f"{option}: {reason}{shown}" if option else reason, option=option, reason=reason)


def default_config(model_name: str) -> NestConfig:
    """The config an engine uses when given none: the calibrated one shipped for the model
    (``nest calibrate`` output, see ``data/calibrated/``), else the paper's defaults."""
    path = calibration_file(model_name)
    return NestConfig.from_file(path) if path.is_file() else NestConfig()
