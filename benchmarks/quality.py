"""Recommendation quality on the real Steam data: two-tower against the baselines, over
k folds of players or over seeds.

    python -m benchmarks.quality --folds 5            # every eligible player tested once
    python -m benchmarks.quality                      # 3 seeds, writes docs/quality.{md,png}
    python -m benchmarks.quality --seeds 1 --no-doc   # a quick look
    python -m benchmarks.quality --folds 5 --set model.tower=additive --no-doc  # a variant

Each fold (or seed) is a split of held-out players, and the two-tower trains anew on it.
Every method sees the same split: popularity, item-kNN (cosine), EASE (λ tuned on the
validation players), ALS from the `implicit` package when it is installed, and the two-tower
at the default config (or with the `--set` overrides).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.config import (
    TrainingSettings,
    load_training_config,
    parse_override,
    with_overrides,
)
from training.data.io import Dataset, load_dataset, write_dataset
from training.data.steam import import_steam200k
from training.evaluate import (
    Split,
    ease_scorer,
    item_knn_scorer,
    kfold_splits,
    popularity_scorer,
    ranking_metrics,
    split_users,
    train_matrix,
    tune_ease,
)
from training.features import Vocabulary, catalog_items
from training.histories import Histories
from training.report import chart_png
from training.train import tower_scorer, train_two_tower

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
METRICS = ("recall@10", "ndcg@10", "recall@50")
START, END = "<!-- quality-benchmark:start -->", "<!-- quality-benchmark:end -->"


def load_steam(plays: Path, games: Path) -> tuple[Dataset, Vocabulary, Histories]:
    """The Steam data through the project's own importer and schema, as training reads it."""
    with tempfile.TemporaryDirectory() as tmp:
        interactions, catalog, report = import_steam200k(plays, games)
        write_dataset(interactions, catalog, Path(tmp), name="steam200k", report=report)
        dataset = load_dataset(Path(tmp))
    vocab = Vocabulary.from_games_table(dataset.games_table)
    return dataset, vocab, Histories.from_interactions(dataset.interactions, vocab)


