"""Coalescing: the queries of concurrent requests travel to the batched service in one call.

The Embedder batches whatever reaches it, but each HTTP call to it still costs a request's
worth of parsing, dispatching and answering on both sides of the hop. Under load the entry
service therefore sends the queries that wait while earlier calls are out together, in one
call (natural batching: nothing waits for a batch to fill, so one client pays no delay).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Query = TypeVar("Query")
Answer = TypeVar("Answer")


class Coalescer(Generic[Query, Answer]):
    """`await coalescer(queries)` answers like `call(queries)`, but at most `max_in_flight`
    calls run at once; the queries of the callers waiting meanwhile go out together in the
    next call, up to `max_batch` queries per call (a caller with more goes alone)."""

    def __init__(
        self,
        call: Callable[[list[Query]], Awaitable[Sequence[Answer]]],
        max_batch: int,
        max_in_flight: int,
    ) -> None:
        self.call, self.max_batch, self.max_in_flight = call, max_batch, max_in_flight
        self._waiting: deque[tuple[list[Query], asyncio.Future[list[Answer]]]] = deque()
        self._in_flight = 0

    async def __call__(self, queries: list[Query]) -> list[Answer]:
        future: asyncio.Future[list[Answer]] = asyncio.get_running_loop().create_future()
        self._waiting.append((queries, future))
        self._send_waiting()
        return await future

    def _send_waiting(self) -> None:
        while self._in_flight < self.max_in_flight and self._next_waiting():
            batch = [self._waiting.popleft()]
            size = len(batch[0][0])
            while self._next_waiting() and size + len(self._waiting[0][0]) <= self.max_batch:
                size += len(self._waiting[0][0])
                batch.append(self._waiting.popleft())
            self._in_flight += 1
            asyncio.get_running_loop().create_task(self._send(batch))

    def _next_waiting(self) -> bool:
        """Whether a caller waits; callers that have gone (client disconnected) are dropped."""
        while self._waiting and self._waiting[0][1].done():
            self._waiting.popleft()
        return bool(self._waiting)

    async def _send(self, batch: list[tuple[list[Query], asyncio.Future[list[Answer]]]]) -> None:
        queries = [q for waiting, _ in batch for q in waiting]
        try:
            answers = list(await self.call(queries))
            if len(answers) != len(queries):
                raise RuntimeError(f"{len(answers)} answers to {len(queries)} queries")
        except BaseException as error:  # every caller of this call gets the error
            for _, future in batch:
                if future.done():  # the caller has gone (client disconnected)
                    continue
                if isinstance(error, Exception):
                    future.set_exception(error)
                else:
                    future.cancel()
            if not isinstance(error, Exception):
                raise
        else:
            start = 0
            for waiting, future in batch:
                if not future.done():
                    future.set_result(answers[start : start + len(waiting)])
                start += len(waiting)
        finally:
            self._in_flight -= 1
            self._send_waiting()
