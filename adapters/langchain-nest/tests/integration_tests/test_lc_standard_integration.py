"""langchain-tests standard integration suite for ChatNest, on the embedded model."""

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_nest import ChatNest

pytestmark = pytest.mark.slow


class TestChatNestIntegration(ChatModelIntegrationTests):
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

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": [], "stream": []}
