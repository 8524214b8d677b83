"""Serving NEST to agents and services: an OpenAI-compatible HTTP API and an MCP server.

Needs the ``serve`` extra: ``pip install "nest-integrations[serve]"``.
"""
