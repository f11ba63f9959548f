"""Overload and abuse: the service under more clients than it can serve, beside slow clients,
and with an entry worker killed (issue 18). Each scenario runs a real `bentoml serve` of a
stored model (the Steam one), with the limits of configs/service.yaml ("limits on") and, with
--compare, once more with them lifted ("limits off": admission and the connection deadlines
set out of reach, what the service did before them):

- load: closed-loop clients (benchmarks/overload_clients.py, each answer timed by its status,
  5 s timeout, no back-off) at 64, 256 and 1,024 clients: served rps, 503s, timeouts, p50/p99
  of the served requests, p99 of the 503s, resident memory of the server's processes; all but
  one client run in one process, whose own event loop lags under load (measured and shown),
  the last in a process of its own (the observer: its p99s are the server's answers without
  that lag); then
  1,024 clients that wait out each 503's Retry-After; then wrk at 1,024 (benchmarks/serving.py's
  driver, as the issue measured), 5 s timeout;
- slow: one normal client alone, then beside 1,000 slow clients (half trickle their headers,
  half their body, a byte a second, reconnecting when cut off): its p50/p99, and how long the
  slow connections were held;
- kill: 64 clients while one of the 2 entry workers is killed (SIGKILL): the requests that
  failed against the connections the killed worker held, and the time until a new worker
  answers.

Prints a table, writes it to docs/overload.md and a plot to docs/overload.png.

    python -m benchmarks.overload --model gamerec:latest --bentoml-home /tmp/overload-bentoml
    python -m benchmarks.overload --model gamerec:latest --compare --duration 30   # ~15 min

Run it under `flock /tmp/gamerec-cpu.lock`: the clients and the server share the machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import psutil

from benchmarks.serving import (
    BENTOML,
    Level,
    load_catalog,
    machine_info,
    make_bodies,
    run_wrk,
    write_bodies,
)
from tests.servers import (
    free_port,
    home_of_its_own,
    running_process,
    service_config,
    tree_rss_mib,
    worker_pids,
)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "overload.md"
PLOT = ROOT / "docs" / "overload.png"
OUT_OF_REACH = 10**6  # a limit no run reaches: "limits off"
LIMITS_OFF = {
    "admission": {"max_in_flight": OUT_OF_REACH, "retry_after_s": 1},
    "connections": {
        "header_timeout_s": OUT_OF_REACH, "body_timeout_s": OUT_OF_REACH, "keep_alive_s": 5,
        "max_connections": OUT_OF_REACH, "balance_interval_s": 0,
    },
}  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a stored model tag")
    parser.add_argument("--bentoml-home", type=Path, default=os.environ.get("BENTOML_HOME"))
    parser.add_argument("--duration", type=int, default=30, help="seconds per load level")
    parser.add_argument("--clients", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--slow-clients", type=int, default=1000)
    parser.add_argument("--slow-duration", type=int, default=60)
    parser.add_argument("--timeout", type=float, default=5.0, help="client timeout, seconds")
    parser.add_argument("--compare", action="store_true", help="also run with the limits off")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a setting of the limits-on server, e.g. "
                        "admission.max_in_flight=32 (repeatable)")  # fmt: skip
    parser.add_argument("--only", nargs="+", choices=["load", "slow", "kill"],
                        default=["load", "slow", "kill"])  # fmt: skip
    parser.add_argument("--no-wrk", action="store_true", help="no wrk run at the top level")
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    return parser.parse_args()


# --- measurements -----------------------------------------------------------------------------


@dataclass
class Row:
    """One scenario: what the clients counted, and the server's memory meanwhile."""

    limits: str
    scenario: str
    counted: dict
    rss_mib: list[float] = field(default_factory=list)

    def status(self, code: int) -> dict:
        return self.counted["by_status"].get(str(code), {"count": 0})

    @property
    def served_rps(self) -> float:
        return self.status(200)["count"] / self.counted["seconds"]

    @property
    def failures(self) -> int:
        """Answers other than 200 and 503, timeouts and connection errors."""
        other = sum(v["count"] for s, v in self.counted["by_status"].items() if s not in
                    ("200", "503"))  # fmt: skip
        return other + self.counted["timeouts"] + sum(self.counted["errors"].values())


