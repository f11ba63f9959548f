"""The entry service's coalescing of Embedder calls (serving/coalesce.py)."""

from __future__ import annotations

import asyncio

import pytest

from serving.coalesce import Coalescer


class Recorder:
    """A stand-in for the hop: answers each query with its double, one call at a time slowly
    enough that callers pile up, and records the calls it got."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on = fail_on

    async def __call__(self, queries: list[int]) -> list[int]:
        self.calls.append(queries)
        await asyncio.sleep(0.01)
        if self.fail_on in queries:
            raise ConnectionError(f"query {self.fail_on} broke the call")
        return [2 * q for q in queries]


def run(coroutine):
    return asyncio.run(coroutine)


def test_each_caller_gets_its_own_answers_in_order() -> None:
    recorder = Recorder()

    async def main() -> list[list[int]]:
        coalescer = Coalescer(recorder, max_batch=64, max_in_flight=1)
        return await asyncio.gather(*(coalescer([i, 100 + i]) for i in range(20)))

    assert run(main()) == [[2 * i, 200 + 2 * i] for i in range(20)]
    # The 20 callers arrive in the same turn of the event loop: one call takes them all.
    assert [len(c) for c in recorder.calls] == [40]


def test_callers_that_arrive_while_a_call_is_out_go_in_the_next() -> None:
    recorder = Recorder()

    async def main() -> list[list[int]]:
        coalescer = Coalescer(recorder, max_batch=64, max_in_flight=1)
        first = asyncio.ensure_future(coalescer([0]))
        await asyncio.sleep(0.005)  # the first call is out
        later = [asyncio.ensure_future(coalescer([i])) for i in range(1, 20)]
        return await asyncio.gather(first, *later)

    assert run(main()) == [[2 * i] for i in range(20)]
    # The 19 that arrived while the first call was out go in two calls of at most half of the
    # 20 queries in play: 10 callers, then the other 9.
    assert [len(c) for c in recorder.calls] == [1, 10, 9]


class Gate:
    """A stand-in for the hop whose calls come back only when the test opens them."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], asyncio.Event]] = []
        self.woken_at_call: list[int] = []  # callers already woken when each call started
        self.woken = 0

    async def __call__(self, queries: list[int]) -> list[int]:
        opened = asyncio.Event()
        self.calls.append((queries, opened))
        self.woken_at_call.append(self.woken)
        await opened.wait()
        return queries

    async def open_call(self, number: int) -> None:
        self.calls[number][1].set()
        for _ in range(10):  # let the answered callers and the next call run
            await asyncio.sleep(0)


def test_groups_stay_even_and_the_next_call_leaves_first() -> None:
    """32 callers: one alone, then 31 that arrived while it was out. The 31 do not go in one
    call (which would leave the next straggler alone again): 16, then 15."""
    gate = Gate()

    async def caller(coalescer: Coalescer, query: int) -> None:
        await coalescer([query])
        gate.woken += 1

    async def main() -> None:
        coalescer = Coalescer(gate, max_batch=64, max_in_flight=1)
        callers = [asyncio.ensure_future(caller(coalescer, 0))]
        await asyncio.sleep(0)
        callers += [asyncio.ensure_future(caller(coalescer, q)) for q in range(1, 32)]
        await asyncio.sleep(0)
        for number in range(3):
            await gate.open_call(number)
        await asyncio.gather(*callers)

    run(main())
    assert [len(queries) for queries, _ in gate.calls] == [1, 16, 15]
    # Each call left before the callers of the call answered just before it were woken.
    assert gate.woken_at_call == [0, 0, 1]


def test_one_caller_is_sent_at_once() -> None:
    recorder = Recorder()

    async def main() -> None:
        coalescer = Coalescer(recorder, max_batch=64, max_in_flight=1)
        for i in range(3):
            assert await asyncio.wait_for(coalescer([i]), timeout=1) == [2 * i]

    run(main())
    assert recorder.calls == [[0], [1], [2]]


