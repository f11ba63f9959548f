"""Load test of the HTTP service: `wrk` against `bentoml serve service:GameRec` on localhost.

It builds realistic `POST /recommend` bodies from the model's catalog, starts the service on a free
port, waits for /readyz, warms up, then runs wrk at 1, 8, 32 and 64 concurrent clients for a
fixed time each, prints a table and writes it to docs/serving.md. The server is always stopped.

    python benchmarks/serving.py                               # gamerec:latest, 30 s per level
    python benchmarks/serving.py --duration 10                 # quick run
    python benchmarks/serving.py --train-default --duration 15 # train on synthetic data first

Needs wrk (`apt-get install -y wrk`). wrk and the server share this machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPT = ROOT / "benchmarks" / "serving_wrk.lua"
DOC = ROOT / "docs" / "serving.md"
GAMEREC = Path(sys.executable).parent / "gamerec"
BENTOML = Path(sys.executable).parent / "bentoml"
CLIENTS = (1, 8, 32, 64)
START_MARK, END_MARK = "<!-- serving-benchmark:start -->", "<!-- serving-benchmark:end -->"
# Server log exceptions counted per level: short name -> the exception line's text.
LOG_EXCEPTIONS = {
    "process is overloaded": "ServiceUnavailable: process is overloaded",  # batching sheds load
    "closing transport": "ClientConnectionResetError: Cannot write to closing transport",
    "server disconnected": "ServerDisconnectedError: Server disconnected",
}


@dataclass
class Level:
    """One wrk run at a fixed number of concurrent clients."""

    clients: int
    threads: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int  # connect + read + write
    timeouts: int
    statuses: str  # non-2xx status counts, "500:3,503:1" or "-"
    sample_error: str
    server_log: dict[str, int]  # LOG_EXCEPTIONS found in the server log during the run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok_rps(self) -> float:
        """Responses per second that were 2xx."""
        return (self.requests - self.non2xx) / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors + self.timeouts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gamerec:latest", help="model tag in the store")
    parser.add_argument(
        "--bentoml-home",
        type=Path,
        default=os.environ.get("BENTOML_HOME"),
        help="model store (default: $BENTOML_HOME, else ~/bentoml)",
    )
    parser.add_argument(
        "--train-default",
        action="store_true",
        help="first train on the default synthetic data, in a fresh store in a temp dir",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temp dir: bodies, server log and (with --train-default) the store",
    )
    parser.add_argument("--duration", type=int, default=30, help="seconds per concurrency level")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=list(CLIENTS), help="concurrency levels"
    )
    parser.add_argument("--bodies", type=int, default=500, help="distinct request bodies")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request bodies")
    parser.add_argument("--timeout", type=int, default=10, help="wrk request timeout, seconds")
    parser.add_argument(
        "--ready-timeout", type=int, default=300, help="seconds to wait for /readyz"
    )
    parser.add_argument("--doc", type=Path, default=DOC, help="markdown file to write")
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    return parser.parse_args()


# --- the model --------------------------------------------------------------------------------


def train_default(workdir: Path, env: dict[str, str]) -> None:
    """`gamerec data synth` and `gamerec train` into the store env["BENTOML_HOME"]."""
    data_dir = workdir / "data"
    config = yaml.safe_load((ROOT / "configs" / "training.yaml").read_text())
    config["data"]["processed_dir"] = str(data_dir)
    config_path = workdir / "training.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    for command in (
        [str(GAMEREC), "data", "synth", "--out", str(data_dir)],
        [str(GAMEREC), "train", "--config", str(config_path), "--quiet"],
    ):
        print("$", " ".join(command), flush=True)
        subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=3600)


def load_catalog(tag: str) -> tuple[str, pd.DataFrame]:
    """The concrete model tag and its catalog. BENTOML_HOME must be set before this runs."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from training.store import load_model

    artifacts = load_model(tag)
    return artifacts.tag, artifacts.catalog


# --- request bodies ---------------------------------------------------------------------------


