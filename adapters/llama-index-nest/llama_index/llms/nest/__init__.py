"""LlamaIndex integration for nest-integrations: NestLLM and NestQueryEngine with per-span citations."""

from llama_index.llms.nest.base import NestLLM
from llama_index.llms.nest.query_engine import NestQueryEngine
from llama_index.llms.nest.retrievers import LlamaIndexPassageRetriever, nodes_to_passages

__all__ = ["LlamaIndexPassageRetriever", "NestLLM", "NestQueryEngine", "nodes_to_passages"]