def test_calls_respect_max_batch_and_max_in_flight() -> None:
    recorder = Recorder()
    in_flight, most = 0, 0

    async def counted(queries: list[int]) -> list[int]:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            return await recorder(queries)
        finally:
            in_flight -= 1

    async def main() -> list[list[int]]:
        coalescer = Coalescer(counted, max_batch=5, max_in_flight=2)
        sizes = [1, 2, 3, 7, 1, 1, 4, 2]  # 7 is over max_batch: it goes alone, whole
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return await asyncio.gather(
            *(coalescer(list(range(s, s + n))) for s, n in zip(starts, sizes, strict=True))
        )

    answers = run(main())
    assert [len(a) for a in answers] == [1, 2, 3, 7, 1, 1, 4, 2]
    assert [q for a in answers for q in a] == [2 * q for q in range(21)]
    assert most == 2
    assert [len(c) for c in recorder.calls if len(c) > 5] == [7]
    assert len(recorder.calls) < len(answers)  # callers were coalesced


def test_a_failed_call_fails_its_callers_only() -> None:
    recorder = Recorder(fail_on=5)

    async def main() -> list[object]:
        coalescer = Coalescer(recorder, max_batch=2, max_in_flight=1)
        return await asyncio.gather(*(coalescer([i]) for i in range(8)), return_exceptions=True)

    results = run(main())
    # Calls: [0, 1], [2, 3], [4, 5], [6, 7]: the call with query 5 fails, for 4 and 5 alone.
    assert recorder.calls == [[0, 1], [2, 3], [4, 5], [6, 7]]
    for i, result in enumerate(results):
        if i in (4, 5):
            assert isinstance(result, ConnectionError)
        else:
            assert result == [2 * i]


def test_a_caller_that_goes_away_does_not_break_the_others() -> None:
    recorder = Recorder()

    async def main() -> list[int]:
        coalescer = Coalescer(recorder, max_batch=64, max_in_flight=1)
        first = asyncio.ensure_future(coalescer([1]))
        leaving = asyncio.ensure_future(coalescer([2]))
        staying = asyncio.ensure_future(coalescer([3]))
        await asyncio.sleep(0)
        leaving.cancel()  # a client disconnected while its query waited
        await first
        return await staying

    assert run(main()) == [6]
    assert recorder.calls == [[1, 3]]  # the query of the caller that left is not sent


def test_a_short_answer_is_an_error_not_a_misalignment() -> None:
    async def short(queries: list[int]) -> list[int]:
        return queries[:-1]

    async def main() -> None:
        await Coalescer(short, max_batch=8, max_in_flight=1)([1, 2])

    with pytest.raises(RuntimeError, match="1 answers to 2 queries"):
        run(main())


def test_a_caller_alone_is_called_at_once_and_others_wait_for_it() -> None:
    recorder = Recorder()
    alone = True

    async def main() -> list[list[int]]:
        coalescer = Coalescer(recorder, max_batch=64, max_in_flight=1, alone=lambda: alone)
        first = asyncio.ensure_future(coalescer([0]))
        await asyncio.sleep(0)
        assert recorder.calls == [[0]]  # called in the caller's own turn: no task, no wait
        later = [asyncio.ensure_future(coalescer([i])) for i in (1, 2)]  # while it is out
        return await asyncio.gather(first, *later)

    assert run(main()) == [[0], [2], [4]]
    assert recorder.calls == [[0], [1, 2]]  # max_in_flight held: the two went together after


def test_a_caller_not_alone_waits_for_its_turn() -> None:
    recorder = Recorder()

    async def main() -> None:
        coalescer = Coalescer(recorder, max_batch=64, max_in_flight=1, alone=lambda: False)
        first = asyncio.ensure_future(coalescer([0]))
        await asyncio.sleep(0)
        assert recorder.calls == []  # due in the next turn, with whoever arrives in this one
        await first

    run(main())
    assert recorder.calls == [[0]]