def make_bodies(catalog: pd.DataFrame, n: int, seed: int) -> list[dict]:
    """Players with 1-50 games drawn by popularity, log-normal minutes, some achievements."""
    rng = np.random.default_rng(seed)
    ids = catalog["game_id"].astype(str).to_numpy()
    genres = [list(g) for g in catalog["genres"]]
    weights = catalog["popularity"].to_numpy(np.float64) + 1.0  # unplayed games stay possible
    weights /= weights.sum()
    has_achievements = (
        catalog["has_achievements"].to_numpy(bool)
        if "has_achievements" in catalog
        else np.ones(len(ids), bool)
    )
    bodies = []
    for i in range(n):
        size = int(rng.integers(1, min(50, len(ids)) + 1))
        games = rng.choice(len(ids), size=size, replace=False, p=weights)
        minutes = rng.lognormal(mean=np.log(120.0), sigma=1.5, size=size)  # median 2 h
        achievements = {
            str(ids[g]): int(rng.poisson(1 + 3 * np.log1p(m / 60)))
            for g, m in zip(games, minutes, strict=True)
            if has_achievements[g] and rng.random() < 0.6
        }
        played_genres = sorted({genre for g in games for genre in genres[g]})
        preferred = (
            rng.choice(played_genres, size=min(len(played_genres), 3), replace=False).tolist()
            if played_genres and rng.random() < 0.6
            else []
        )
        bodies.append(
            {
                "user_id": f"bench_{i}",
                "time_played": {
                    str(ids[g]): round(float(m), 1) for g, m in zip(games, minutes, strict=True)
                },
                "genres": [str(g) for g in preferred[: int(rng.integers(1, 4))]],
                "achievements": achievements,
                "top_k": 10,
            }
        )
    return bodies


def write_bodies(bodies: list[dict], path: Path) -> None:
    """A Lua file returning the JSON bodies as long strings, for serving_wrk.lua."""
    lines = ["-- written by benchmarks/serving.py: request bodies for POST /recommend", "return {"]
    for body in bodies:
        text = json.dumps(body, separators=(",", ":"))
        assert "]==]" not in text, "a body would close the Lua long string"
        lines.append(f"[==[{text}]==],")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")


# --- the server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def serve(port: int, env: dict[str, str], log: Path, ready_timeout: int) -> Iterator[str]:
    """`bentoml serve service:GameRec` on localhost; yields its URL; stops its process group."""
    command = [str(BENTOML), "serve", "service:GameRec", "--host", "127.0.0.1", "--port", str(port)]
    print("$", " ".join(command), flush=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}):\n{log_tail(log)}")
            with contextlib.suppress(OSError):
                if http(f"{url}/readyz", timeout=2)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {ready_timeout} s:\n{log_tail(log)}")
            time.sleep(1)
        yield url
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if still there after 20 s."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # workers left behind by a crashed arbiter
        os.killpg(process.pid, signal.SIGKILL)
    print(f"server stopped (exit code {process.returncode})", flush=True)


# --- load -------------------------------------------------------------------------------------


def run_wrk(url: str, bodies: Path, clients: int, duration: int, timeout: int, log: Path) -> Level:
    threads = min(2, clients)
    command = [
        "wrk", f"-t{threads}", f"-c{clients}", f"-d{duration}s", f"--timeout={timeout}s",
        "--latency", "-s", str(WRK_SCRIPT), url, "--", str(bodies),
    ]  # fmt: skip
    log_start = log.stat().st_size
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + timeout + 60, check=True
    )
    result = re.search(r"^WRK_RESULT (.*)$", done.stdout, re.MULTILINE)
    if result is None:
        raise RuntimeError(f"no WRK_RESULT line from wrk:\n{done.stdout}\n{done.stderr}")
    values = dict(pair.split("=", 1) for pair in result.group(1).split())
    sample = re.search(r"^WRK_SAMPLE_ERROR (.*)$", done.stdout, re.MULTILINE)
    with log.open("rb") as server_log:
        server_log.seek(log_start)
        new_lines = server_log.read().decode(errors="replace").splitlines()
    return Level(
        clients=clients,
        threads=threads,
        requests=int(values["requests"]),
        seconds=int(values["duration_us"]) / 1e6,
        p50_ms=int(values["p50_us"]) / 1e3,
        p99_ms=int(values["p99_us"]) / 1e3,
        non2xx=int(values["non2xx"]),
        socket_errors=sum(int(values[k]) for k in ("connect", "read", "write")),
        timeouts=int(values["timeout"]),
        statuses=values["statuses"],
        sample_error=sample.group(1) if sample else "",
        server_log={
            name: sum(text in line for line in new_lines) for name, text in LOG_EXCEPTIONS.items()
        },
    )


