"""The LlamaIndex examples run as documented (on a few articles, to stay quick)."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "llama_index"


def load(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(f"li_example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


def test_query_engine_example(capsys) -> None:
    answer = load("query_engine").main("Tell me about Robert Boulter.", max_articles=2, max_tokens=48)
    out = capsys.readouterr().out
    assert answer and "[1] Robert Boulter (node " in out


async def test_agent_workflow_example(capsys) -> None:
    result = await load("agent_workflow").main("Tell me about Robert Boulter.", max_articles=2, max_tokens=48)
    assert result["answer"] and result["citations"]
    assert all(result["answer"].find(c["quote"]) >= 0 for c in result["citations"])


def test_synthesizer_and_chat_example(capsys) -> None:
    query_answer, chat_answer = load("synthesizer_and_chat").main(
        "Tell me about Robert Boulter.", max_articles=2, max_tokens=48
    )
    out = capsys.readouterr().out
    assert query_answer and query_answer == chat_answer  # the first chat turn is the same question
    assert out.count("[1] Robert Boulter (node ") == 2
