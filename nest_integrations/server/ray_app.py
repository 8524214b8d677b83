"""Ray Serve: N replicas of the OpenAI-compatible app, each with its own model and engine, all
querying one shared first stage (a Chroma server loaded with :mod:`.chroma_store`).

Deploy with Ray's CLI (arguments are :class:`RayAppArgs` fields as ``key=value``)::

    serve run nest_integrations.server.ray_app:build_app chroma_port=8000 replicas=2

or from Python: ``serve.run(build_app({"replicas": 2, ...}))``. Needs the ``ray`` extra.
Every response names the replica that served it in an ``X-Nest-Replica`` header.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

try:
    from ray import serve
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError('Ray Serve deployment needs the "ray" extra: pip install "nest-integrations[ray]"') from e


class RayAppArgs(BaseModel):
    """What ``serve run ...:build_app key=value ...`` accepts (strings are converted)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", description='"default" (embedded SmolLM2-135M) or a local model path.')
    chroma_host: str = "127.0.0.1"
    chroma_port: int = Field(8000, ge=1, le=65535)
    collection: str = Field("nest", description="The Chroma collection written by chroma_store.upload_index.")
    replicas: int = Field(2, ge=1)
    num_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per replica (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (1 puts each replica on its own GPU).")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per replica (None: torch decides).")
    api_key: str | None = Field(None, description="Bearer key clients must send (default: $NEST_API_KEY).")
    max_tokens_limit: int = Field(512, ge=1)
    max_batch: int = Field(8, ge=1, description="Requests a replica decodes together (continuous batching).")
    max_queue: int = Field(8, ge=0, description="Requests that may wait beyond a replica's batch; more get 429.")


class NestReplica:
    """One Ray Serve replica: loads the model, connects to the shared Chroma store, builds the app."""

    def __init__(self, args: dict[str, Any]) -> None:
        from ..engine import NestEngine
        from .chroma_store import ChromaRetriever, connect
        from .heap import freeze_startup_heap

        self.args = RayAppArgs.model_validate(args)
        if self.args.torch_threads is not None:
            import torch

            torch.set_num_threads(self.args.torch_threads)
        retriever = ChromaRetriever(connect(self.args.chroma_host, self.args.chroma_port), self.args.collection)
        device = "cuda" if self.args.num_gpus > 0 else None
        self.engine = NestEngine(self.args.model, retriever=retriever, device=device, max_batch=self.args.max_batch)
        self.replica = f"{serve.get_replica_context().replica_id.unique_id}/pid-{os.getpid()}"
        freeze_startup_heap()  # the replica's process serves only this engine

    def __serve_build_asgi_app__(self) -> Any:  # called by Ray Serve after __init__
        from .openai_api import ServerLimits, create_app

        limits = ServerLimits(max_tokens=self.args.max_tokens_limit, max_waiting=self.args.max_queue)
        api_key = self.args.api_key or os.environ.get("NEST_API_KEY") or None
        return create_app(self.engine, api_key=api_key, limits=limits, replica=self.replica)


def build_app(args: dict[str, Any]) -> Any:
    """The Ray Serve application (``serve run`` app builder); ``args`` as :class:`RayAppArgs`."""
    parsed = RayAppArgs.model_validate(args)
    deployment = serve.deployment(
        name="NestReplica",
        num_replicas=parsed.replicas,
        # A replica decodes max_batch requests together; its own queue answers 429 beyond that.
        max_ongoing_requests=parsed.max_batch + parsed.max_queue,
        ray_actor_options={"num_cpus": parsed.num_cpus, "num_gpus": parsed.num_gpus},
        health_check_period_s=10,
    )(serve.ingress()(NestReplica))
    return deployment.bind(parsed.model_dump())
