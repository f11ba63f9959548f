"""Training that streams (issue 17): a synthetic data set written in pieces, and training that
reads its plays in batches of row groups; each step's time and peak resident memory.

    # the data set (gamerec data synth), then in this process: the data passes, one epoch
    # of the data path alone, and --steps training steps of the default model
    python -m benchmarks.stream scale --generate --users 2000000 --games 100000 \\
        --out /tmp/synth-20m --steps 100
    # `gamerec train` end to end, streamed and in memory, on the same data
    python -m benchmarks.stream compare --out /tmp/synth-default --epochs 5 \\
        --modes always never --set model.start_from_ease=false

`scale` measures what a whole epoch of a large data set would take where it takes hours here:
the two passes before training (the scan, the held-out players), one full epoch of the data
path (every training player read, its batch's features built, no model), and `--steps`
training steps of the model of configs/training.yaml (sampled softmax on a large catalog) with
their validation pass; an epoch is extrapolated from the steps, which include their reads.
`compare` runs the project's CLI as a child process per mode. Resident memory is sampled every
0.2 s (a child's with its children). Run it under `flock /tmp/gamerec-cpu.lock` on a shared
machine, and read the load it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

from tests.servers import tree_rss_mib
from training.config import load_training_config, parse_override, with_overrides
from training.data.io import open_dataset
from training.data.stream import PlayStream, stream_plays
from training.distributed import Ranks
from training.evaluate import ranking_metrics
from training.features import Vocabulary, game_genre_positions
from training.histories import genre_matrix
from training.train import StreamedExampleSampler, catalog_with_plays, tower_scorer, train_two_tower

GAMEREC = [sys.executable, "-m", "training.cli"]


@dataclass
class Step:
    name: str
    seconds: float
    peak_mib: float
    notes: str = ""
    metrics: dict = field(default_factory=dict)


@contextmanager
def peak_rss(step: Step) -> Iterator[None]:
    """Time the block and sample this process's resident memory into `step`."""
    process, done = psutil.Process(), threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            step.peak_mib = max(step.peak_mib, process.memory_info().rss / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        yield
    finally:
        step.seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        step.peak_mib = max(step.peak_mib, process.memory_info().rss / 2**20)


def child(name: str, command: list[str], env: dict[str, str]) -> tuple[Step, str]:
    """Run `command` (its progress bars on our stderr), sampling its tree's resident memory."""
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, text=True)
        peak = 0.0
        while process.poll() is None:
            peak = max(peak, tree_rss_mib(process.pid))
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        out.seek(0)
        output = out.read()
    if process.returncode != 0:
        raise SystemExit(f"{name} failed (exit {process.returncode}):\n{output}")
    return Step(name, seconds, peak), output


def generate(args: argparse.Namespace, env: dict[str, str]) -> Step:
    command = [*GAMEREC, "data", "synth", "--users", str(args.users), "--games", str(args.games)]
    step, _ = child("gamerec data synth", [*command, "--out", str(args.out)], env)
    return step


# ------------------------------------------------------------------------------------- scale


class FirstPlayers:
    """A stream that serves only its first `n` training players an epoch: `--steps` batches."""

    def __init__(self, stream: PlayStream, n: int) -> None:
        self.stream, self.n, self.train_counts = stream, n, stream.train_counts

    def n_players(self, ranks: Ranks) -> int:
        return min(self.n, self.stream.n_players(ranks))

    def batches(self, *args: object) -> Iterator:
        return self.stream.batches(*args)


