"""Start real server processes for tests (`bentoml serve`, `streamlit run`), always stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BENTOML = str(Path(sys.executable).with_name("bentoml"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_process(
    command: list[str], health_url: str, env: dict[str, str], log: Path, timeout: float = 180
) -> Iterator[None]:
    """Run `command` in its own process group until the block ends; wait for `health_url`."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(health_url, process, log, timeout)
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def running_server(
    target: list[str], model_tag: str | None = None, timeout: float = 180
) -> Iterator[str]:
    """`bentoml serve TARGET` on a free port; yields its base URL once /readyz answers 200."""
    port = free_port()
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("GAMEREC_MODEL_TAG", None)  # without a tag, the service's own default serves
    if model_tag:
        env["GAMEREC_MODEL_TAG"] = model_tag
    log = Path(tempfile.mkdtemp(prefix="bentoml-serve-")) / "server.log"
    command = [BENTOML, "serve", *target, "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with running_process(command, f"{url}/readyz", env, log, timeout):
        yield url


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not healthy after {timeout} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
