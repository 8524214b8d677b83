"""NEST citations as LangChain standard ``Citation`` annotations on a text content block.

Messages keep string content; citations travel in ``response_metadata["citations"]`` (the
engine's JSON fields) and a block translator registered for provider "nest" shows them as
standard annotations in ``message.content_blocks``.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.block_translators import register_translator
from langchain_core.messages.content import Annotation, ContentBlock, create_citation, create_text_block
from langchain_core.messages.content import Citation as LCCitation

from nest_integrations import Citation

PROVIDER = "nest"


def citation_payload(c: Citation) -> dict[str, Any]:
    """The engine's JSON fields of a citation (what response_metadata carries)."""
    return c.model_dump(mode="json")


def to_annotation(c: dict[str, Any]) -> LCCitation:
    """A LangChain ``Citation`` for one payload; source ids and offsets go to ``extras``."""
    meta = c.get("metadata") or {}
    url = meta.get("url") or meta.get("source")
    extras = {
        k: c[k]
        for k in (
            "passage_id",
            "document_id",
            "passage_start",
            "passage_end",
            "document_start",
            "document_end",
            "score",
        )
        if c.get(k) is not None
    }
    return create_citation(
        id=f"nest-{c['passage_id']}-{c['output_start']}",
        url=str(url) if url is not None else None,
        title=c.get("title") or None,
        start_index=c["output_start"],
        end_index=c["output_end"],
        cited_text=c["quote"],
        **extras,
    )


def _text_of(message: AIMessage | AIMessageChunk) -> str:
    return message.content if isinstance(message.content, str) else message.text


def _translate(message: AIMessage | AIMessageChunk) -> list[ContentBlock]:
    annotations: list[Annotation] = [to_annotation(c) for c in message.response_metadata.get("citations") or []]
    block = create_text_block(_text_of(message), id="nest-text", annotations=annotations or None, index=0)
    return [block]


register_translator(PROVIDER, _translate, _translate)
