"""Load test of the HTTP service against its peer, side by side: `wrk` against
`bentoml serve service:GameRec` and against the FastAPI design it replaced
(`benchmarks/peer_fastapi.py`, per-request inference), both loading the same stored model.

For each catalog it builds realistic `POST /recommend` bodies from the model's catalog, starts
both servers on free ports, waits for /readyz, warms them up, and runs wrk at 1, 8, 32 and 64
concurrent clients for a fixed time each, against one server and then the other (the order
alternates per level; an idle server takes no CPU), so that the machine's drift hits both
alike; then prints rps, p50, p99 and errors side by side with the ratio ours/peer, and writes
the tables to docs/performance.md and a plot of rps and p99 against clients to
docs/serving.png. A soak run (64 clients, minutes) reports errors and the growth of the
service's resident memory. `--placement` (repeatable) measures the service with the runner
placed so (`placement` in configs/service.yaml), each placement a server of its own in the same
run; the peer gets as many worker processes as the largest of them.

    python -m benchmarks.serving --catalog default --catalog 100k   # train both, 30 s per level
    python -m benchmarks.serving --model gamerec:latest --duration 10   # an existing model
    python -m benchmarks.serving --model gamerec:latest --placement embedder --placement in_process
    python -m benchmarks.serving --catalog default --soak 300 --clients 64

Needs wrk (`apt-get install -y wrk`). wrk and the servers share this machine's cores.
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
import subprocess
import sys
import tempfile
import threading
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

from serving.settings import load_service_settings
from tests.servers import free_port, running_process, service_config, tree_rss_mib

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPT = ROOT / "benchmarks" / "serving_wrk.lua"
DOC = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "serving.png"
GAMEREC = Path(sys.executable).parent / "gamerec"
BENTOML = Path(sys.executable).parent / "bentoml"
CLIENTS = (1, 8, 32, 64)
# Synthetic catalogs to train on: name -> (users, games, training overrides).
CATALOGS = {
    "default": (20_000, 5_000, {}),
    # Steam-store scale: the sampled-softmax regime; a few epochs, the benchmark is about serving.
    "100k": (30_000, 100_000, {"train.epochs": 2, "train.patience": 2}),
}
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
    def errors(self) -> int:
        return self.non2xx + self.socket_errors + self.timeouts


@dataclass
class Target:
    """A server to measure: its command line and environment, its port and where its log goes."""

    name: str
    command: list[str]
    port: int
    log: Path
    env: dict[str, str]


@dataclass(frozen=True)
class Layout:
    """How a service configuration serves a model: where the runner runs, how many entry
    workers, and the environment that selects the configuration."""

    requested: str  # the `placement` setting: auto, embedder or in_process
    placement: str  # what it resolved to for this model
    workers: int
    env: dict[str, str]

    @property
    def processes(self) -> int:
        return self.workers + (self.placement == "embedder")

    @property
    def name(self) -> str:
        chosen = f"auto: {self.placement}" if self.requested == "auto" else self.placement
        runner = " + 1 Embedder" if self.placement == "embedder" else ""
        workers = f"{self.workers} worker{'s' if self.workers > 1 else ''}"
        return f"GameRec {chosen} ({workers}{runner})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--catalog",
        action="append",
        choices=sorted(CATALOGS),
        help="train a model on this synthetic catalog in a temp store (repeatable)",
    )
    parser.add_argument(
        "--model", action="append", help="measure this stored model, not a new one (repeatable)"
    )
    parser.add_argument(
        "--bentoml-home",
        type=Path,
        default=os.environ.get("BENTOML_HOME"),
        help="store of --model (default: $BENTOML_HOME, else ~/bentoml)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    parser.add_argument("--duration", type=int, default=30, help="seconds per concurrency level")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=list(CLIENTS), help="concurrency levels"
    )
    parser.add_argument(
        "--peer-workers",
        type=int,
        help="uvicorn workers of the peer (default: as many processes as the service runs)",
    )
    parser.add_argument(
        "--placement",
        action="append",
        choices=["auto", "embedder", "in_process"],
        help="measure the service with this runner placement (repeatable; default: auto)",
    )
    parser.add_argument("--no-peer", action="store_true", help="measure the service alone")
    parser.add_argument(
        "--soak", type=int, default=0, help="then N seconds at the highest level: errors, memory"
    )
    parser.add_argument("--bodies", type=int, default=500, help="distinct request bodies")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request bodies")
    parser.add_argument("--timeout", type=int, default=10, help="wrk request timeout, seconds")
    parser.add_argument(
        "--ready-timeout", type=int, default=600, help="seconds to wait for /readyz"
    )
    parser.add_argument("--doc", type=Path, default=DOC, help="markdown file to write")
    parser.add_argument("--plot", type=Path, default=PLOT, help="figure to write")
    parser.add_argument("--no-doc", action="store_true", help="print the tables only")
    args = parser.parse_args()
    if not args.catalog and not args.model:
        args.catalog = ["default"]
    args.placement = args.placement or ["auto"]
    return args


# --- the model --------------------------------------------------------------------------------


def train_catalog(name: str, workdir: Path, env: dict[str, str]) -> None:
    """`gamerec data synth` and `gamerec train` into the store env["BENTOML_HOME"]."""
    users, games, overrides = CATALOGS[name]
    data_dir = workdir / "data"
    settings = {"data.processed_dir": data_dir, **overrides}
    for command in (
        [str(GAMEREC), "data", "synth", "--users", str(users), "--games", str(games),
         "--out", str(data_dir)],
        [str(GAMEREC), "train", "--quiet", *(f"--set={k}={v}" for k, v in settings.items())],
    ):  # fmt: skip
        print("$", " ".join(command), flush=True)
        subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=7200)


def load_catalog(tag: str, bentoml_home: str) -> tuple[str, str, pd.DataFrame]:
    """The concrete model tag, its index type and its catalog, read in a subprocess (the store
    varies)."""
    code = (
        "import sys; from training.store import load_model; a = load_model(sys.argv[1]); "
        "print(a.tag, a.metrics['index']['type']); a.games_table.to_parquet(sys.argv[2])"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "catalog.parquet"
        done = subprocess.run(
            [sys.executable, "-c", code, tag, str(out)], cwd=ROOT, check=True, text=True,
            capture_output=True, env={**os.environ, "BENTOML_HOME": bentoml_home},
        )  # fmt: skip
        concrete_tag, index_type = done.stdout.strip().splitlines()[-1].split()
        return concrete_tag, index_type, pd.read_parquet(out)


def layout(placement: str, env: dict[str, str], workdir: Path) -> Layout:
    """What `placement` makes of the model env["GAMEREC_MODEL_TAG"], asked of
    `serving/placement.py` in a subprocess (it reads the store of env["BENTOML_HOME"])."""
    directory = workdir / f"config-{placement}"
    directory.mkdir(parents=True, exist_ok=True)
    config = service_config(directory, placement=placement)
    code = (
        "from serving.placement import entry_workers, runner_placement; "
        "from serving.settings import load_service_settings; "
        "s = load_service_settings(); p = runner_placement(s); print(p, entry_workers(s, p))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, text=True, capture_output=True,
        env={**env, **config},
    )  # fmt: skip
    resolved, workers = done.stdout.split()[-2:]
    return Layout(placement, resolved, int(workers), config)


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


# --- the servers ------------------------------------------------------------------------------


def http(url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def targets(
    workdir: Path, layouts: list[Layout], peer_workers: int, with_peer: bool
) -> list[Target]:
    """Our service in each layout and the peer, each on a free port of its own."""
    ports: list[int] = []
    while len(ports) < len(layouts) + 1:
        port = free_port()
        if port not in ports:
            ports.append(port)
    ours = [
        Target(
            ours.name,
            [str(BENTOML), "serve", "service:GameRec", "--host", "127.0.0.1", "--port", str(port)],
            port,
            workdir / f"gamerec-{ours.placement}.log",
            ours.env,
        )
        for ours, port in zip(layouts, ports, strict=False)
    ]
    peer = Target(
        f"FastAPI peer ({peer_workers} workers)",
        [sys.executable, "-m", "benchmarks.peer_fastapi", "--host", "127.0.0.1",
         "--port", str(ports[-1]), "--workers", str(peer_workers)],
        ports[-1],
        workdir / "peer.log",
        {},
    )  # fmt: skip
    return [*ours, peer] if with_peer else ours


@contextlib.contextmanager
def serve(target: Target, url: str, env: dict[str, str], ready_timeout: int) -> Iterator[int]:
    """Run the target until the block ends; yields its process id once /readyz answers 200."""
    print("$", " ".join(target.command), flush=True)
    env = {**env, **target.env}
    with running_process(target.command, f"{url}/readyz", env, target.log, ready_timeout) as p:
        yield p.pid


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


@dataclass
class Soak:
    level: Level
    rss_mib: list[tuple[float, float]]  # (seconds into the soak, MiB)

    @property
    def growth(self) -> float:
        """Resident memory at the end over the first sample, minus one."""
        return self.rss_mib[-1][1] / self.rss_mib[0][1] - 1


def soak(url: str, pid: int, bodies: Path, clients: int, seconds: int, args, log: Path) -> Soak:
    """wrk for `seconds` while the server's resident memory is sampled every 5 s."""
    samples: list[tuple[float, float]] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        started = time.monotonic()
        while not stop_sampling.wait(0 if not samples else 5):
            samples.append((time.monotonic() - started, tree_rss_mib(pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        level = run_wrk(url, bodies, clients, seconds, args.timeout, log)
    finally:
        stop_sampling.set()
        sampler.join()
    samples.append((float(seconds), tree_rss_mib(pid)))
    return Soak(level, samples)


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
    settings = load_service_settings()
    return (
        f"placement {settings.placement} (in_process up to {settings.in_process_max_games:,} "
        f"games), workers {settings.workers}, torch_threads {settings.torch_threads}, "
        f"faiss_threads {settings.faiss_threads}, trace_recommend {settings.trace_recommend}, "
        f"batching max_batch_size {settings.batching.max_batch_size} / max_latency_ms "
        f"{settings.batching.max_latency_ms} / inline_budget_ms "
        f"{settings.batching.inline_budget_ms:g}, access_log {settings.access_log}, "
        f"embedder max_calls_in_flight "
        f"{settings.embedder.max_calls_in_flight}"
    )


def side_by_side(results: dict[str, list[Level]], with_peer: bool) -> str:
    """One row per concurrency level: each target's numbers, and each of ours over the peer
    (the last target) where there is one."""
    names = list(results)
    ours = names[:-1] if with_peer else names
    head = ["clients"]
    for name in names:
        head += [f"{name} rps", "p50 ms", "p99 ms", "errors"]
    if with_peer:
        head += [f"{name.removeprefix('GameRec ')} / peer rps" for name in ours]
    rows = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for i, level in enumerate(results[names[0]]):
        cells = [str(level.clients)]
        for name in names:
            lv = results[name][i]
            cells += [f"{lv.rps:.0f}", f"{lv.p50_ms:.1f}", f"{lv.p99_ms:.1f}", str(lv.errors)]
        if with_peer:
            peer = max(results[names[-1]][i].rps, 1e-9)
            cells += [f"{results[name][i].rps / peer:.2f}" for name in ours]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def error_notes(results: dict[str, list[Level]]) -> list[str]:
    notes = []
    for name, levels in results.items():
        for lv in levels:
            if lv.errors or any(lv.server_log.values()):
                logged = ", ".join(f"{k} {v}" for k, v in lv.server_log.items())
                notes.append(
                    f"- {name}, {lv.clients} clients: non-2xx {lv.non2xx} ({lv.statuses}), "
                    f"socket errors {lv.socket_errors}, timeouts {lv.timeouts}; server log: "
                    f"{logged}"
                    + (f"; first error: `{lv.sample_error[:200]}`" if lv.sample_error else "")
                )
    return notes


def catalog_section(
    measured: Measured, results: dict[str, list[Level]], soaked: Soak | None, with_peer: bool
) -> str:
    index = "exact index" if measured.index == "flat" else f"{measured.index} index"
    lines = [f"### Catalog: {measured.catalog} ({measured.games:,} games, model "
             f"`{measured.tag}`, {index})", "", side_by_side(results, with_peer), ""]  # fmt: skip
    lines += [f"Ready (`/readyz` 200) after {seconds:.1f} s from the start of the command, "
              f"resident memory then {mib:.0f} MiB (all processes): {name}."
              for name, (seconds, mib) in measured.startup.items()]  # fmt: skip
    notes = error_notes(results)
    if notes:
        lines += ["", "Errors seen:", "", *notes]
    if soaked is not None:
        lv = soaked.level
        rss = soaked.rss_mib
        lines += [
            "",
            f"Soak, {next(iter(results))}: {lv.clients} clients for {lv.seconds:.0f} s: "
            f"{lv.requests} requests, "
            f"{lv.rps:.0f} rps, p50 {lv.p50_ms:.1f} ms, p99 {lv.p99_ms:.1f} ms, errors "
            f"{lv.errors} (non-2xx {lv.non2xx}: {lv.statuses}; socket errors "
            f"{lv.socket_errors}; timeouts {lv.timeouts}); resident memory of the service (all "
            f"processes) {rss[0][1]:.0f} MiB at the start, {max(r for _, r in rss):.0f} MiB "
            f"at most, {rss[-1][1]:.0f} MiB at the end ({soaked.growth:+.1%}).",
        ]
    return "\n".join(lines)


def report(sections: list[str], info: dict[str, str], args: argparse.Namespace) -> str:
    return "\n".join([
        f"Measured {datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by "
        f"`python -m benchmarks.serving {shlex.join(sys.argv[1:])}`.",
        "",
        f"- service settings (configs/service.yaml): {service_settings()}; measured with "
        f"placement {', '.join(args.placement)}",
        "- peer: `benchmarks/peer_fastapi.py` under uvicorn, as many worker processes as the "
        "largest of ours",
        f"- load: wrk, {args.duration} s per level, {args.bodies} distinct bodies round-robin "
        f"(1-50 games each), request timeout {args.timeout} s",
        *(f"- {key}: {value}" for key, value in info.items()),
        "",
        *("\n\n".join(sections).splitlines()),
        "",
        "rps counts every response; p50 and p99 are over every response; errors = non-2xx "
        "responses + socket errors (connect, read, write) + wrk timeouts.",
        "",
        f"![rps and p99 against clients, ours and the peer's, per catalog]({PLOT.name})",
    ])  # fmt: skip


def plot(measured: list[tuple[Measured, dict[str, list[Level]]]], path: Path) -> None:
    """rps and p99 against clients for every server, one row of two panels per catalog."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(measured), 2, figsize=(11, 3.6 * len(measured)), squeeze=False)
    for (catalog, results), (rps_axis, p99_axis) in zip(measured, axes, strict=True):
        for name, levels in results.items():
            clients = [lv.clients for lv in levels]
            style = "--" if name.startswith("FastAPI") else "-"
            rps_axis.plot(clients, [lv.rps for lv in levels], style, marker="o", label=name)
            p99_axis.plot(clients, [lv.p99_ms for lv in levels], style, marker="o", label=name)
        for axis, what in ((rps_axis, "requests per second"), (p99_axis, "p99 latency, ms")):
            axis.set_xscale("log", base=2)
            axis.set_xticks(clients, [str(c) for c in clients])
            axis.set_xlabel("concurrent clients")
            axis.set_title(f"{catalog.catalog} ({catalog.games:,} games): {what}", fontsize=10)
            axis.grid(alpha=0.3)
        p99_axis.set_yscale("log")
        rps_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_doc(path: Path, section: str) -> None:
    """Replace the marked section of the doc, or append it."""
    block = f"{START_MARK}\n{section}\n{END_MARK}"
    text = path.read_text() if path.exists() else "# Serving performance\n"
    if START_MARK in text and END_MARK in text:
        before, rest = text.split(START_MARK, 1)
        text = before + block + rest.split(END_MARK, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Latest run\n\n" + block
    path.write_text(text.rstrip() + "\n")


# --- main -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """A catalog as measured: its name, model tag, number of games, index type, and each
    server's seconds to ready and resident MiB then."""

    catalog: str
    tag: str
    games: int
    index: str
    startup: dict[str, tuple[float, float]]


def measure(
    catalog: str, tag: str, env: dict[str, str], workdir: Path, args: argparse.Namespace
) -> tuple[str, Measured, dict[str, list[Level]]]:
    """Every server up at once over the same bodies, driven in turn at each level (the order
    rotates from level to level), so that the machine's drift hits all alike; then the soak of
    the first of ours. The section of the report, the catalog, and the levels per server."""
    tag, index_type, games = load_catalog(tag, env["BENTOML_HOME"])
    env = {**env, "GAMEREC_MODEL_TAG": tag}
    bodies = make_bodies(games, args.bodies, args.seed)
    bodies_lua = workdir / "bodies.lua"
    write_bodies(bodies, bodies_lua)
    (workdir / catalog).mkdir(parents=True, exist_ok=True)
    layouts = [layout(p, env, workdir / catalog) for p in dict.fromkeys(args.placement)]
    peer = args.peer_workers or max(lay.processes for lay in layouts)
    print(f"{catalog}: model {tag}, {len(games)} games, {len(bodies)} bodies; "
          f"{', '.join(lay.name for lay in layouts)}; peer {peer} workers", flush=True)  # fmt: skip
    with contextlib.ExitStack() as running:
        servers, startup = [], {}  # (target, url, pid); name -> (seconds to ready, MiB then)
        for target in targets(workdir / catalog, layouts, peer, not args.no_peer):
            url = f"http://127.0.0.1:{target.port}"
            started = time.monotonic()
            pid = running.enter_context(serve(target, url, env, args.ready_timeout))
            startup[target.name] = (time.monotonic() - started, tree_rss_mib(pid))
            print(f"  {target.name}: ready after {startup[target.name][0]:.1f} s, resident "
                  f"memory {startup[target.name][1]:.0f} MiB", flush=True)  # fmt: skip
            servers.append((target, url, pid))
        for target, url, _ in servers:
            warm_up(url, bodies, bodies_lua, target.log)
        results: dict[str, list[Level]] = {target.name: [] for target, _, _ in servers}
        for i, clients in enumerate(args.clients):
            shift = i % len(servers)
            for target, url, _ in servers[shift:] + servers[:shift]:
                time.sleep(2)  # let the last run's requests and log lines drain
                lv = run_wrk(url, bodies_lua, clients, args.duration, args.timeout, target.log)
                results[target.name].append(lv)
                print(f"  {target.name}, {clients:>3} clients: {lv.rps:8.1f} rps, p50 "
                      f"{lv.p50_ms:7.1f} ms, p99 {lv.p99_ms:7.1f} ms, errors {lv.errors}",
                      flush=True)  # fmt: skip
        soaked = None
        if args.soak:
            target, url, pid = servers[0]
            clients = max(args.clients)
            print(f"  soak: {target.name}, {clients} clients for {args.soak} s", flush=True)
            soaked = soak(url, pid, bodies_lua, clients, args.soak, args, target.log)
    measured = Measured(catalog, tag, len(games), index_type, startup)
    return catalog_section(measured, results, soaked, not args.no_peer), measured, results


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is not installed: `apt-get install -y wrk`", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM too
    started, load_before = time.monotonic(), os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="gamerec-serving-"))
    finished = False
    try:
        sections, measured = [], []
        runs = [(c, "gamerec:latest") for c in args.catalog or []]
        for i, model in enumerate(args.model or []):
            runs.append(("stored" if len(args.model) == 1 else f"stored-{i + 1}", model))
        for catalog, tag in runs:
            env = dict(os.environ)
            if catalog.startswith("stored"):
                home = args.bentoml_home or Path.home() / "bentoml"
                env["BENTOML_HOME"] = str(Path(home).expanduser().resolve())
            else:
                env["BENTOML_HOME"] = str(workdir / catalog / "bentoml")
                (workdir / catalog).mkdir(parents=True, exist_ok=True)
                train_catalog(catalog, workdir / catalog, env)
            section, catalog_measured, results = measure(catalog, tag, env, workdir, args)
            sections.append(section)
            measured.append((catalog_measured, results))
        section = report(sections, machine_info(load_before), args)
        print("\n" + section + "\n")
        if not args.no_doc:
            write_doc(args.doc, section)
            plot(measured, args.plot)
            print(f"wrote {args.doc} and {args.plot}")
        print(f"total time {time.monotonic() - started:.0f} s")
        finished = True
        return 0
    finally:
        if args.keep or not finished:
            print(f"kept the run's files (logs, bodies, stores) in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
