"""Plain-text rendering of a cited answer: [n] after each cited span, then the numbered sources.

One function for every text front end (the ``nest`` CLI, the LangChain tool, ...). It takes
engine :class:`Citation` objects or their dict form (as adapters carry them in metadata).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .citations import Citation, NestResult, mark_citations


def format_with_sources(
    text: str,
    citations: Sequence[Citation | Mapping[str, Any]],
    *,
    locations: bool = False,
    heading: str | None = None,
) -> str:
    """``text`` with ``[n]`` after the span of citation n, then one line per citation.

    Source lines read ``[n] title: "quote"``; with ``locations``, ``[n] title (document chars
    a-b): "quote"``. ``heading`` (e.g. ``"Sources:"``) goes on its own line, after a blank
    line, before them when there is any citation.
    """
    cites = [c.model_dump() if isinstance(c, Citation) else dict(c) for c in citations]
    lines = [mark_citations(text, [int(c["output_end"]) for c in cites]).strip()]
    if cites and heading:
        lines.append(f"\n{heading}")
    for n, c in enumerate(cites, 1):
        name = c.get("title") or c["passage_id"]
        where = ""
        if locations:
            where = (
                f" ({c.get('document_id') or c['passage_id']} chars {c['document_start']}-{c['document_end']})"
                if c.get("document_start") is not None
                else f" ({c['passage_id']})"
            )
        lines.append(f'[{n}] {name}{where}: "{c["quote"]}"')
    return "\n".join(lines)


def format_answer(result: NestResult) -> str:
    """What ``nest ask`` prints: the cited answer, its sources with locations, and a stats line.

    Says when no passage was about the query and when the answer was cut by ``max_new_tokens``.
    """
    parts = [format_with_sources(result.text, result.citations, locations=True, heading="Sources:")]
    s = result.stats
    if s.passages and not s.passages_searched and not s.abstained:
        parts.append("\n(No retrieved passage is about the query: answered by the model alone, nothing cited.)")
    parts.append(
        f"\n{s.tokens_generated} tokens, {s.tokens_copied} copied ({s.attribution_ratio:.0%}), "
        f"{s.spans_accepted}/{s.spans_proposed} spans accepted, {s.tokens_per_second:.1f} tokens/s"
    )
    return "\n".join(parts)
