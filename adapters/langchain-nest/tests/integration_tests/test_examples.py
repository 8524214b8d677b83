"""The LangChain examples run as documented (on a few articles, to stay quick)."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[4] / "examples" / "langchain"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lcel_faiss_example_answers_with_citations(capsys) -> None:
    answer = load("lcel_faiss").main("Tell me about Robert Boulter.", max_articles=3, max_tokens=48)
    out = capsys.readouterr().out
    assert answer and answer in out
    assert "[1] Robert Boulter (Robert_Boulter#" in out


def test_retrieval_chain_example_answers_with_citations(capsys) -> None:
    answer = load("retrieval_chain").main("Tell me about Robert Boulter.", max_articles=3, max_tokens=48)
    out = capsys.readouterr().out
    assert answer and answer in out
    assert "[1] Robert Boulter (Robert_Boulter#" in out
