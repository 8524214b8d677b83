"""OpenAI-compatible HTTP API over a NestEngine: ``/v1/chat/completions`` (JSON and SSE),
``/v1/models``, ``/v1/models/{id}`` and ``/health``. Citations ride on the message as an extension field.

Bodies are read and validated here (size, UTF-8, JSON, schema, and the engine's own ranges
for every option) before any work starts, so every bad request gets a 4xx in OpenAI's error
format; an error after a stream has started ends it with an error event and ``[DONE]``.
Nothing in a request names a file or a path.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

try:  # FastAPI resolves the endpoints' annotations from this module's globals
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError('The server needs the "serve" extra: pip install "nest-integrations[serve]"') from e

from ..call_options import engine_overrides
from ..config import NestConfig, with_overrides
from ..engine import NestEngine
from ..errors import ConfigError, InvalidPromptError, NestError, PromptTooLongError
from ..lm import Message
from .admission import Admission, Busy, TimedOut
from .schema import ChatCompletionRequest, error_body

log = logging.getLogger(__name__)


@dataclass
class ServerLimits:
    """Request limits; requests beyond them get a 4xx, never a slow failure."""

    max_tokens: int = 512
    max_prompt_chars: int = 32_000
    max_body_bytes: int = 1_000_000
    max_waiting: int = 8
    queue_timeout_s: float = 60.0


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param, code)


def _validation_message(e: ValidationError) -> tuple[str, str | None]:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or None
    message = str(err["msg"]).removeprefix("Value error, ")  # a validator's own message, as written
    return f"Invalid request: {where or 'body'}: {message}", where


# Engine option -> the request field a client sets for it (for the error's ``param``).
_PARAM_OF_OPTION = {"max_new_tokens": "max_tokens", "do_sample": "temperature"}


def api_error_for(e: Exception) -> ApiError:
    """The HTTP error a client gets for ``e``: the engine's input errors are 400, the rest 500.

    ``PromptTooLongError`` -> 400 ``context_length_exceeded``; ``ConfigError`` and
    ``InvalidPromptError`` -> 400; any other exception -> 500 ``server_error`` with a generic
    message (the details go to the log, never to the client).
    """
    if isinstance(e, ApiError):
        return e
    if isinstance(e, PromptTooLongError):
        return ApiError(400, str(e), param="messages", code="context_length_exceeded")
    if isinstance(e, InvalidPromptError):
        return ApiError(400, str(e), param="messages")
    if isinstance(e, ConfigError):
        return ApiError(400, str(e))
    if isinstance(e, NestError):  # a server-side fault (model, index or key store): not the client's to fix
        log.error("engine error: %s", e)
        return ApiError(500, "The server could not complete the request.", type_="server_error")
    log.error("unexpected error", exc_info=e)
    return ApiError(500, "Internal error.", type_="server_error")


def check_options(config: NestConfig, overrides: dict[str, Any]) -> None:
    """Raise a 400 ``ApiError`` unless the engine accepts ``overrides`` on top of ``config``
    (the engine's own check, :func:`~nest_integrations.config.with_overrides`)."""
    try:
        with_overrides(config, overrides)
    except ConfigError as e:
        param = _PARAM_OF_OPTION.get(e.option, e.option) if e.option else None
        raise ApiError(400, f"Invalid request: {param or 'body'}: {e.reason}", param=param) from e


def create_app(
    engine: NestEngine,
    *,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    replica: str | None = None,
) -> Any:
    """The FastAPI application serving ``engine``.

    ``replica`` names this process among several serving the same model (Ray Serve, a load
    balancer): every response then carries it in an ``X-Nest-Replica`` header.
    """
    limits = limits or ServerLimits()
    model_id = engine.lm.name
    # As many requests run as the engine decodes together (its max_batch); the rest wait or get 429.
    admission = Admission(
        max_waiting=limits.max_waiting, timeout=limits.queue_timeout_s, concurrency=getattr(engine, "max_batch", 1)
    )
    app = FastAPI(title="nest-integrations", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), code=str(exc.status_code)), status_code=exc.status_code)

    @app.exception_handler(NestError)
    async def _engine_error(request: Request, exc: NestError) -> JSONResponse:
        err = api_error_for(exc)
        return JSONResponse(err.body, status_code=err.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")  # the trace goes to the log, never to the client
        return JSONResponse(error_body("Internal error.", "server_error"), status_code=500)

    if replica is not None:

        @app.middleware("http")
        async def _name_replica(request: Request, call_next: Any) -> Any:
            response = await call_next(request)
            response.headers["X-Nest-Replica"] = replica
            return response

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return JSONResponse(error_body("Missing or invalid API key.", code="invalid_api_key"), status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "running": admission.running, "waiting": admission.waiting}

    model_card = {"id": model_id, "object": "model", "created": 0, "owned_by": "nest"}

    def model_not_found(name: str) -> ApiError:
        return ApiError(
            404,
            f"The model {name!r} does not exist; this server serves {model_id!r}.",
            param="model",
            code="model_not_found",
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [dict(model_card)]}

    # ``:path``: a Hugging Face id has a slash ("org/name"; clients send it as %2F, decoded before routing).
    @app.get("/v1/models/{name:path}")
    async def retrieve_model(name: str) -> dict[str, Any]:
        if name != model_id:
            raise model_not_found(name)
        return dict(model_card)

    async def read_request(request: Request) -> ChatCompletionRequest:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise ApiError(413, f"Request body is larger than {limits.max_body_bytes} bytes.")
        body = bytearray()
        try:
            async for part in request.stream():
                body += part
                if len(body) > limits.max_body_bytes:
                    raise ApiError(413, f"Request body is larger than {limits.max_body_bytes} bytes.")
        except ClientDisconnect as e:  # gone before its body arrived: nothing to answer, nothing went wrong
            raise ApiError(499, "The client disconnected.") from e
        try:
            payload = json.loads(bytes(body).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ApiError(400, "Request body is not valid UTF-8.") from e
        except json.JSONDecodeError as e:
            raise ApiError(400, f"Request body is not valid JSON: {e.msg} at position {e.pos}.") from e
        except RecursionError as e:
            raise ApiError(400, "Request body is nested too deeply.") from e
        except ValueError as e:  # e.g. an integer of more digits than Python converts (4,300)
            raise ApiError(400, f"Request body is not valid JSON: {e}.") from e
        if not isinstance(payload, dict):
            raise ApiError(400, "Request body must be a JSON object.")
        try:
            req = ChatCompletionRequest.model_validate(payload)
        except ValidationError as e:
            message, param = _validation_message(e)
            raise ApiError(400, message, param=param) from e
        except RecursionError as e:
            raise ApiError(400, "Request body is nested too deeply.") from e
        if req.model != model_id:
            raise model_not_found(req.model)
        return req

    def generation_args(req: ChatCompletionRequest) -> tuple[list[Message], dict[str, Any]]:
        """The messages and the engine's per-call arguments (``prompt_ids`` included: tokenised once)."""
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]  # the engine maps role aliases
        if not any(m["content"].strip() for m in messages):
            raise ApiError(400, "The messages are empty.", param="messages")
        if sum(len(m["content"]) for m in messages) > limits.max_prompt_chars:
            raise ApiError(400, f"The messages exceed {limits.max_prompt_chars} characters.", param="messages")
        max_tokens = req.max_completion_tokens or req.max_tokens or min(limits.max_tokens, engine.config.max_new_tokens)
        if max_tokens > limits.max_tokens:
            field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"  # the one the client set
            raise ApiError(400, f"{field} must be at most {limits.max_tokens}.", param=field)
        try:
            prompt_ids = engine.prompt_ids(messages)
        except NestError as e:
            raise api_error_for(e) from e
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4:
            raise ApiError(400, f"stop takes at most 4 strings, got {len(stops)}.", param="stop")
        if any(not s for s in stops):
            raise ApiError(400, "stop strings must be non-empty.", param="stop")
        try:  # options left out (None) leave the engine's config in charge
            overrides = engine_overrides(
                temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens, stop=stops or None, seed=req.seed
            )
        except ConfigError as e:
            raise ApiError(400, str(e)) from e
        check_options(engine.config, overrides)  # everything the engine would reject is a 400 now
        return messages, {**overrides, "prompt_ids": prompt_ids}

    async def admit(request: Request) -> None:
        task = asyncio.ensure_future(_admitted(admission))
        try:
            admitted = await _unless_disconnected(request, task)
        except Busy as e:
            raise ApiError(429, "The server is busy; retry later.", type_="rate_limit_error", code="busy") from e
        except TimedOut as e:
            raise ApiError(
                503, "Timed out waiting for the model; retry later.", type_="server_error", code="queue_timeout"
            ) from e
        except BaseException:  # cancelled (the client left) as the request may have just got its place
            _give_back_if_admitted(task, admission)
            raise
        if admitted is None:  # the client left while waiting: its place in the queue is given back
            _give_back_if_admitted(task, admission)
            raise ApiError(499, "The client disconnected.")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req = await read_request(request)
        messages, overrides = generation_args(req)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        await admit(request)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _ReleasingStream(
                _sse(engine, messages, overrides, completion_id, created, model_id, include_usage),
                _once(admission.release),
                media_type="text/event-stream",
            )
        try:
            result = await _unless_disconnected(request, engine.agenerate(messages, **overrides))
        except NestError as e:
            raise api_error_for(e) from e
        finally:
            admission.release()
        if result is None:  # the client went away; its decoding was cancelled (no one reads this)
            return JSONResponse(error_body("The client disconnected.", "invalid_request_error", None, None), 499)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": result.text,
                        "citations": [c.model_dump(mode="json") for c in result.citations],
                    },
                    "finish_reason": _finish(result.finish_reason),
                }
            ],
            "usage": _usage(result.stats.prompt_tokens, result.stats.tokens_generated),
            "nest": result.stats.model_dump(),
        }

    return app


