"""Freezing a serving process's startup heap (nest serve, nest mcp, each Ray replica)."""

from __future__ import annotations

import gc
import weakref

from nest_integrations.server.heap import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_freezing_collects_garbage_first_then_exempts_what_lives() -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a reference cycle: only the garbage collector frees it
    dead = weakref.ref(a)
    del a, b
    try:
        frozen = freeze_startup_heap()
        assert dead() is None  # collected before freezing, not kept forever
        assert frozen > 0 and gc.get_freeze_count() > 0
        # A later full collection walks only objects created after the freeze.
        assert len(gc.get_objects()) < frozen
    finally:
        gc.unfreeze()