def warm_up(url: str, bodies: list[dict], bodies_lua: Path, log: Path) -> None:
    """A few checked requests, then 5 s of load whose numbers are thrown away."""
    for body in bodies[:5]:
        status, text = http(f"{url}/recommend", body)
        if status != 200:
            raise RuntimeError(f"POST /recommend answered {status}: {text[:500]}")
    run_wrk(url, bodies_lua, clients=8, duration=5, timeout=10, log=log)


# --- report -----------------------------------------------------------------------------------


def machine_info(load_before: tuple[float, float, float]) -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": f"{cpu}, {len(os.sched_getaffinity(0))} cores available",
        "memory": f"{mem_kb / 2**20:.1f} GiB",
        "os": platform.platform(),
        "software": f"Python {platform.python_version()}, BentoML {version('bentoml')}, "
        f"{wrk[0].split(' [')[0] if wrk else 'wrk'}",
        "commit": f"{commit or 'unknown'} (plus any uncommitted changes)",
        "load average before the run": " ".join(f"{x:.2f}" for x in load_before),
    }


def service_settings() -> str:
    settings = yaml.safe_load((ROOT / "configs" / "service.yaml").read_text())
    batching = settings.get("batching", {})
    return (
        f"workers {settings.get('workers')}, torch_threads {settings.get('torch_threads')}, "
        f"faiss_threads {settings.get('faiss_threads')}, batching max_batch_size "
        f"{batching.get('max_batch_size')} / max_latency_ms {batching.get('max_latency_ms')}"
    )


def table(levels: list[Level]) -> str:
    rows = [
        "| clients | wrk threads | requests | rps | 2xx rps | p50 ms | p99 ms | errors |",
        "|--------:|------------:|---------:|----:|--------:|-------:|-------:|-------:|",
    ]
    for lv in levels:
        rows.append(
            f"| {lv.clients} | {lv.threads} | {lv.requests} | {lv.rps:.1f} | {lv.ok_rps:.1f} "
            f"| {lv.p50_ms:.1f} | {lv.p99_ms:.1f} | {lv.errors} |"
        )
    return "\n".join(rows)


def error_notes(levels: list[Level]) -> list[str]:
    notes = []
    for lv in levels:
        if lv.errors or any(lv.server_log.values()):
            logged = ", ".join(f"{name} {count}" for name, count in lv.server_log.items())
            notes.append(
                f"- {lv.clients} clients: non-2xx {lv.non2xx} (by status: {lv.statuses}), "
                f"socket errors {lv.socket_errors}, timeouts {lv.timeouts}; "
                f"server log exceptions: {logged}"
                + (f"; first error body: `{lv.sample_error[:200]}`" if lv.sample_error else "")
            )
    return notes


def report(
    levels: list[Level], info: dict[str, str], tag: str, catalog_size: int, args: argparse.Namespace
) -> str:
    lines = [
        f"Measured {datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by "
        f"`python benchmarks/serving.py {shlex.join(sys.argv[1:])}`.",
        "",
        f"- model: `{tag}`, catalog of {catalog_size} games",
        f"- service settings (configs/service.yaml): {service_settings()}",
        f"- load: wrk, {args.duration} s per level, {args.bodies} distinct bodies round-robin, "
        f"request timeout {args.timeout} s",
        *(f"- {key}: {value}" for key, value in info.items()),
        "",
        table(levels),
        "",
        "rps counts every response, 2xx rps only the successful ones; p50 and p99 are over every "
        "response, errors included. errors = non-2xx responses + socket errors (connect, read, "
        "write) + wrk timeouts.",
    ]
    notes = error_notes(levels)
    if notes:
        lines += ["", "Errors seen:", "", *notes]
    return "\n".join(lines)


