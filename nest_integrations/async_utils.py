"""Run blocking iterators from asyncio code without blocking the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


async def iterate_in_thread(make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Yield the items of ``make()``, produced in a worker thread, as they arrive.

    Exceptions from the iterator are re-raised in the consumer; when the consumer stops
    early, the worker stops at its next item.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[bool, object]] = asyncio.Queue()
    done, stop = object(), threading.Event()

    def produce() -> None:
        try:
            for item in make():
                if stop.is_set():
                    return
                loop.call_soon_threadsafe(queue.put_nowait, (True, item))
        except BaseException as e:  # handed to the consumer
            loop.call_soon_threadsafe(queue.put_nowait, (False, e))
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, (True, done))

    worker = loop.run_in_executor(None, produce)
    try:
        while True:
            ok, item = await queue.get()
            if not ok:
                raise item  # type: ignore[misc]
            if item is done:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        await worker
