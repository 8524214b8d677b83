"""A documents chain for ``create_retrieval_chain`` whose answer keeps NEST's citations.

Drop-in for ``create_stuff_documents_chain``: it takes ``{"input": question, "context":
[Document, ...]}`` and returns the ``AIMessage`` from :class:`ChatNest` (citations as standard
annotations) instead of a string, so retrieval runs once and the citations survive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.prompts import BasePromptTemplate
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import ConfigDict

from .chat_models import ChatNest


class NestDocumentsChain(RunnableSerializable[dict[str, Any], AIMessage]):
    """Answer ``inputs[input_key]`` with NEST over the documents in ``inputs[document_variable_name]``.

    The documents become NEST's passages (not prompt text); the messages are ``prompt``
    formatted with the inputs, or the question alone as a human message. Streams
    ``AIMessageChunk``s with their citations.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: ChatNest
    prompt: BasePromptTemplate | None = None
    document_variable_name: str = "context"
    input_key: str = "input"

    def _call_args(self, inputs: dict[str, Any]) -> tuple[list[BaseMessage], dict[str, Any]]:
        if not isinstance(inputs, dict) or self.input_key not in inputs:
            raise ValueError(f"The documents chain takes a dict with the question under {self.input_key!r}.")
        docs = inputs.get(self.document_variable_name) or []
        if not all(isinstance(d, Document) for d in docs):
            raise TypeError(f"inputs[{self.document_variable_name!r}] must be a list of Documents.")
        question = str(inputs[self.input_key])
        if self.prompt is None:
            messages: list[BaseMessage] = [HumanMessage(question)]
        else:
            values = {k: v for k, v in inputs.items() if k in self.prompt.input_variables}
            if self.document_variable_name in self.prompt.input_variables:
                values[self.document_variable_name] = "\n\n".join(d.page_content for d in docs)
            messages = self.prompt.invoke(values).to_messages()
        return messages, {"nest_documents": list(docs), "nest_query": question}

    def invoke(self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        messages, extra = self._call_args(input)
        msg = self.llm.invoke(messages, config, **extra, **kwargs)
        return msg

    async def ainvoke(self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        messages, extra = self._call_args(input)
        msg = await self.llm.ainvoke(messages, config, **extra, **kwargs)
        return msg

    def stream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[AIMessageChunk]:
        messages, extra = self._call_args(input)
        yield from self.llm.stream(messages, config, **extra, **kwargs)

    async def astream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk]:
        messages, extra = self._call_args(input)
        async for chunk in self.llm.astream(messages, config, **extra, **kwargs):
            yield chunk


def create_nest_documents_chain(
    llm: ChatNest,
    prompt: BasePromptTemplate | None = None,
    *,
    document_variable_name: str = "context",
    input_key: str = "input",
) -> NestDocumentsChain:
    """The NEST counterpart of ``create_stuff_documents_chain``, for ``create_retrieval_chain``.

    Args:
        llm: a ``ChatNest`` (its own ``retriever`` is not used: the chain's documents are).
        prompt: optional; formatted with the inputs (``{context}`` gets the documents' text).
            None: the question alone, which is what ``ChatNest(retriever=...)`` sends.
        document_variable_name: the input key holding the retrieved ``Document``s.
        input_key: the input key holding the question (also NEST's first-stage query).

    Returns:
        A runnable: dict -> ``AIMessage`` whose ``content_blocks[0]["annotations"]`` are the citations.

    Example:
        .. code-block:: python

            from langchain_classic.chains import create_retrieval_chain
            from langchain_nest import ChatNest, create_nest_documents_chain

            chain = create_retrieval_chain(retriever, create_nest_documents_chain(ChatNest()))
            out = chain.invoke({"input": "Who directed Mercury Fur?"})
            out["answer"].content_blocks[0]["annotations"]  # citations; out["context"]: the documents
    """
    return NestDocumentsChain(
        llm=llm, prompt=prompt, document_variable_name=document_variable_name, input_key=input_key
    )