DOC_HEADER = """# Serving benchmark

`benchmarks/serving.py` serves the model with `bentoml serve service:GameRec` on localhost and
drives `POST /recommend` with [wrk](https://github.com/wg/wrk) at 1, 8, 32 and 64 concurrent
clients (closed loop: each client sends its next request when the last one is answered). The
bodies are players with 1-50 games drawn from the model's catalog by popularity, log-normal play
minutes (median 2 h), achievements for about half the games that have them, 0-3 preferred
genres and `top_k` 10.

    python benchmarks/serving.py --duration 30
    python benchmarks/serving.py --train-default --duration 15   # fresh model, synthetic data

wrk runs on the same machine as the server and takes CPU from it, so on a small machine these
numbers are a lower bound of what the service does with the load generator elsewhere.

The section below is rewritten by each run.

"""


def write_doc(path: Path, section: str) -> None:
    """Replace the marked section of the doc, or create the doc."""
    block = f"{START_MARK}\n{section}\n{END_MARK}"
    text = path.read_text() if path.exists() else DOC_HEADER + "## Latest run\n\n" + START_MARK
    if START_MARK in text and END_MARK in text:
        before, rest = text.split(START_MARK, 1)
        text = before + block + rest.split(END_MARK, 1)[1]
    elif START_MARK in text:
        text = text.replace(START_MARK, block)
    else:
        text = text.rstrip() + "\n\n## Latest run\n\n" + block
    path.write_text(text.rstrip() + "\n")


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        print(
            "error: wrk is not installed; install it with "
            "`apt-get update && apt-get install -y wrk`",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM too
    started, load_before = time.monotonic(), os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="gamerec-serving-"))
    env = dict(os.environ)
    if args.train_default:
        env["BENTOML_HOME"] = str(workdir / "bentoml")
    elif args.bentoml_home:
        env["BENTOML_HOME"] = str(Path(args.bentoml_home).expanduser().resolve())
    finished = False
    try:
        if args.train_default:
            train_default(workdir, env)
        if "BENTOML_HOME" in env:
            os.environ["BENTOML_HOME"] = env["BENTOML_HOME"]  # before bentoml is imported
        tag, catalog = load_catalog(args.model)
        env["GAMEREC_MODEL_TAG"] = tag
        print(f"model {tag} (store {env.get('BENTOML_HOME', '~/bentoml')}), "
              f"{len(catalog)} games", flush=True)  # fmt: skip

        bodies = make_bodies(catalog, args.bodies, args.seed)
        bodies_lua = workdir / "bodies.lua"
        write_bodies(bodies, bodies_lua)
        sizes = [len(b["time_played"]) for b in bodies]
        print(f"{len(bodies)} bodies, {min(sizes)}-{max(sizes)} games each -> {bodies_lua}")

        log = workdir / "server.log"
        levels = []
        serve_started = time.monotonic()
        with serve(free_port(), env, log, args.ready_timeout) as url:
            startup = time.monotonic() - serve_started
            print(f"ready at {url} after {startup:.0f} s; warming up", flush=True)
            warm_up(url, bodies, bodies_lua, log)
            for clients in args.clients:
                time.sleep(2)  # let the last run's requests and log lines drain
                level = run_wrk(url, bodies_lua, clients, args.duration, args.timeout, log)
                levels.append(level)
                print(
                    f"{clients:>3} clients: {level.rps:8.1f} rps, p50 {level.p50_ms:7.1f} ms, "
                    f"p99 {level.p99_ms:7.1f} ms, errors {level.errors}",
                    flush=True,
                )

        section = report(levels, machine_info(load_before), tag, len(catalog), args)
        print("\n" + section + "\n")
        if not args.no_doc:
            write_doc(args.doc, section)
            print(f"wrote {args.doc}")
        print(f"total time {time.monotonic() - started:.0f} s")
        finished = True
        return 0
    finally:
        if args.keep or not finished:
            print(f"kept the run's files (server.log, bodies.lua, store if trained) in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
