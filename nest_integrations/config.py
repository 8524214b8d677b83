"""NestConfig: every knob of the NEST algorithm in one validated object.

Defaults are the ones the paper's official demo uses (see DESIGN.md). This module holds
configuration only; the math lives in ``mixture.py`` and ``speculative.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class NestConfig(BaseModel):
    """Hyperparameters of Nearest Neighbor Speculative Decoding.

    Example:
        >>> NestConfig(alpha=0.3, tau=0.1).beta
        0.5
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    # First stage.
    num_passages: int = Field(20, ge=1, le=1000, description="b: passages taken from the first stage.")
    # Token index and k-NN distribution.
    num_neighbors: int = Field(1024, ge=1, description="r: token neighbours per k-NN search.")
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
    span_min_relevance: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Spans start only in passages whose first-stage score, min-max scaled over the retrieved "
            "passages, is at least this (0 disables; passages without scores all count as 1). "
            "Beyond the paper: a guard against copying from passages retrieved for other reasons."
        ),
    )
    mask_copied: bool = Field(True, description="Mask copied positions so text is not copied twice.")
    # Decoding.
    max_new_tokens: int = Field(128, ge=1, le=32768)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="Sampling temperature applied to p_M.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, description="Stop strings (not included in the output).")
    retrieval: bool = Field(True, description="False decodes with the plain LM (no first stage, no k-NN).")

    @model_validator(mode="after")
    def _check_stop(self) -> NestConfig:
        if any(s == "" for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> NestConfig:
        """Load a config written by :meth:`to_file` (JSON)."""
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_file(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2), encoding="utf-8")
