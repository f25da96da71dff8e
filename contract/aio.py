"""Small asyncio building blocks shared by edge and gateway."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, Self

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel tasks and wait until they are really done.

    Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives just as its
    inner future completes (fixed in 3.12); libraries use it everywhere. A task that swallowed
    one is cancelled again rather than waited for forever.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)


def cancel_requested() -> bool:
    """Whether the current task has a cancellation pending that something swallowed."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def run_every(interval: float, step: Callable[[], Awaitable[None]], name: str) -> None:
    """Call ``step`` every ``interval`` seconds on a steady clock, for ever.

    A step that fails unexpectedly is logged with its trace and the loop goes on (a stopped
    poller is a silent panic button). A step that overruns skips the missed slots rather than
    firing a burst of back-to-back reads at a struggling device.
    """
    deadline = time.monotonic()
    while True:
        if cancel_requested():
            raise asyncio.CancelledError  # a library below swallowed our cancellation
        try:
            await step()
        except Exception:
            log.exception("%s failed unexpectedly", name)
        deadline = max(deadline + interval, time.monotonic())
        await asyncio.sleep(deadline - time.monotonic())


class Service:
    """A long-lived thing that owns one background task: started on ``async with``, cancelled
    and awaited on exit, so nothing outlives its owner."""

    task_name = "service"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=self.task_name)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            if not self._task.cancelled() and (exc := self._task.exception()) is not None:
                raise exc


async def run_together(*coros: Coroutine[Any, Any, None]) -> None:
    """Run the loops of one connection until the first of them fails; cancel the rest.

    Not ``asyncio.TaskGroup``: on Python 3.11 a child that fails while the group is exiting
    leaves the parent task with a stray cancellation request (fixed in 3.12), which would make
    the reconnect loop around this stop for good.
    """
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        await cancel_and_wait(tasks)
    for t in done:
        if not t.cancelled() and (exc := t.exception()) is not None:
            raise exc
