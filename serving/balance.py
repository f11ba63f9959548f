"""Keep-alive connections spread evenly over a server's entry workers (fix 10 of
serving/bentoml_fixes.py).

The entry workers of one `bentoml serve` accept from one shared socket, and a worker that wakes
first accepts every connection waiting: 8 clients that connect at once often all land on one
worker of two, which then serves them alone for as long as they keep their connections (8
clients measured 370 rps against 560 rps split 4/4, docs/performance.md). So each worker
compares its open connections with its share of the server's, and a worker over its share
answers one request with `Connection: close`; the client connects again, and the next accept
mostly goes to a worker that is idle in its event loop, not to the busy one.

The counts travel through small files that the workers of one server share (named after the
`bentoml serve` process, their parent), refreshed at most every `interval_s` by the requests
themselves: an idle worker writes nothing, and a count older than a few intervals (a worker that
went idle or died) counts as none.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import time
from pathlib import Path

from serving.reload import server_file, write_whole

STALE_INTERVALS = 4  # a worker's count older than this many intervals is not counted


class ConnectionShare:
    """This worker's open connections against its share of those of all `workers`."""

    def __init__(self, directory: Path, workers: int, interval_s: float, pid: int) -> None:
        self.directory, self.workers, self.interval_s = directory, workers, interval_s
        self.path = directory / str(pid)
        self._refreshed_at = -math.inf
        self._excess = 0

    @classmethod
    def of_this_worker(cls, workers: int, interval_s: float) -> ConnectionShare:
        """In a worker: the files of the `bentoml serve` process that started it."""
        directory = server_file("gamerec-connections")
        directory.mkdir(exist_ok=True)
        share = cls(directory, workers, interval_s, os.getpid())
        atexit.register(share.path.unlink, missing_ok=True)
        return share

    def should_close(self, mine: int) -> bool:
        """Whether to close one of this worker's `mine` connections after its response: once
        an interval at most, while it holds more than its share."""
        now = time.monotonic()
        if now - self._refreshed_at >= self.interval_s:
            self._refresh(mine, now)
        if self._excess <= 0:
            return False
        self._excess -= 1
        return True

    def _refresh(self, mine: int, now: float) -> None:
        self._refreshed_at = now
        write_whole(self.path, str(mine))
        total = mine + sum(self._others_counts())
        # One close an interval at most: under overload a burst of reconnections waits in
        # the busy workers' accept queues, and clients time out (1,360 of 1,024 clients at
        # once in 20 s, against none without; docs/performance.md, round 6).
        self._excess = min(1, mine - math.ceil(total / self.workers))

    def _others_counts(self) -> list[int]:
        fresh_after = time.time() - STALE_INTERVALS * self.interval_s
        counts = []
        for path in self.directory.iterdir():
            if path == self.path or path.name.startswith("."):
                continue
            with contextlib.suppress(OSError, ValueError):  # a worker gone meanwhile
                if path.stat().st_mtime >= fresh_after:
                    counts.append(int(path.read_text()))
        return counts
