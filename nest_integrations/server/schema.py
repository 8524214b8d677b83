"""The OpenAI chat-completions wire format that the server accepts and returns (the subset NEST serves)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_SEED = 2**64 - 1
# Content part types that carry an image (Chat Completions: image_url; Responses API: input_image).
IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    """A chat message. Tool results ("tool", legacy "function") are read as the engine reads them;
    ``content`` may be null (an assistant turn that only called tools) and then reads as empty."""

    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        """A list of parts is checked here, part by part, so a client sending an image (or a
        malformed part) is told so, not that its content "should be a valid string"."""
        if not isinstance(value, list):
            return value
        for i, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind in IMAGE_PART_TYPES:
                raise ValueError(
                    f"image parts are not supported (this model reads text only): content part {i} "
                    f'has type "{kind}"; send the question as text'
                )
            if isinstance(kind, str) and kind != "text":
                raise ValueError(
                    f'content part {i} has type "{kind:.40}", which is not supported (this model reads '
                    'text only; send "text" parts)'
                )
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f'content part {i} must be an object {{"type": "text", "text": "..."}}')
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """Unknown fields are ignored, as OpenAI clients send many; known ones are checked strictly."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)
    model: str
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    # torch's generator takes seeds in 0..2**64-1 (and negatives, which OpenAI's API does not document).
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int = Field(1, ge=1, le=1)
    # Fields that change what a response holds: accepted only at the values this server serves, so a
    # client asking for log probabilities, JSON mode or tool calls gets a 400, not silently plain text.
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    functions: list[dict[str, Any]] | None = None  # the legacy form of ``tools``
    tool_choice: str | dict[str, Any] | None = None
    function_call: str | dict[str, Any] | None = None

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | int | None) -> bool | int | None:
        if value:
            raise ValueError("log probabilities are not served by this server")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") != "text":
            raise ValueError('only {"type": "text"} is served (the answer is cited text; no JSON mode)')
        return value

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError("tool calling is not served (this server answers with cited text; call it as a tool)")
        return value

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if value is not None and value not in ("none", "auto"):
            raise ValueError('tool calling is not served: only "none" or "auto" (no tools) is accepted')
        return value


def error_body(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
