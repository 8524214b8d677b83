"""LangChain integration for nest-integrations: grounded, cited generation with NEST."""

from langchain_nest.chains import NestDocumentsChain, create_nest_documents_chain
from langchain_nest.chat_models import ChatNest
from langchain_nest.embeddings import NestEmbeddings
from langchain_nest.llms import NestLLM
from langchain_nest.retrievers import LangChainPassageRetriever, PassageRetrieverAdapter, documents_to_passages
from langchain_nest.tools import create_nest_tool

__all__ = [
    "ChatNest",
    "LangChainPassageRetriever",
    "NestDocumentsChain",
    "NestEmbeddings",
    "NestLLM",
    "PassageRetrieverAdapter",
    "create_nest_documents_chain",
    "create_nest_tool",
    "documents_to_passages",
]
