"""A reload reaches every entry worker of a server.

The worker that receives `POST /admin/reload` loads and checks the model, switches to it and
writes its tag to a small file that the workers of the same `bentoml serve` share (named after
that process, their parent); every entry worker reads the file every `reload.poll_interval_s`
and switches to a tag it does not serve yet. The file is the one source of truth: two reloads at
once on two workers end with every worker on the tag written last.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

logger = logging.getLogger(__name__)


def server_file(prefix: str, server_pid: int | None = None) -> Path:
    """A path that the processes of one `bentoml serve` share: named after that process, the
    parent of every worker (by default this worker's)."""
    return Path(tempfile.gettempdir()) / f"{prefix}-{server_pid or os.getppid()}"


def write_whole(path: Path, text: str) -> None:
    """Atomically: a reader sees the old text or the new one, never part of it. No fsync: the
    files of a running server only, read again within a second."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    partial.replace(path)


class WantedModel:
    """The tag the last reload asked for, in a file of one server's processes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of_server(cls, server_pid: int) -> WantedModel:
        return cls(server_file("gamerec-wanted-model", server_pid))

    @classmethod
    def of_this_worker(cls) -> WantedModel:
        """In a worker: the file of the `bentoml serve` process that started it."""
        return cls.of_server(os.getppid())

    def read(self) -> str | None:
        try:
            return self.path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def write(self, tag: str) -> None:
        write_whole(self.path, tag)

    def forget(self) -> None:
        """At a server's start: a file left by an earlier server of the same process id."""
        self.path.unlink(missing_ok=True)


async def follow(
    wanted: WantedModel,
    serving: Callable[[], str],
    switch: Callable[[str], Awaitable[object]],
    interval_s: float,
) -> None:
    """Forever: every `interval_s`, `switch` to the wanted tag when `serving()` differs. A tag
    that fails to load is logged once and not retried until another tag is wanted."""
    refused: str | None = None
    while True:
        await asyncio.sleep(interval_s)
        tag = wanted.read()
        if tag is None or tag == serving() or tag == refused:
            continue
        try:
            await switch(tag)
        except Exception:
            logger.exception("could not switch to the reloaded model %s", tag)
            refused = tag
