"""langchain-tests standard unit suite for ChatNest (no generation: construction and parameters)."""

from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_nest import ChatNest


class TestChatNestUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatNest]:
        return ChatNest

    @property
    def chat_model_params(self) -> dict:
        return {"model": "default"}

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def has_tool_calling(self) -> bool:
        return False  # bind_tools is overridden only to explain why NEST does not call tools

    @property
    def has_structured_output(self) -> bool:
        return False
