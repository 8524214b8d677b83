"""A grounded-answer tool for LangChain agents: the answer as content, the citations as artifact."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

from nest_integrations.formatting import format_with_sources

from .chat_models import ChatNest


class GroundedAnswerInput(BaseModel):
    question: str = Field(description="The question to answer from the indexed documents.")


__all__ = ["GroundedAnswerInput", "create_nest_tool", "format_with_sources"]


def _content_and_artifact(msg: BaseMessage) -> tuple[str, dict[str, Any]]:
    citations = msg.response_metadata.get("citations", [])
    artifact = {"answer": msg.text, "citations": citations, "stats": msg.response_metadata.get("nest", {})}
    return format_with_sources(msg.text, citations), artifact


def create_nest_tool(
    llm: ChatNest,
    name: str = "grounded_answer",
    description: str = (
        "Answer a factual question from the indexed documents. Returns the answer with numbered "
        "citations; every cited span is quoted exactly from its source."
    ),
) -> StructuredTool:
    """A tool an agent can call; ``response_format="content_and_artifact"`` like ``create_retriever_tool``.

    The artifact is ``{"answer": str, "citations": [engine citation fields], "stats": {...}}``.
    """

    def check(question: str) -> None:
        if not question.strip():
            raise ValueError("The question is empty.")

    def answer(question: str) -> tuple[str, dict[str, Any]]:
        check(question)
        return _content_and_artifact(llm.invoke(question))

    async def aanswer(question: str) -> tuple[str, dict[str, Any]]:
        check(question)
        return _content_and_artifact(await llm.ainvoke(question))

    return StructuredTool.from_function(
        func=answer,
        coroutine=aanswer,
        name=name,
        description=description,
        args_schema=GroundedAnswerInput,
        response_format="content_and_artifact",
    )
