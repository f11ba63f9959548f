"""The clients of benchmarks/overload.py, each run as a process of its own (uvloop):

    python -m benchmarks.overload_clients load URL BODIES.json --clients 1024 --duration 30
    python -m benchmarks.overload_clients slow URL --clients 1000 --duration 60

`load`: closed-loop clients like wrk's (one keep-alive connection each, the next request as
soon as the answer is in, no back-off after a 503), which also time every answer by its status
(wrk times them all together: the served requests and the 503s need their own percentiles).
A request unanswered within --timeout counts as a timeout; its connection is dropped. With
--honor-retry-after, a client waits out a 503's Retry-After (0.5-1.5 times it, at random)
before its next request, as a well-behaved client does.

`slow`: connections that hold a worker as a slow client would, half trickling their headers,
half their body (whole headers, then a body a byte at a time), one byte per --interval
seconds; a connection the server cuts off is opened again, so that --clients stay open.

Each prints one JSON line: what it counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import time
from collections import Counter, defaultdict
from urllib.parse import urlsplit

import numpy as np
import uvloop

# --- load -------------------------------------------------------------------------------------


class Tally:
    """Latencies by status, timeouts and connection errors."""

    def __init__(self) -> None:
        self.latencies: dict[int, list[float]] = defaultdict(list)
        self.timeouts = 0
        self.errors: Counter[str] = Counter()

    def summary(self, seconds: float) -> dict:
        def percentiles(values: list[float]) -> dict:
            if not values:
                return {"count": 0}
            ms = np.asarray(values) * 1e3
            return {"count": len(values), "p50_ms": float(np.percentile(ms, 50)),
                    "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}  # fmt: skip

        return {
            "seconds": seconds,
            "by_status": {str(s): percentiles(v) for s, v in sorted(self.latencies.items())},
            "timeouts": self.timeouts,
            "errors": dict(self.errors),
        }


def http_requests(url: str, bodies: list[dict]) -> list[bytes]:
    """Each body as a whole `POST /recommend` request on a keep-alive connection."""
    host = urlsplit(url).netloc
    requests = []
    for body in bodies:
        data = json.dumps(body, separators=(",", ":")).encode()
        head = (f"POST /recommend HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
                f"\r\nContent-Length: {len(data)}\r\n\r\n")  # fmt: skip
        requests.append(head.encode() + data)
    return requests


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and the (lower-cased) header fields of the next response, its body read."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    await reader.readexactly(int(fields.get("content-length", "0")))
    return status, fields


async def closed_loop_client(
    address: tuple[str, int], requests: itertools.cycle, until: float, timeout: float,
    tally: Tally, honor_retry_after: bool,
) -> None:  # fmt: skip
    while time.monotonic() < until:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(*address)
        except (OSError, TimeoutError) as err:
            tally.errors[f"connect: {type(err).__name__}"] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            await _requests_on(reader, writer, requests, until, timeout, tally, honor_retry_after)
        finally:
            writer.close()


async def _requests_on(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: itertools.cycle,
    until: float, timeout: float, tally: Tally, honor_retry_after: bool,
) -> None:  # fmt: skip
    """Requests one after the other on one connection, until it closes or time is up."""
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                writer.write(next(requests))
                status, fields = await read_response(reader)
        except TimeoutError:
            tally.timeouts += 1
            return
        except (OSError, asyncio.IncompleteReadError, ValueError) as err:
            tally.errors[f"read: {type(err).__name__}"] += 1
            return
        tally.latencies[status].append(time.perf_counter() - started)
        if fields.get("connection") == "close":
            return
        if honor_retry_after and "retry-after" in fields:
            await asyncio.sleep(float(fields["retry-after"]) * random.uniform(0.5, 1.5))


async def load(
    url: str, bodies: list[dict], clients: int, duration: float, timeout: float,
    honor_retry_after: bool,
) -> dict:  # fmt: skip
    parts = urlsplit(url)
    address = (parts.hostname, parts.port)
    requests = itertools.cycle(http_requests(url, bodies))
    tally, started = Tally(), time.monotonic()
    until = started + duration
    lags: list[float] = []
    await asyncio.gather(
        *(
            closed_loop_client(address, requests, until, timeout, tally, honor_retry_after)
            for _ in range(clients)
        ),
        loop_lag(until, lags),
    )  # fmt: skip
    # A request still out at the end is not counted: the clients stop at `until` + a timeout.
    lag_ms = np.asarray(lags) * 1e3
    lag = {"p50": float(np.percentile(lag_ms, 50)), "p99": float(np.percentile(lag_ms, 99))}
    return {**tally.summary(duration), "loop_lag_ms": lag}


LAG_PROBE_S = 0.01


async def loop_lag(until: float, lags: list[float]) -> None:
    """How late this process's own event loop wakes a 10 ms sleep: the part of every latency
    these clients measure that is their own (a process of 1,024 busy clients is late)."""
    while time.monotonic() < until:
        started = time.perf_counter()
        await asyncio.sleep(LAG_PROBE_S)
        lags.append(time.perf_counter() - started - LAG_PROBE_S)


# --- slow clients -----------------------------------------------------------------------------

SLOW_HEAD = b"POST /recommend HTTP/1.1\r\nHost: slow\r\n"
SLOW_BODY_HEAD = SLOW_HEAD + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"


class SlowTally:
    def __init__(self) -> None:
        self.held_s: dict[str, list[float]] = defaultdict(list)  # cut off after, by kind
        self.answers: Counter[str] = Counter()  # "headers 408", "body closed", ...
        self.connect_errors = 0
        self.open = 0

    def summary(self) -> dict:
        return {
            "cut_off": {k: len(v) for k, v in self.held_s.items()},
            "held_s_median": {k: float(np.median(v)) for k, v in self.held_s.items() if v},
            "held_s_max": {k: float(max(v)) for k, v in self.held_s.items() if v},
            "answers": dict(self.answers),
            "connect_errors": self.connect_errors,
            "open_at_end": self.open,
        }


async def slow_client(
    address: tuple[str, int], kind: str, until: float, interval: float, tally: SlowTally
) -> None:
    """One connection at a time trickling its `kind` ("headers" or "body"), opened again
    when the server cuts it off."""
    first = SLOW_HEAD if kind == "headers" else SLOW_BODY_HEAD
    trickle = b"X" if kind == "headers" else b" "
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(*address)
        except OSError:
            tally.connect_errors += 1
            await asyncio.sleep(0.5)
            continue
        tally.open += 1
        opened = time.monotonic()
        try:
            answer = await _trickle(reader, writer, first, trickle, until, interval)
        finally:
            tally.open -= 1
            writer.close()
        if answer is not None:
            tally.held_s[kind].append(time.monotonic() - opened)
            tally.answers[f"{kind} {answer}"] += 1


async def _trickle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes, trickle: bytes,
    until: float, interval: float,
) -> str | None:  # fmt: skip
    """Send `first`, then `trickle` every `interval` s until the server answers or closes:
    what it did ("408", "closed", ...), or None if the connection was still open at `until`."""
    writer.write(first)
    while time.monotonic() < until:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                data = await reader.read(4096)
                if not data:
                    return "closed"
                return data.split(b" ", 2)[1].decode(errors="replace")  # the status
        with contextlib.suppress(OSError):
            writer.write(trickle)
        if writer.is_closing():
            return "closed"
    return None


async def slow(url: str, clients: int, duration: float, interval: float) -> dict:
    parts = urlsplit(url)
    address = (parts.hostname, parts.port)
    tally, until = SlowTally(), time.monotonic() + duration
    kinds = ["headers", "body"] * (clients // 2) + ["headers"] * (clients % 2)
    tasks = []
    for kind in kinds:  # opened over ~1 s, not in one burst
        tasks.append(asyncio.create_task(slow_client(address, kind, until, interval, tally)))
        await asyncio.sleep(1 / clients)
    await asyncio.sleep(max(0.0, until - time.monotonic() - 0.5))
    summary = tally.summary()
    summary["open_near_end"] = tally.open
    await asyncio.gather(*tasks)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["load", "slow"])
    parser.add_argument("url")
    parser.add_argument("bodies", nargs="?", help="load: a JSON file, a list of request bodies")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--timeout", type=float, default=5.0, help="load: seconds per request")
    parser.add_argument("--interval", type=float, default=1.0, help="slow: seconds per byte")
    parser.add_argument("--honor-retry-after", action="store_true", help="load: back off")
    args = parser.parse_args()
    if args.mode == "load":
        with open(args.bodies) as file:
            bodies = json.load(file)
        run = load(args.url, bodies, args.clients, args.duration, args.timeout,
                   args.honor_retry_after)  # fmt: skip
    else:
        run = slow(args.url, args.clients, args.duration, args.interval)
    print(json.dumps(uvloop.run(run)), flush=True)


if __name__ == "__main__":
    main()
