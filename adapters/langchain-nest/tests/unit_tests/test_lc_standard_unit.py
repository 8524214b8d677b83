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
