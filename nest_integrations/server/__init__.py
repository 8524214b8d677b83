"""Serving NEST to agents and services: an OpenAI-compatible HTTP API and an MCP server
(``serve`` extra), and the same HTTP API on N Ray Serve replicas sharing a Chroma first stage
(``ray_app`` and ``chroma_store``, ``ray`` extra): ``pip install "nest-integrations[serve]"``.
"""
