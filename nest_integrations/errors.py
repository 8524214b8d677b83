"""The engine's errors: one ``NestError`` base, one subclass per thing a caller can fix.

Input errors also subclass ``ValueError`` (and a missing file ``FileNotFoundError``) so code
written against the built-in types keeps working. The CLI maps every ``NestError`` to exit
code 2, the servers to a 4xx, the adapters let them propagate. Nothing else lives here.
"""

from __future__ import annotations


class NestError(Exception):
    """Base of every error the engine raises on purpose: the message says what to fix."""


class ConfigError(NestError, ValueError):
    """A ``NestConfig`` value or a per-call override is invalid.

    ``option``: the first invalid field when one is known (e.g. ``"top_p"``); ``reason``: why,
    in a few words (the whole message is ``str(error)``).
    """

    def __init__(self, message: str, *, option: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.option = option
        self.reason = reason or message


class InvalidPromptError(NestError, ValueError):
    """The prompt is empty or its messages are malformed."""


class InvalidPassagesError(NestError, ValueError):
    """``passages`` is not a list of ``Passage`` / ``ScoredPassage`` objects."""


class PromptTooLongError(NestError, ValueError):
    """The prompt does not fit in the model's context window."""


class ModelNotFoundError(NestError, RuntimeError):
    """The requested model cannot be found locally (ids are never downloaded at run time)."""


class UnreadableFileError(NestError, ValueError):
    """A document file is not valid UTF-8, or a JSONL line lacks a string ``text`` field."""


class IndexNotFoundError(NestError, FileNotFoundError):
    """A passage index or key store directory does not exist or is not one."""


class CorruptStoreError(NestError, ValueError):
    """A passage index or key store on disk is truncated, corrupt, or of another format or model."""


class OutputPathError(NestError, ValueError):
    """An output path cannot be written as asked: an existing file where a directory goes (or the
    reverse), a file among its parent directories, or a directory without write permission."""


class MissingExtraError(NestError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""
