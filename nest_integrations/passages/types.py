"""The Passage type: a retrievable piece of text with everything a citation needs."""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

_JSON_SCALARS = (str, int, float, bool, type(None))


def json_safe(value: Any) -> Any:
    """``value`` with anything JSON cannot hold turned into strings (for metadata from other libraries)."""
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    return str(value)


class Passage(BaseModel):
    """A passage of a source document.

    ``start``/``end`` are the passage's char offsets in the document's text, so that
    ``document_text[start:end] == text`` whenever they are given.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    document_id: str | None = None
    start: int | None = Field(None, ge=0)
    end: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _check_offsets(self) -> Passage:
        if (self.start is None) != (self.end is None):
            raise ValueError("Passage.start and Passage.end must be given together")
        if self.start is not None and self.end is not None and self.end - self.start != len(self.text):
            raise ValueError(
                f"Passage {self.id!r}: end - start ({self.end - self.start}) must equal len(text) ({len(self.text)})"
            )
        return self

    @property
    def content_key(self) -> str:
        """Hash of what the LM sees, used to cache the passage's token keys."""
        return hashlib.sha1(f"{self.title}\x00{self.text}".encode()).hexdigest()


class ScoredPassage(BaseModel):
    """A passage with its first-stage relevance score (higher is more relevant; None: the first
    stage gave none, e.g. a LangChain retriever's plain ``Document``; order alone is not a score)."""

    model_config = ConfigDict(frozen=True)

    passage: Passage
    score: float | None = None


class Document(BaseModel):
    """A source document to be chunked into passages."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