class RssSampler:
    """The server's resident memory (all its processes), every `interval` s while it runs."""

    def __init__(self, pid: int, interval: float = 2.0) -> None:
        self.pid, self.interval, self.samples = pid, interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(tree_rss_mib(self.pid))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(tree_rss_mib(self.pid))


def run_clients(mode: str, url: str, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "benchmarks.overload_clients", mode, url, *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)


def counted(process: subprocess.Popen, timeout: float) -> dict:
    out, _ = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"{process.args} exited with {process.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def load_options(clients: int, seconds: float, timeout: float) -> list[str]:
    return ["--clients", str(clients), "--duration", str(seconds), "--timeout", str(timeout)]


def load_level(
    url: str, pid: int, bodies: Path, clients: int, args, *extra: str
) -> tuple[dict, list[float]]:
    """`clients`: all but one in one process, the last in a process of its own (`observer`):
    what a client sees whose own event loop is not busy with a thousand others. The counts are
    of all `clients`; the percentiles of the first process, and the observer's apart."""
    with RssSampler(pid) as rss:
        options = load_options(clients - 1, args.duration, args.timeout)
        process = run_clients("load", url, str(bodies), *options, *extra)
        observer = run_clients(
            "load", url, str(bodies), *load_options(1, args.duration, args.timeout), *extra
        )
        result = counted(process, args.duration + args.timeout + 60)
        result["observer"] = seen = counted(observer, args.timeout + 60)
    for status, answers in seen["by_status"].items():
        result["by_status"].setdefault(status, {"count": 0})["count"] += answers["count"]
    result["timeouts"] += seen["timeouts"]
    for error, n in seen["errors"].items():
        result["errors"][error] = result["errors"].get(error, 0) + n
    return result, rss.samples


def wrk_row(
    limits: str, url: str, pid: int, bodies_lua: Path, clients: int, log: Path, args
) -> Row:
    """wrk at `clients` (it times every answer together: its p50/p99 are of all of them)."""
    with RssSampler(pid) as rss:
        lv: Level = run_wrk(url, bodies_lua, clients, args.duration, int(args.timeout), log)
    statuses = dict(pair.split(":") for pair in lv.statuses.split(",")) if lv.non2xx else {}
    served = lv.requests - lv.non2xx
    by_status = {"200": {"count": served, "p50_ms": None, "p99_ms": None}}
    by_status.update({s: {"count": int(n)} for s, n in statuses.items()})
    errors = {"socket errors": lv.socket_errors} if lv.socket_errors else {}
    result = {"seconds": lv.seconds, "by_status": by_status, "timeouts": lv.timeouts,
              "errors": errors, "wrk_p50_ms": lv.p50_ms, "wrk_p99_ms": lv.p99_ms}  # fmt: skip
    return Row(limits, f"wrk, {clients} clients", result, rss.samples)


def slow_rows(limits: str, url: str, pid: int, bodies: Path, args) -> list[Row]:
    """One normal client alone, then beside the slow clients."""
    alone, rss = one_client(url, pid, bodies, args.duration, args.timeout)
    rows = [Row(limits, "1 client alone", alone, rss)]
    slow = run_clients("slow", url, "--clients", str(args.slow_clients),
                       "--duration", str(args.slow_duration + 5))  # fmt: skip
    time.sleep(5)  # the slow connections opened
    beside, rss = one_client(url, pid, bodies, args.slow_duration, args.timeout)
    beside["slow"] = counted(slow, args.slow_duration + 120)
    rows.append(Row(limits, f"1 client beside {args.slow_clients} slow", beside, rss))
    return rows


