"""A bounded queue in front of the model: a batch of generations at a time, a few waiting, the rest refused."""

from __future__ import annotations

import asyncio


class Busy(Exception):
    """Too many requests are already waiting (answer 429)."""


class TimedOut(Exception):
    """A request waited longer than allowed for the model (answer 503)."""


class Admission:
    """At most ``concurrency`` requests run and ``max_waiting`` wait; waiting ends after ``timeout`` s."""

    def __init__(self, *, max_waiting: int, timeout: float, concurrency: int = 1) -> None:
        self.max_waiting = max_waiting
        self.timeout = timeout
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self.waiting = 0
        self.running = 0

    async def acquire(self) -> None:
        # Counted before awaiting anything, so requests arriving together cannot all pass.
        if self.running + self.waiting >= self.concurrency + self.max_waiting:
            raise Busy
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout)
        except (TimeoutError, asyncio.TimeoutError) as e:  # distinct classes before Python 3.11
            raise TimedOut from e
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        self._slots.release()