def scale(args: argparse.Namespace, env: dict[str, str]) -> list[Step]:
    steps = [generate(args, env)] if args.generate else []
    overrides = {"data.processed_dir": str(args.out), "data.streaming": "always"}
    overrides |= {"train.epochs": 1, **dict(parse_override(o) for o in args.set or [])}
    settings = with_overrides(load_training_config(), overrides)
    stored = open_dataset(args.out)
    vocab = Vocabulary.from_games_table(stored.games_table)

    passes = Step("the scan and the held-out players' read", 0.0, 0.0)
    with peak_rss(passes):
        plays = stream_plays(stored, vocab, settings)
    passes.notes = f"{plays.n_train_players:,} training players, {len(plays.histories):,} held out"
    steps.append(passes)

    batch_size = settings.train.batch_size
    genres = genre_matrix(game_genre_positions(stored.games_table, vocab), len(vocab.genres))
    rng = np.random.default_rng(0)
    sampler = StreamedExampleSampler(plays.stream, Ranks(0, 1), genres, settings, rng)
    data_epoch = Step("one epoch of the data path (no model)", 0.0, 0.0)
    with peak_rss(data_epoch):
        n_batches = -(-len(sampler) // batch_size)
        examples = sum(
            len(batch) for batch in tqdm(sampler.batches(len(sampler), batch_size), total=n_batches)
        )
    data_epoch.notes = f"{examples / data_epoch.seconds:,.0f} examples/s"
    steps.append(data_epoch)

    training = Step(f"{args.steps} training steps and a validation", 0.0, 0.0)
    with peak_rss(training):
        limited = FirstPlayers(plays.stream, args.steps * batch_size)
        result = train_two_tower(
            plays.histories, plays.split, vocab, stored.games_table, settings, stream=limited
        )
    validation = validation_seconds(plays, vocab, stored.games_table, result.towers, settings)
    step_seconds = (training.seconds - validation) / args.steps
    epoch = n_batches * step_seconds + validation
    training.notes = (
        f"loss {result.loss_kind}: {step_seconds:.2f} s a step of {batch_size}, "
        f"{batch_size / step_seconds:,.0f} examples/s; validation {validation:.0f} s; "
        f"an epoch of {n_batches:,} steps: about {epoch / 3600:.1f} h (extrapolated)"
    )
    steps.append(training)
    return steps


def validation_seconds(plays, vocab, games_table, towers, settings) -> float:
    """One validation pass as training makes it after each epoch."""
    started = time.perf_counter()
    items = catalog_with_plays(games_table, vocab, plays.train_counts, settings.features)
    scorer = tower_scorer(towers, plays.histories, plays.split.validation, items, settings)
    ranking_metrics(scorer, plays.histories, plays.split.validation, [10])
    return time.perf_counter() - started


# ----------------------------------------------------------------------------------- compare


def compare(args: argparse.Namespace, env: dict[str, str]) -> list[Step]:
    steps = [generate(args, env)] if args.generate else []
    for mode in args.modes:
        overrides = {
            "data.processed_dir": args.out,
            "data.streaming": mode,
            "train.epochs": args.epochs,
            "train.patience": args.epochs,
        }
        command = [*GAMEREC, "train"]
        for key, value in overrides.items():
            command += ["--set", f"{key}={value}"]
        for override in args.set or []:
            command += ["--set", override]
        step, output = child(f"gamerec train (streaming: {mode})", command, env)
        tag = re.search(r"saved model: (\S+)", output)
        if tag is None:
            raise SystemExit(f"no model saved:\n{output}")
        step.metrics = saved_metrics(tag.group(1), env)
        step.notes = train_notes(step.metrics)
        steps.append(step)
    return steps


def saved_metrics(tag: str, env: dict[str, str]) -> dict:
    """The metrics of a saved model, read in a child with the benchmark's model store."""
    code = (
        "import json; from training.store import load_model; "
        f"print(json.dumps(load_model({tag!r}).metrics, default=str))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def train_notes(metrics: dict) -> str:
    training, table = metrics["training"], metrics["evaluation"]
    per_epoch = training["seconds"] / len(training["epochs"])
    players = metrics["split"]["train_users"]
    return (
        f"data {training['data_seconds']:.0f} s; {per_epoch:.1f} s an epoch (with its "
        f"validation), {players / per_epoch:,.0f} examples/s; test Recall@10 two-tower "
        f"{table['two-tower']['recall@10']:.4f}, popularity {table['popularity']['recall@10']:.4f}"
    )


# ---------------------------------------------------------------------------------- report


def data_line(directory: Path) -> str:
    info = json.loads((directory / "dataset.json").read_text(encoding="utf-8"))
    size = sum(f.stat().st_size for f in directory.glob("*.parquet")) / 1e6
    return (
        f"data set {directory}: {info['n_interactions']:,} plays, {info['n_users']:,} players, "
        f"{info['n_games']:,} games; Parquet {size:,.0f} MB"
    )


def markdown_table(steps: list[Step]) -> str:
    lines = ["| step | wall s | peak RSS GB | notes |", "| --- | ---: | ---: | --- |"]
    lines += [
        f"| {s.name} | {s.seconds:,.0f} | {s.peak_mib / 1024:.2f} | {s.notes} |" for s in steps
    ]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("scale", "compare"):
        sub = commands.add_parser(name)
        sub.add_argument("--out", type=Path, default=Path("/tmp/synth-20m"), help="data set")
        sub.add_argument("--generate", action="store_true", help="write it first")
        sub.add_argument("--users", type=int, default=2_000_000)
        sub.add_argument("--games", type=int, default=100_000)
        sub.add_argument("--set", action="append", help="a training override (repeatable)")
    commands.choices["scale"].add_argument("--steps", type=int, default=100)
    commands.choices["compare"].add_argument("--epochs", type=int, default=5)
    commands.choices["compare"].add_argument(
        "--modes", nargs="+", default=["always", "never"], choices=["always", "never", "auto"]
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    home = tempfile.mkdtemp(prefix="stream-bentoml-")
    os.environ.setdefault("BENTOML_HOME", home)  # this process's store (scale saves nothing)
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    load_before = os.getloadavg()
    steps = scale(args, env) if args.command == "scale" else compare(args, env)
    print(data_line(args.out))
    print(markdown_table(steps))
    print(
        f"\n{os.cpu_count()} cores; load average (1, 5, 15 min) before "
        f"{', '.join(f'{x:.1f}' for x in load_before)}, after "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; model store {env['BENTOML_HOME']}"
    )


if __name__ == "__main__":
    main()
