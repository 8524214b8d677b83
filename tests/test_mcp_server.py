"""`nest mcp` through the `mcp` package's stdio client: tools listed, citations verified."""

from __future__ import annotations

import os
import sys

import pytest

from nest_integrations import default_retriever

mcp = pytest.importorskip("mcp")
pytestmark = pytest.mark.slow


async def test_mcp_client_lists_tools_and_gets_verifiable_citations(corpus_retriever) -> None:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "nest_integrations.cli", "mcp"], env=dict(os.environ)
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = {t.name for t in (await session.list_tools()).tools}
        assert {"grounded_answer", "search_passages"} <= tools
        result = await session.call_tool(
            "grounded_answer", {"question": "Tell me about Robert Boulter.", "max_tokens": 48}
        )
        assert not result.is_error
        answer = result.structured_content
        passages = {p.id: p for p in corpus_retriever.passages}
        assert answer["citations"]
        for c in answer["citations"]:
            assert answer["answer"][c["output_start"] : c["output_end"]] == c["quote"]
            assert passages[c["passage_id"]].text[c["passage_start"] : c["passage_end"]] == c["quote"]
        hits = await session.call_tool("search_passages", {"query": "Clayton Kershaw", "k": 3})
        assert [h["id"] for h in hits.structured_content["passages"]] == [
            h.passage.id for h in default_retriever().retrieve("Clayton Kershaw", 3)
        ]
        # Bad arguments and the engine's errors are tool errors whose text says what to fix.
        bad = await session.call_tool("grounded_answer", {"question": "  "})
        assert bad.is_error and "question is empty" in bad.content[0].text
        bad = await session.call_tool("grounded_answer", {"question": "Hi", "max_tokens": 0})
        assert bad.is_error and "max_tokens must be between 1 and" in bad.content[0].text
        bad = await session.call_tool("search_passages", {"query": "Kershaw", "k": 10**6})
        assert bad.is_error and "k must be between 1 and" in bad.content[0].text
        too_long = await session.call_tool("grounded_answer", {"question": " x" * 9000, "max_tokens": 4})
        assert too_long.is_error
        assert "tokens but" in too_long.content[0].text and "shorten it" in too_long.content[0].text
