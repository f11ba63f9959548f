"""Start, wait for and stop real server processes (`bentoml serve`, `streamlit run`, the peer):
the one helper of the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BENTOML = str(Path(sys.executable).with_name("bentoml"))


def service_config(directory: Path, **settings: object) -> dict[str, str]:
    """The environment of a server that reads `configs/service.yaml` with these top-level
    settings changed (e.g. `placement="embedder"`, `workers=2`), written to `directory`."""
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "service.yaml").read_text())
    unknown = set(settings) - set(raw)
    if unknown:
        raise KeyError(f"not settings of configs/service.yaml: {sorted(unknown)}")
    path = directory / "service.yaml"
    path.write_text(yaml.safe_dump({**raw, **settings}))
    return {"GAMEREC_SERVICE_CONFIG": str(path)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_process(
    command: list[str], health_url: str, env: dict[str, str], log: Path, timeout: float = 180
) -> Iterator[subprocess.Popen]:
    """Run `command` in its own process group until the block ends; yields the process once
    `health_url` answers 200. Its output goes to `log`, whose tail an error quotes."""
    process = _start(command, env, log)
    try:
        _wait_healthy(health_url, process, log, timeout)
        yield process
    finally:
        stop(process)


@dataclass(frozen=True)
class Server:
    url: str
    pid: int  # of `bentoml serve`; its workers are descendants

    def worker_pid(self, service: str) -> int:
        """The process of one of the served BentoML services, e.g. "Embedder"."""
        pids = worker_pids(self.pid, service)
        if not pids:
            raise LookupError(f"no {service} worker under process {self.pid}")
        return pids[0]


def worker_pids(server_pid: int, service: str) -> list[int]:
    """The worker processes of one BentoML service (e.g. "GameRec") under `bentoml serve`."""
    pids = []
    for child in psutil.Process(server_pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            command = child.cmdline()
            if "--service-name" in command and service in command:
                pids.append(child.pid)
    return pids


@contextlib.contextmanager
def running_server(
    target: list[str], env: dict[str, str] | None = None, timeout: float = 180
) -> Iterator[Server]:
    """`bentoml serve TARGET` on a free port, until the block ends; yields it once /readyz
    answers 200.

    `env`: variables on top of this process's environment, which the server inherits except
    `GAMEREC_MODEL_TAG` (without one, the service's own default serves). The server gets a
    BentoML home of its own over the same model store.
    """
    port = free_port()
    base = {k: v for k, v in os.environ.items() if k != "GAMEREC_MODEL_TAG"}
    workdir = Path(tempfile.mkdtemp(prefix="bentoml-serve-"))
    log = workdir / "server.log"
    command = [BENTOML, "serve", *target, "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    home = home_of_its_own(Path(base["BENTOML_HOME"]), workdir / "bentoml")
    environment = {**base, "BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": home, **(env or {})}
    with running_process(command, f"{url}/readyz", environment, log, timeout) as process:
        yield Server(url, process.pid)


@dataclass(frozen=True)
class Answer:
    started: float  # time.monotonic()
    ended: float
    status: int  # 0: no answer (a transport error)
    error: str  # the start of the body or the error; "" for a 200


class Load:
    """`clients` threads POSTing `body` to /recommend in a loop on keep-alive connections, and
    with `probe_readiness` one more polling /readyz: every answer, with its times."""

    def __init__(self, url: str, body: dict, clients: int, probe_readiness: bool = False) -> None:
        self.url, self.body, self.stop = url, body, threading.Event()
        self.answers: list[Answer] = []
        self.readiness: list[tuple[float, int]] = []  # (time, status; 0 for no answer)
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]
        if probe_readiness:
            self.threads.append(threading.Thread(target=self._prober))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post("/recommend", json=self.body)
                    status, error = response.status_code, response.text[:200]
                except httpx.HTTPError as err:
                    status, error = 0, repr(err)
                error = "" if status == 200 else error
                self.answers.append(Answer(started, time.monotonic(), status, error))

    def _prober(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    status = client.get("/readyz").status_code
                except httpx.HTTPError:
                    status = 0
                self.readiness.append((time.monotonic(), status))
                time.sleep(0.1)


def run_until_exit(command: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run `command` (one expected to stop by itself) to its end: exit code and output."""
    log = Path(tempfile.mkdtemp(prefix="gamerec-run-")) / "output.log"
    process = _start(command, env, log)
    try:
        code = process.wait(timeout=timeout)
    finally:
        stop(process)
    return code, log.read_text(errors="replace")


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`command` from the project root in a process group of its own, its output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def home_of_its_own(store: Path, home: Path) -> str:
    """A BentoML home that shares the models and Bentos of `store`: `bentoml serve` empties its
    home's Prometheus directory at start, which would wipe the metrics of another server
    running from the same home."""
    home.mkdir(parents=True)
    for shared in ("models", "bentos"):
        (store / shared).mkdir(parents=True, exist_ok=True)
        (home / shared).symlink_to(store / shared)
    return str(home)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it if still there after 20 s."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # workers left behind by a crashed parent
        os.killpg(process.pid, signal.SIGKILL)


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (BentoML's workers start sessions
    of their own, so the process group would miss them)."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += process.memory_info().rss
    return total / 2**20


def log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args[0]} exited with {process.returncode}:\n{log_tail(log)}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} not healthy after {timeout} s:\n{log_tail(log)}")
