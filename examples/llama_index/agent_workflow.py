"""NestQueryEngine as a QueryEngineTool inside a LlamaIndex agent workflow.

The embedded 135M model cannot plan tool calls, so this workflow routes every question to
the grounded tool and returns its cited answer; with a tool-calling LLM, hand the same
`tool` to `FunctionAgent(tools=[tool], llm=...)`.

Run: python examples/llama_index/agent_workflow.py "Tell me about Du Fu." [--max-articles N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from llama_index.core.tools import QueryEngineTool
from llama_index.core.workflow import StartEvent, StopEvent, Workflow, step

from llama_index.llms.nest import NestLLM, NestQueryEngine

sys.path.insert(0, str(Path(__file__).parent))
from query_engine import build_index


class GroundedAnswerWorkflow(Workflow):
    """One step: call the grounded tool, return its answer and the citations it carries."""

    def __init__(self, tool: QueryEngineTool, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.tool = tool

    @step
    async def answer(self, ev: StartEvent) -> StopEvent:
        output = await self.tool.acall(ev.question)
        return StopEvent(result={"answer": output.content, "citations": output.raw_output.metadata["citations"]})


async def main(question: str, max_articles: int | None = None, max_tokens: int = 128) -> dict:
    engine = NestQueryEngine.from_index(build_index(max_articles), llm=NestLLM(max_tokens=max_tokens))
    tool = QueryEngineTool.from_defaults(
        engine, name="grounded_answer", description="Answers questions from the corpus with exact citations."
    )
    result = await GroundedAnswerWorkflow(tool=tool, timeout=600).run(question=question)
    print(result["answer"])
    for n, c in enumerate(result["citations"], 1):
        print(f'[{n}] {c["title"]} ({c["node_id"]}): "{c["quote"]}"')
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("question", nargs="?", default="Tell me about Robert Boulter.")
    parser.add_argument("--max-articles", type=int)
    args = parser.parse_args()
    asyncio.run(main(args.question, args.max_articles))