def timed(fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    started = time.perf_counter()
    row = fn()
    return {**row, "seconds": time.perf_counter() - started}


def seeded_splits(settings: TrainingSettings, histories: Histories,
                  seeds: int) -> list[tuple[TrainingSettings, Split]]:
    """A new split of held-out players and a new training seed for each run."""
    runs = []
    for seed in range(settings.split.seed, settings.split.seed + seeds):
        seeded = with_overrides(settings, {"split.seed": seed, "train.seed": seed})
        runs.append((seeded, split_users(histories, seeded.split)))
    return runs


def one_split(settings: TrainingSettings, histories: Histories, vocab: Vocabulary,
              games, split: Split) -> dict[str, dict[str, float]]:
    n_games, ks = len(vocab.game_ids), settings.eval.ks
    train = train_matrix(histories, split.train_users, n_games)

    def metrics(scorer) -> dict[str, float]:
        return ranking_metrics(scorer, histories, split.test, ks)

    def ease() -> dict[str, float]:
        lam, weights = tune_ease(histories, train, split.validation, settings.eval.ease_lambdas)
        return {**metrics(ease_scorer(histories, weights)), "lambda": lam}

    def two_tower() -> dict[str, float]:
        trained = train_two_tower(histories, split, vocab, games, settings, progress=False)
        items = catalog_items(games, vocab, settings.features)
        return metrics(tower_scorer(trained.towers, histories, split.test, items, settings))

    table = {
        "popularity": timed(lambda: metrics(popularity_scorer(train))),
        "item-kNN": timed(lambda: metrics(item_knn_scorer(histories, train))),
        "EASE": timed(ease),
        "two-tower": timed(two_tower),
    }
    als = als_row(histories, split, train, metrics)
    if als:
        table["ALS (implicit)"] = als
    return table


def als_row(histories: Histories, split: Split, train, metrics) -> dict[str, float] | None:
    """ALS from `implicit`, folding the test players in from their inputs (optional)."""
    try:
        from implicit.als import AlternatingLeastSquares
    except ImportError:
        return None
    from training.evaluate import input_matrix

    def run() -> dict[str, float]:
        model = AlternatingLeastSquares(factors=64, regularization=0.05, iterations=15,
                                        random_state=0)
        model.fit(train, show_progress=False)
        items = np.asarray(model.item_factors)

        def score(eval_set, rows: slice) -> np.ndarray:
            inputs = input_matrix(histories, eval_set, rows, train.shape[1])
            users = model.recalculate_user(np.arange(inputs.shape[0]), inputs)
            return np.asarray(users) @ items.T

        return metrics(score)

    return timed(run)


def summarize(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and standard deviation over seeds, per method and metric."""
    return {method: {m: (float(np.mean([r[method][m] for r in runs])),
                         float(np.std([r[method][m] for r in runs])))
                     for m in (*METRICS, "seconds")}
            for method in runs[0]}


def markdown(summary: dict[str, dict[str, tuple[float, float]]], protocol: str) -> str:
    head = "| method | " + " | ".join(METRICS) + " | fit + eval s |"
    lines = [f"Mean ± standard deviation over {protocol}.", "",
             head, "| --- |" + " ---: |" * (len(METRICS) + 1)]
    for method, row in summary.items():
        cells = [f"{row[m][0]:.4f} ± {row[m][1]:.4f}" for m in METRICS]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {row['seconds'][0]:.0f} |")
    ease, tower = summary["EASE"], summary["two-tower"]
    ratios = ", ".join(f"{m} {tower[m][0] / ease[m][0] - 1:+.1%}" for m in METRICS)
    lines += ["", f"Two-tower against EASE (relative, means): {ratios}."]
    return "\n".join(lines)


def write_doc(table_md: str, summary: dict, out: Path) -> None:
    doc = out / "quality.md"
    text = doc.read_text(encoding="utf-8") if doc.is_file() else "# Recommendation quality\n"
    block = f"{START}\n{table_md}\n\n![quality](quality.png)\n{END}"
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text,
                      flags=re.S)
    else:
        text = text.replace("\n", f"\n\n## Benchmark (benchmarks/quality.py)\n\n{block}\n", 1)
    doc.write_text(text, encoding="utf-8")
    means = {method: {m: row[m][0] for m in METRICS} for method, row in summary.items()}
    (out / "quality.png").write_bytes(chart_png(means, "Steam 200k, held-out players (mean)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plays", type=Path, default=SHARED / "steam-200k-play.csv")
    parser.add_argument("--games", type=Path, default=SHARED / "steam-games.parquet")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "training.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=0,
                        help="k-fold over players (every eligible player tested once) "
                             "instead of --seeds")
    parser.add_argument("--set", action="append", default=[],
                        help="override a training setting: section.field=value (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()

    overrides = dict(parse_override(text) for text in args.set)
    settings = load_training_config(args.config, overrides)
    dataset, vocab, histories = load_steam(args.plays, args.games)
    if args.folds:
        plan = [(settings, s) for s in kfold_splits(histories, settings.split, args.folds)]
        protocol = (f"{args.folds} folds of players (split seed {settings.split.seed}): "
                    f"{sum(len(s.test) for _, s in plan)} test players in all")
    else:
        plan = seeded_splits(settings, histories, args.seeds)
        seeds = [s.split.seed for s, _ in plan]
        protocol = f"seeds {seeds} (split and training seed)"
    if overrides:
        protocol += "; two-tower with " + ", ".join(args.set)
    runs = []
    for i, (run_settings, split) in enumerate(plan):
        runs.append(one_split(run_settings, histories, vocab, dataset.games_table, split))
        print(f"run {i + 1}/{len(plan)} ({len(split.test)} test players): " + ", ".join(
            f"{m} R@10 {row['recall@10']:.4f}" for m, row in runs[-1].items()), flush=True)
    summary = summarize(runs)
    table_md = markdown(summary, protocol)
    print(table_md)
    if not args.no_doc:
        write_doc(table_md, summary, args.out)
        print(f"wrote {args.out / 'quality.md'} and {args.out / 'quality.png'}")


if __name__ == "__main__":
    main()
