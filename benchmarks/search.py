"""Hyperparameter search for the two-tower on the real Steam data, scored on validation players.

    python -m benchmarks.search                                  # the grid in configs/search.yaml
    python -m benchmarks.search --set model.embedding_dim=128    # one trial on top of the default

Every trial trains on the training players of the default split and is scored on the
validation players only (never on test players: the test table is benchmarks/quality.py).
A grid is a list of named trials, each a set of overrides of `configs/training.yaml` in dotted
form; results go to `docs/search.md`. The best trial's overrides are what the default config
should carry (copy them into configs/training.yaml by hand, so that the default stays a file
that people read).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from benchmarks.quality import SHARED, load_steam
from training.config import (
    TrainingSettings,
    load_training_config,
    parse_override,
    with_overrides,
)
from training.evaluate import (
    ease_scorer,
    ranking_metrics,
    split_users,
    train_matrix,
    tune_ease,
)
from training.features import catalog_items
from training.report import format_table
from training.train import tower_scorer, train_two_tower

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("recall@10", "ndcg@10", "recall@50")


def trial(settings: TrainingSettings, data: tuple) -> dict[str, float]:
    """Train once; validation metrics of the kept (best-epoch) model."""
    dataset, vocab, histories = data
    split = split_users(histories, settings.split)
    started = time.perf_counter()
    trained = train_two_tower(
        histories, split, vocab, dataset.games_table, settings, progress=False
    )
    items = catalog_items(dataset.games_table, vocab, settings.features)
    scorer = tower_scorer(trained.towers, histories, split.validation, items, settings)
    row = ranking_metrics(scorer, histories, split.validation, settings.eval.ks)
    return {
        **{m: row[m] for m in METRICS},
        "best epoch": trained.best_epoch,
        "seconds": round(time.perf_counter() - started),
    }


def run_trials(
    base: TrainingSettings, trials: dict[str, dict[str, Any]], data: tuple, jobs: int
) -> dict[str, dict[str, float]]:
    settings = {name: with_overrides(base, o) for name, o in trials.items()}
    results: dict[str, dict[str, float]] = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {name: pool.submit(trial, s, data) for name, s in settings.items()}
        for name, future in futures.items():
            results[name] = future.result()
            print(
                f"{name}: "
                + ", ".join(
                    f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in results[name].items()
                ),
                flush=True,
            )
    return results


def ease_reference(settings: TrainingSettings, data: tuple) -> dict[str, float]:
    """EASE with λ tuned on the same validation players: the bar to clear."""
    _, vocab, histories = data
    split = split_users(histories, settings.split)
    train = train_matrix(histories, split.train_users, len(vocab.game_ids))
    lam, weights = tune_ease(histories, train, split.validation, settings.eval.ease_lambdas)
    row = ranking_metrics(
        ease_scorer(histories, weights), histories, split.validation, settings.eval.ks
    )
    return {**{m: row[m] for m in METRICS}, "best epoch": f"λ={lam:g}", "seconds": 0}


def write_doc(
    results: dict[str, dict[str, float]], trials: dict[str, dict[str, Any]], out: Path, players: int
) -> None:
    best = max(
        (n for n in results if n in trials),
        key=lambda n: results[n]["recall@10"] + results[n]["ndcg@10"],
    )
    lines = [
        "# Hyperparameter search (benchmarks/search.py)",
        "",
        f"Validation players of the default split ({players}); the best trial by "
        "Recall@10 + NDCG@10 is marked. Grid: `configs/search.yaml`.",
        "",
        "| trial | overrides | " + " | ".join(METRICS) + " | best epoch | s |",
        "| --- | --- |" + " ---: |" * (len(METRICS) + 2),
    ]
    for name, row in results.items():
        overrides = ", ".join(f"`{k}={v}`" for k, v in trials.get(name, {}).items()) or "-"
        mark = "**" if name == best else ""
        cells = " | ".join(f"{mark}{row[m]:.4f}{mark}" for m in METRICS)
        lines.append(
            f"| {mark}{name}{mark} | {overrides} | {cells} | {row['best epoch']} "
            f"| {row['seconds']} |"
        )
    (out / "search.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plays", type=Path, default=SHARED / "steam-200k-play.csv")
    parser.add_argument("--games", type=Path, default=SHARED / "steam-games.parquet")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "training.yaml")
    parser.add_argument("--grid", type=Path, default=ROOT / "configs" / "search.yaml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="run one trial with these overrides instead of the grid",
    )
    parser.add_argument("--jobs", type=int, default=2, help="trials in parallel")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()

    base = load_training_config(args.config)
    if args.set:
        trials = {"trial": dict(parse_override(s) for s in args.set)}
    else:
        trials = yaml.safe_load(args.grid.read_text(encoding="utf-8"))["trials"]
    # Threads split between parallel trials: the machine has few cores.
    threads = max(1, base.train.threads // max(1, min(args.jobs, len(trials))))
    base = with_overrides(base, {"train.threads": threads})
    data = load_steam(args.plays, args.games)
    results = {"EASE (reference)": ease_reference(base, data)}
    results.update(run_trials(base, trials, data, args.jobs))
    print(format_table(results, "Validation players"))
    if not args.set:
        players = len(split_users(data[2], base.split).validation)
        write_doc(results, trials, args.out, players)
        print(f"wrote {args.out / 'search.md'}")


if __name__ == "__main__":
    main()