def one_client(url: str, pid: int, bodies: Path, seconds: float, timeout: float):
    with RssSampler(pid) as rss:
        process = run_clients("load", url, str(bodies), *load_options(1, seconds, timeout))
        result = counted(process, seconds + timeout + 60)
    return result, rss.samples


def kill_row(limits: str, url: str, pid: int, bodies: Path, args) -> Row:
    """64 clients; a third of the way in, one entry worker is killed. The failures are set
    against the connections it held; recovery is the first answer from a new worker."""
    before = worker_pids(pid, "GameRec")
    with RssSampler(pid) as rss:
        options = load_options(64, args.duration, args.timeout)
        process = run_clients("load", url, str(bodies), *options)
        time.sleep(args.duration / 3)
        victim = psutil.Process(before[0])
        held = sum(c.status == psutil.CONN_ESTABLISHED for c in victim.net_connections("tcp"))
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        back_s = first_answer_from_a_new_worker(url, set(before), killed_at, 120)
        result = counted(process, args.duration + args.timeout + 60)
    result["kill"] = {"connections_held": held, "back_s": back_s, "workers_before": len(before)}
    return Row(limits, "kill 1 of 2 workers, 64 clients", result, rss.samples)


def first_answer_from_a_new_worker(url: str, old: set[int], since: float, limit: float):
    """Seconds from `since` until GET /info (a new connection each time) names a worker pid
    that is not in `old`; None if none within `limit` s."""
    while time.monotonic() - since < limit:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            answer = httpx.get(f"{url}/info", timeout=5)
            if answer.status_code == 200 and answer.json()["worker_pid"] not in old:
                return time.monotonic() - since
        time.sleep(0.1)
    return None


# --- the servers ------------------------------------------------------------------------------


def with_overrides(raw: dict, overrides: list[str]) -> dict:
    """Settings as service.yaml's top-level sections, with SECTION.KEY=VALUE overrides."""
    import yaml

    sections = {k: dict(v) for k, v in raw.items() if isinstance(v, dict)}
    for override in overrides:
        key, value = override.split("=", 1)
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = yaml.safe_load(value)
    return sections


