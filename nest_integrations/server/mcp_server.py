"""MCP server (stdio) over a NestEngine: ``grounded_answer`` and ``search_passages`` tools.

Any MCP client can start it with ``nest mcp`` (optionally ``--index DIR``). Nothing is
written to stdout except the protocol: progress and logs go to stderr. Bad arguments and the
engine's errors (``NestError``) come back as tool errors whose text says what to fix.
"""

from __future__ import annotations

from typing import Any

from ..call_options import engine_overrides
from ..engine import NestEngine
from ..errors import MissingExtraError, NestError

MAX_TOKENS = 512
MAX_PASSAGES = 50


def create_mcp_server(engine: NestEngine) -> Any:
    """An ``mcp`` MCPServer with NEST's two tools."""
    try:
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingExtraError('The MCP server needs the "serve" extra: pip install "nest-integrations[serve]"') from e

    server = MCPServer(
        name="nest",
        instructions=(
            "grounded_answer answers from the indexed documents; every copied span comes with a citation "
            "(passage id, title, exact quote and char offsets). search_passages returns matching passages."
        ),
    )

    @server.tool(description="Answer a question from the indexed documents, with exact citations for copied spans.")
    async def grounded_answer(question: str, max_tokens: int = 128) -> dict[str, Any]:
        if not question.strip():
            raise ToolError("question is empty")
        if not 1 <= max_tokens <= MAX_TOKENS:
            raise ToolError(f"max_tokens must be between 1 and {MAX_TOKENS}")
        try:
            result = await engine.agenerate(question, **engine_overrides(max_tokens=max_tokens))
        except NestError as e:  # the model reads the message: it says what to fix
            raise ToolError(str(e)) from e
        return {
            "answer": result.text,
            "citations": [c.model_dump(mode="json") for c in result.citations],
            "stats": result.stats.model_dump(),
        }

    @server.tool(description="Search the indexed documents; returns passages with ids, titles and scores.")
    async def search_passages(query: str, k: int = 5) -> dict[str, Any]:
        if not query.strip():
            raise ToolError("query is empty")
        if not 1 <= k <= MAX_PASSAGES:
            raise ToolError(f"k must be between 1 and {MAX_PASSAGES}")
        try:
            hits = engine.retrieve(query, k)
        except NestError as e:
            raise ToolError(str(e)) from e
        return {
            "passages": [
                {
                    "id": h.passage.id,
                    "title": h.passage.title,
                    "text": h.passage.text,
                    "score": h.score,
                    "document_id": h.passage.document_id,
                    "start": h.passage.start,
                    "end": h.passage.end,
                }
                for h in hits
            ]
        }

    return server