def _give_back_if_admitted(task: asyncio.Future[bool], admission: Admission) -> None:
    """Release the place an abandoned admission got (now, or when it gets one after all: a
    cancelled wait can still complete), so no place is lost with a departed client."""

    def give_back(done: asyncio.Future[bool]) -> None:
        if not done.cancelled() and done.exception() is None:
            admission.release()

    if task.done():
        give_back(task)
    else:
        task.add_done_callback(give_back)


def _once(release: Callable[[], None]) -> Callable[[], None]:
    """``release`` that acts on its first call only (a slot is given back once, whoever calls)."""
    done = False

    def once() -> None:
        nonlocal done
        if not done:
            done = True
            release()

    return once


class _ReleasingStream(StreamingResponse):
    """A ``StreamingResponse`` that gives back the admission slot however it ends: sent in full,
    failed, cancelled, or never sent at all. (A ``finally`` in the body generator missed clients
    that left at once, whose generator never ran to its end or never started: a few of them wedged
    the server.)"""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release
        weakref.finalize(self, release)  # dropped without being sent (the request was cancelled first)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def _admitted(admission: Admission) -> bool:
    await admission.acquire()
    return True


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await ``work`` unless the client disconnects first: then cancel it (with a batching engine
    its place in the batch frees at the next step) and return None.

    The body has been read, so the next ASGI message is the disconnect (as StreamingResponse
    watches for it)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        return None
    finally:
        pending = [t for t in (task, watch) if not t.done()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)  # their cleanup (e.g. a queue place) is done on return


