"""Coalescing: the queries of concurrent requests travel to the batched service in one call.

The Embedder batches whatever reaches it, but each HTTP call to it still costs a request's
worth of parsing, dispatching and answering on both sides of the hop, and in the entry worker
(placement `in_process`) each call costs a search's fixed part and, on a worker thread, the
thread's hop. Under load the entry service therefore sends together, in one call, the queries
of the requests read in the same turn of its event loop and of those that arrive while earlier
calls are out (natural batching: nothing waits for a batch to fill beyond that one turn, and a
worker's only request is sent at once).

Under steady load the two services form a pipeline of two stages: while the Embedder works on
one group of queries, the entry service turns the previous group's answers into responses and
reads those clients' next requests. Two things keep both stages busy:
- a call that follows an answered call takes at most half of the queries in play (waiting, plus
  those just answered), so the two groups stay even. Without this limit a straggler that
  arrived while a call was out went alone next, and the rest of the clients waited for it:
  calls of 1 and 31 queries in turn at 32 clients (docs/performance.md, round 4);
- the next call leaves before the callers of the answered one are woken up.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Query = TypeVar("Query")
Answer = TypeVar("Answer")
Batch = list[tuple[list[Query], "asyncio.Future[list[Answer]]"]]

# Event-loop turns given to the next call, so that its request is written (aiohttp writes a
# body in a task of its own) before the callers just answered build their responses.
HANDOVER_TURNS = 2


class Coalescer(Generic[Query, Answer]):
    """`await coalescer(queries)` answers like `call(queries)`, but at most `max_in_flight`
    calls run at once; the queries of the callers waiting meanwhile go out together in the
    next call, up to `max_batch` queries per call (a caller with more goes alone) and, after an
    answered call, up to half of the queries in play.

    A call takes its callers when it starts, a turn of the event loop after it was due: every
    caller that arrives in that turn (the requests read from the sockets in one turn) goes with
    it. A caller that is `alone` (no other request in the worker) when no call is out is called
    at once, without the turn and the task (`docs/performance.md`, round 8)."""

    def __init__(
        self,
        call: Callable[[list[Query]], Awaitable[Sequence[Answer]]],
        max_batch: int,
        max_in_flight: int,
        alone: Callable[[], bool] = lambda: False,
    ) -> None:
        self.call, self.max_batch, self.max_in_flight = call, max_batch, max_in_flight
        self.alone = alone
        self._waiting: deque[tuple[list[Query], asyncio.Future[list[Answer]]]] = deque()
        self._in_flight = 0  # calls out, and the call due to start (`_due`)
        self._due = False

    async def __call__(self, queries: list[Query]) -> list[Answer]:
        if not self._in_flight and not self._waiting and self.alone():
            return await self._call_alone(queries)
        future: asyncio.Future[list[Answer]] = asyncio.get_running_loop().create_future()
        self._waiting.append((queries, future))
        self._start_call()
        return await future

    async def _call_alone(self, queries: list[Query]) -> list[Answer]:
        self._in_flight += 1
        try:
            return _checked(await self.call(queries), queries)
        finally:
            self._in_flight -= 1
            self._start_call(answered=len(queries))

    def _start_call(self, answered: int = 0) -> None:
        """Make a call due, in the next turn of the loop, if fewer than `max_in_flight` are out
        and callers wait; `answered`: the queries of the call that just came back (0 for a new
        caller)."""
        if self._due or self._in_flight >= self.max_in_flight or not self._next_waiting():
            return
        self._due = True
        self._in_flight += 1
        asyncio.get_running_loop().create_task(self._send(answered))

    def _take_batch(self, answered: int) -> Batch:
        limit = self.max_batch
        if answered:
            in_play = answered + sum(len(queries) for queries, _ in self._waiting)
            limit = min(limit, math.ceil(in_play / 2))
        batch: Batch = []
        size = 0
        while self._next_waiting() and (not batch or size + len(self._waiting[0][0]) <= limit):
            size += len(self._waiting[0][0])
            batch.append(self._waiting.popleft())
        return batch

    def _next_waiting(self) -> bool:
        """Whether a caller waits; callers that have gone (client disconnected) are dropped."""
        while self._waiting and self._waiting[0][1].done():
            self._waiting.popleft()
        return bool(self._waiting)

    async def _send(self, answered: int) -> None:
        self._due = False
        batch = self._take_batch(answered)
        self._start_call()  # callers left over for another call, if one may go out
        queries = [q for waiting, _ in batch for q in waiting]
        failure: BaseException | None = None
        try:
            answers = _checked(await self.call(queries), queries) if queries else []
        except BaseException as error:  # every caller of this call gets the error
            failure = error
        self._in_flight -= 1
        self._start_call(answered=len(queries))
        if failure is not None:
            _fail(batch, failure)
            if not isinstance(failure, Exception):
                raise failure
            return
        try:
            for _ in range(HANDOVER_TURNS):
                await asyncio.sleep(0)
        finally:
            _answer(batch, answers)


def _checked(answers: Sequence[Answer], queries: list[Query]) -> list[Answer]:
    answers = list(answers)
    if len(answers) != len(queries):
        raise RuntimeError(f"{len(answers)} answers to {len(queries)} queries")
    return answers


def _answer(batch: Batch, answers: list[Answer]) -> None:
    start = 0
    for waiting, future in batch:
        if not future.done():  # done: the caller has gone (client disconnected)
            future.set_result(answers[start : start + len(waiting)])
        start += len(waiting)


def _fail(batch: Batch, error: BaseException) -> None:
    for _, future in batch:
        if future.done():
            continue
        if isinstance(error, Exception):
            future.set_exception(error)
        else:
            future.cancel()
