"""LlamaIndex integration for nest-integrations: NestLLM, a cited query engine, synthesizer and chat engine."""

from llama_index.llms.nest.base import NestLLM
from llama_index.llms.nest.chat_engine import NestChatEngine
from llama_index.llms.nest.embeddings import NestEmbedding
from llama_index.llms.nest.query_engine import NestQueryEngine
from llama_index.llms.nest.retrievers import LlamaIndexPassageRetriever, PassageRetrieverAdapter, nodes_to_passages
from llama_index.llms.nest.synthesizer import NestSynthesizer

__all__ = [
    "LlamaIndexPassageRetriever",
    "NestChatEngine",
    "NestEmbedding",
    "NestLLM",
    "NestQueryEngine",
    "NestSynthesizer",
    "PassageRetrieverAdapter",
    "nodes_to_passages",
]
