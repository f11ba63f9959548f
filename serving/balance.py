"""What the entry workers of one server share: counts that each worker publishes and every
worker reads (`WorkerCounts`), for a server-wide admission limit (fix 9 of
serving/bentoml_fixes.py, `Admission` in serving/guard.py) and for keep-alive connections
spread evenly over the workers (fix 10, `ConnectionShare`).

The entry workers of one `bentoml serve` accept from one shared socket, and a worker that wakes
first accepts every connection waiting: 8 clients that connect at once often all land on one
worker of two, which then serves them alone for as long as they keep their connections (8
clients measured 370 rps against 560 rps split 4/4, docs/performance.md). So each worker
compares its open connections with its share of the server's, and a worker over its share
answers one request with `Connection: close`; the client connects again, and the next accept
mostly goes to a worker that is idle in its event loop, not to the busy one. The same uneven
spread is why admission counts the server's requests in flight, not one worker's: a limit per
worker refuses clients of the busier worker while the other has room (docs/overload.md).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import shutil
import time
from pathlib import Path

from serving.reload import server_file

PREFIX = "gamerec-workers"  # the directory of a server's counts: PREFIX-<its pid>
IN_FLIGHT, CONNECTIONS = 0, 1  # the fields of a worker's counts
FIELDS = 2
_SIZE = 8 * FIELDS  # int64 each
# How stale the list of workers may be: a killed worker's requests count this long at most
# (at 1 s, 64 clients that retry at once got 25,803 503s around a kill; docs/overload.md).
RESCAN_S = 0.25


class WorkerCounts:
    """Counts this worker publishes, and the sums of the same counts of the server's other
    workers. Each worker maps a small file of its own (named by its pid, in a directory named
    after the server) into memory, and maps the others' read-only: a publish or a read is a
    memory access, no system call, so the admission of every request can read the server's
    count. The directory is listed again at most every `rescan_s`; the file of a worker whose
    process is gone is dropped then and removed. (No atexit removes it: uvicorn re-raises the
    SIGTERM it stopped on, and a killed worker runs nothing.)"""

    def __init__(self, directory: Path, pid: int, rescan_s: float = RESCAN_S) -> None:
        self.directory, self.pid, self.rescan_s = directory, pid, rescan_s
        self.path = directory / str(pid)
        partial = directory / f".{pid}.tmp"
        partial.write_bytes(bytes(_SIZE))
        partial.replace(self.path)  # whole: a reader never maps a short file
        self._mine = _mapped(self.path, writable=True)
        self._peers: dict[int, memoryview] = {}
        self._scanned_at = -math.inf

    @classmethod
    def of_this_worker(cls) -> WorkerCounts:
        """In a worker: the counts of the `bentoml serve` process that started it."""
        directory = server_file(PREFIX)
        _remove_those_of_dead_servers(directory.parent)
        directory.mkdir(exist_ok=True)
        return cls(directory, os.getpid())

    def publish(self, field: int, value: int) -> None:
        self._mine[field] = value

    def others(self, field: int) -> int:
        """The sum of `field` over the server's other live workers."""
        if time.monotonic() - self._scanned_at >= self.rescan_s:
            self._rescan()
        return sum(view[field] for view in self._peers.values())

    def _rescan(self) -> None:
        self._scanned_at = time.monotonic()
        for pid in [pid for pid in self._peers if not _alive(pid)]:
            self._peers.pop(pid).release()
            with contextlib.suppress(OSError):
                (self.directory / str(pid)).unlink()
        for path in self.directory.iterdir():
            if not path.name.isdigit() or int(path.name) in (self.pid, *self._peers):
                continue
            pid = int(path.name)
            if not _alive(pid):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            with contextlib.suppress(OSError, ValueError):  # gone meanwhile, or not ours
                self._peers[pid] = _mapped(path, writable=False)


def _mapped(path: Path, writable: bool) -> memoryview:
    """The counts in `path` as int64s, shared with every process that maps the file."""
    with path.open("r+b" if writable else "rb") as file:  # the mapping outlives the file
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        return memoryview(mmap.mmap(file.fileno(), _SIZE, access=access)).cast("q")


def _remove_those_of_dead_servers(parent: Path) -> None:
    """The directories of servers gone (their workers stop by signal, leaving their files)."""
    for directory in parent.glob(f"{PREFIX}-*"):
        server_pid = directory.name.removeprefix(f"{PREFIX}-")
        if server_pid.isdigit() and not _alive(int(server_pid)):
            shutil.rmtree(directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether `pid` runs: not gone, and not a zombie (a killed worker stays one until the
    arbiter reaps it, which took seconds under load: its count held the server's slots)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: whether a process of that pid exists at all
        return _exists(pid)
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")  # after "pid (name)"


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True


class ConnectionShare:
    """This worker's open connections against its share of those of all `workers`."""

    def __init__(self, counts: WorkerCounts, workers: int, interval_s: float) -> None:
        self.counts, self.workers, self.interval_s = counts, workers, interval_s
        self._refreshed_at = -math.inf
        self._excess = 0

    def connections_changed(self, mine: int) -> None:
        self.counts.publish(CONNECTIONS, mine)

    def should_close(self, mine: int) -> bool:
        """Whether to close one of this worker's `mine` connections after its response: once
        an interval at most, while it holds more than its share."""
        now = time.monotonic()
        if now - self._refreshed_at >= self.interval_s:
            self._refreshed_at = now
            total = mine + self.counts.others(CONNECTIONS)
            # One close an interval at most: under overload a burst of reconnections waits in
            # the busy workers' accept queues, and clients time out (1,360 of 1,024 clients at
            # once in 20 s, against none without; docs/performance.md, round 6).
            self._excess = min(1, mine - math.ceil(total / self.workers))
        if self._excess <= 0:
            return False
        self._excess -= 1
        return True