@contextlib.contextmanager
def server(limits: dict, env: dict[str, str], workdir: Path, name: str):
    """`bentoml serve` with these settings; yields (url, pid) once /readyz answers."""
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [BENTOML, "serve", "service:GameRec", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    config = service_config(directory, **limits)
    # A home of its own over the same models: `bentoml serve` empties its home's metrics.
    config["BENTOML_HOME"] = home_of_its_own(Path(env["BENTOML_HOME"]), directory / "home")
    log = directory / "server.log"
    with running_process(command, f"{url}/readyz", {**env, **config}, log, 600) as process:
        yield url, process.pid, log


def measure(name: str, limits: dict, env, workdir: Path, bodies, bodies_lua, args) -> list[Row]:
    rows = []
    with server(limits, env, workdir, name) as (url, pid, log):
        for body in json.loads(bodies.read_text())[:5]:  # warm: each worker's first batches
            httpx.post(f"{url}/recommend", json=body, timeout=60).raise_for_status()
        load_level(url, pid, bodies, 8, argparse.Namespace(duration=5, timeout=args.timeout))
        if "load" in args.only:
            for clients in args.clients:
                result, rss = load_level(url, pid, bodies, clients, args)
                rows.append(Row(name, f"{clients} clients", result, rss))
                print(describe(rows[-1]), flush=True)
            top = max(args.clients)
            result, rss = load_level(url, pid, bodies, top, args, "--honor-retry-after")
            rows.append(Row(name, f"{top} clients honoring Retry-After", result, rss))
            print(describe(rows[-1]), flush=True)
            if not args.no_wrk:
                rows.append(wrk_row(name, url, pid, bodies_lua, max(args.clients), log, args))
                print(describe(rows[-1]), flush=True)
        if "slow" in args.only:
            rows += slow_rows(name, url, pid, bodies, args)
            print(describe(rows[-2]), "\n" + describe(rows[-1]), flush=True)
        if "kill" in args.only and name == "limits on":
            rows.append(kill_row(name, url, pid, bodies, args))
            print(describe(rows[-1]), flush=True)
    return rows


# --- report -----------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def describe(row: Row) -> str:
    return " | ".join(cells(row))


def cells(row: Row) -> list[str]:
    served, refused = row.status(200), row.status(503)
    p50, p99 = served.get("p50_ms"), served.get("p99_ms")
    if "wrk_p99_ms" in row.counted:
        p50, p99 = row.counted["wrk_p50_ms"], row.counted["wrk_p99_ms"]
    rss = row.rss_mib or [0.0]
    observer = row.counted.get("observer", {}).get("by_status", {})
    seen = "/".join(ms(observer.get(s, {}).get("p99_ms")) for s in ("503", "200"))
    lag = row.counted.get("loop_lag_ms", {}).get("p99")
    return [
        row.limits, row.scenario, f"{row.served_rps:.0f}", f"{refused['count']:,}",
        ms(refused.get("p99_ms")), str(row.counted["timeouts"]), str(row.failures - row.counted[
            "timeouts"]), ms(p50), ms(p99), seen if observer else "-", ms(lag),
        f"{rss[0]:.0f} / {max(rss):.0f} / {rss[-1]:.0f}",
    ]  # fmt: skip


HEAD = ["limits", "scenario", "served rps", "503s", "503 p99 ms", "timeouts", "other failures",
        "served p50 ms", "served p99 ms", "observer: 503 / served p99 ms",
        "clients' loop lag p99 ms", "RSS MiB start / max / end"]  # fmt: skip


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * 2 + "---:|" * (len(HEAD) - 2)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def notes(rows: list[Row]) -> list[str]:
    lines = []
    for row in rows:
        if row.counted["errors"] or row.failures:
            counted = row.counted
            lines.append(f"- {row.limits}, {row.scenario}: failures "
                         f"{json.dumps(counted['errors'])}, timeouts {counted['timeouts']}, "
                         f"statuses {sorted(counted['by_status'])}")  # fmt: skip
        if "slow" in row.counted:
            slow = row.counted["slow"]
            lines.append(f"- {row.limits}, slow clients: cut off {slow['cut_off']} times, held "
                         f"median {fmt_s(slow['held_s_median'])}, max {fmt_s(slow['held_s_max'])}"
                         f"; answers {slow['answers']}; open near the end "
                         f"{slow['open_near_end']}")  # fmt: skip
        if "kill" in row.counted:
            kill = row.counted["kill"]
            back = "not within the run" if kill["back_s"] is None else f"{kill['back_s']:.1f} s"
            lines.append(f"- {row.limits}, worker killed: it held {kill['connections_held']} "
                         f"client connections; {row.failures} requests failed; a new worker "
                         f"answered {back} after the kill")  # fmt: skip
    return lines


def fmt_s(by_kind: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in by_kind.items()) or "-"


def report(rows: list[Row], info: dict[str, str], load_after: tuple, args) -> str:
    return "\n".join([
        f"Measured {datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by `python -m "
        f"benchmarks.overload {' '.join(sys.argv[1:])}`.",
        "",
        *(f"- {key}: {value}" for key, value in info.items()),
        f"- load average after the run: {' '.join(f'{x:.2f}' for x in load_after)}",
        f"- {args.duration} s per load level, client timeout {args.timeout:g} s; slow clients "
        f"{args.slow_duration} s",
        "",
        table(rows),
        "",
        "served p50/p99 are of the 200s only (wrk's row: of every answer, 503s included); "
        "503 p99 is of the 503s; other failures: other statuses and connection errors. All but "
        "one of a row's clients run in one process (uvloop), which is itself late under load "
        "(its loop lag: how late it wakes a 10 ms sleep); the last, the observer, runs in a "
        "process of its own, and its p99s show the server's answers without that lag.",
        "",
        *notes(rows),
        "",
        f"![served rps, 503s and p99 against clients, limits on and off]({PLOT.name})",
    ])  # fmt: skip


def plot(rows: list[Row], path: Path) -> None:
    """Served rps and 503/s, and the p99s, against clients; limits on and off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rate, latency) = plt.subplots(1, 2, figsize=(11, 3.8))
    for limits in dict.fromkeys(r.limits for r in rows):
        levels = [r for r in rows if r.limits == limits and r.scenario.endswith(" clients")
                  and not r.scenario.startswith(("wrk", "kill"))]  # fmt: skip
        clients = [int(r.scenario.split()[0]) for r in levels]
        style = "-" if limits == "limits on" else "--"
        rate.plot(clients, [r.served_rps for r in levels], style, marker="o",
                  label=f"{limits}: served")  # fmt: skip
        rate.plot(clients, [r.status(503)["count"] / r.counted["seconds"] for r in levels],
                  style, marker="x", label=f"{limits}: 503")  # fmt: skip
        latency.plot(clients, [r.status(200).get("p99_ms") or float("nan") for r in levels],
                     style, marker="o", label=f"{limits}: served p99")  # fmt: skip
        refusals = [r.status(503).get("p99_ms") or float("nan") for r in levels]
        latency.plot(clients, refusals, style, marker="x", label=f"{limits}: 503 p99")
        if limits == "limits on":  # the observer: the server's answers without the clients' lag
            seen = [r.counted.get("observer", {}).get("by_status", {}) for r in levels]
            for status, marker, what in (("200", "o", "served"), ("503", "x", "503")):
                p99s = [o.get(status, {}).get("p99_ms") or float("nan") for o in seen]
                latency.plot(clients, p99s, ":", marker=marker, label=f"observer: {what} p99")
    ticks = sorted({int(r.scenario.split()[0]) for r in rows if r.scenario.endswith(" clients")
                    and not r.scenario.startswith(("wrk", "kill"))})  # fmt: skip
    for axis, what in ((rate, "answers per second"), (latency, "p99 latency, ms")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.set_xlabel("concurrent clients (closed loop, no back-off)")
        axis.set_title(what, fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    latency.set_yscale("log")
    latency.axhline(250, color="grey", linewidth=0.8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_doc(path: Path, section: str) -> None:
    """Replace the measured part of docs/overload.md (between its markers)."""
    start, end = "<!-- overload-benchmark:start -->", "<!-- overload-benchmark:end -->"
    text = path.read_text() if path.exists() else f"# Overload and abuse\n\n{start}\n{end}\n"
    before, rest = text.split(start, 1)
    path.write_text(before + f"{start}\n{section}\n{end}" + rest.split(end, 1)[1])


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM too
    load_before = os.getloadavg()
    home = str(Path(args.bentoml_home or Path.home() / "bentoml").expanduser().resolve())
    tag, _, games = load_catalog(args.model, home)
    env = {**os.environ, "BENTOML_HOME": home, "GAMEREC_MODEL_TAG": tag,
           "BENTOML_DO_NOT_TRACK": "true"}  # fmt: skip
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "service.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="gamerec-overload-") as tmp:
        workdir = Path(tmp)
        bodies_list = make_bodies(games, 500, seed=0)
        bodies = workdir / "bodies.json"
        bodies.write_text(json.dumps(bodies_list))
        bodies_lua = workdir / "bodies.lua"
        write_bodies(bodies_list, bodies_lua)
        print(f"model {tag}: {len(games)} games", flush=True)
        configs = {"limits on": with_overrides(raw, args.set)}
        if args.compare:
            configs["limits off"] = LIMITS_OFF
        rows = []
        for name, limits in configs.items():
            rows += measure(name, limits, env, workdir, bodies, bodies_lua, args)
    info = machine_info(load_before)
    info["model"] = f"`{tag}` ({len(games):,} games)"
    section = report(rows, info, os.getloadavg(), args)
    print("\n" + section)
    if not args.no_doc:
        write_doc(DOC, section)
        plot(rows, PLOT)
        print(f"wrote {DOC} and {PLOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