T = TypeVar("T")


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _sse(
    engine: NestEngine,
    messages: list[Message],
    overrides: dict[str, Any],
    completion_id: str,
    created: int,
    model_id: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format (the response that sends them gives the admission slot back).

    An error once the stream has started ends it with ``data: {"error": {...}}`` (OpenAI's error
    format, as OpenAI-compatible servers send it) and ``data: [DONE]``; the client has the 200.
    """

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(chunk)}\n\n"

    try:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        async for piece in engine.astream(messages, **overrides):
            delta: dict[str, Any] = {"content": piece.text}
            if piece.citations:
                delta["citations"] = [c.model_dump(mode="json") for c in piece.citations]
            if piece.result is None:
                yield event([{"index": 0, "delta": delta, "finish_reason": None}])
                continue
            result = piece.result
            yield event(
                [{"index": 0, "delta": delta, "finish_reason": _finish(result.finish_reason)}],
                nest=result.stats.model_dump(),
            )
            if include_usage:
                yield event([], usage=_usage(result.stats.prompt_tokens, result.stats.tokens_generated))
    except Exception as e:  # a client disconnect (CancelledError, GeneratorExit) is not caught here
        yield f"data: {json.dumps(api_error_for(e).body)}\n\n"
    yield "data: [DONE]\n\n"
