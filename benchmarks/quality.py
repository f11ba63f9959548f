"""Recommendation quality on the real Steam data: two-tower against the baselines, over
k folds of players or over seeds, and what the baselines cannot do.

    python -m benchmarks.quality --folds 5 --jobs 2   # every eligible player tested once
    python -m benchmarks.quality --seeds 1 --no-new-games --no-doc   # a quick look
    python -m benchmarks.quality --folds 5 --variant "cosine: model.tower=mlp model.scoring=cosine"

Each fold (or seed) is a split of held-out players, and the two-tower trains anew on it.
Every method sees the same split: popularity, item-kNN (cosine), EASE (λ tuned on the
validation players), ALS from the `implicit` package when it is installed, the two-tower at
the default config and any `--variant` (its overrides on top). Besides the full-catalog
metrics, each method is scored on
- the long tail: Recall@10 of the targets outside the 100 most played games, and the share
  of the catalog its top-10 lists show;
- short histories: the test players with only 1-2 of their input games;
- new games (unless `--no-new-games`): a random 7.5% of the games with metadata lose every
  training play, the models are fitted again, and Recall@10 counts only those games among the
  targets. EASE, item-kNN and popularity cannot score a game nobody played; the item tower
  places it from its genres and tags.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
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
    EvalSet,
    Scorer,
    Split,
    catalog_coverage,
    ease_scorer,
    ease_weights,
    input_matrix,
    item_knn_scorer,
    kfold_splits,
    pick_new_games,
    popularity_scorer,
    ranking_metrics,
    restrict_targets,
    shorten_inputs,
    split_users,
    train_matrix,
    tune_ease,
    without_games,
)
from training.features import Vocabulary
from training.histories import Histories
from training.report import chart_png
from training.train import played_catalog, tower_scorer, train_two_tower

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
METRICS = ("recall@10", "ndcg@10", "recall@50")
BEYOND = (
    "new-game recall@10",
    "new-game recall@50",
    "long-tail recall@10",
    "coverage@10",
    "short-history recall@10",
    "short-history ndcg@10",
)
HEAD_GAMES = 100  # the long tail: every game outside the 100 most played
NEW_GAME_SHARE = 0.075
SHORT_HISTORY = 2
TWO_TOWER = "two-tower"
START, END = "<!-- quality-benchmark:start -->", "<!-- quality-benchmark:end -->"
# A method fitted on a split: given an evaluation set, its scorer.
Fitted = Callable[[EvalSet], Scorer]


@dataclass(frozen=True)
class Run:
    """One fold (or seed): the settings of every two-tower row, and the split."""

    towers: dict[str, TrainingSettings]  # row name -> settings
    split: Split
    new_games: bool


def load_steam(plays: Path, games: Path) -> tuple[Dataset, Vocabulary, Histories]:
    """The Steam data through the project's own importer and schema, as training reads it."""
    with tempfile.TemporaryDirectory() as tmp:
        interactions, catalog, report = import_steam200k(plays, games)
        write_dataset(interactions, catalog, Path(tmp), name="steam200k", report=report)
        dataset = load_dataset(Path(tmp))
    vocab = Vocabulary.from_games_table(dataset.games_table)
    return dataset, vocab, Histories.from_interactions(dataset.interactions, vocab)


def timed(fn: Callable[[], Fitted]) -> tuple[Fitted, float]:
    started = time.perf_counter()
    fitted = fn()
    return fitted, time.perf_counter() - started


def seeded_splits(
    settings: TrainingSettings, histories: Histories, seeds: int
) -> list[tuple[TrainingSettings, Split]]:
    """A new split of held-out players and a new training seed for each run."""
    runs = []
    for seed in range(settings.split.seed, settings.split.seed + seeds):
        seeded = with_overrides(settings, {"split.seed": seed, "train.seed": seed})
        runs.append((seeded, split_users(histories, seeded.split)))
    return runs


def fit_methods(
    towers: dict[str, TrainingSettings],
    histories: Histories,
    vocab: Vocabulary,
    games,
    split: Split,
    ease_lambda: float | None = None,
) -> tuple[dict[str, tuple[Fitted, float]], float]:
    """Every method fitted on the split's training players (EASE's λ tuned on its validation
    players unless given), and the λ used."""
    n_games = len(vocab.game_ids)
    train = train_matrix(histories, split.train_users, n_games)
    settings = next(iter(towers.values()))
    if ease_lambda is None:
        ease_lambda, _ = tune_ease(histories, train, split.validation, settings.eval.ease_lambdas)

    def two_tower(cfg: TrainingSettings) -> Fitted:
        trained = train_two_tower(histories, split, vocab, games, cfg, progress=False)
        items = played_catalog(games, vocab, histories, split.train_users, cfg.features)
        return lambda es: tower_scorer(trained.towers, histories, es, items, cfg)

    def fixed(scorer: Scorer) -> Fitted:
        return lambda _: scorer

    methods = {
        "popularity": timed(lambda: fixed(popularity_scorer(train))),
        "item-kNN": timed(lambda: fixed(item_knn_scorer(histories, train))),
        "EASE": timed(lambda: fixed(ease_scorer(histories, ease_weights(train, ease_lambda)))),
    }
    als = als_method(histories, train)
    if als is not None:
        methods["ALS (implicit)"] = timed(als)
    for name, cfg in towers.items():
        methods[name] = timed(lambda cfg=cfg: two_tower(cfg))
    return methods, ease_lambda


def one_run(
    run: Run, histories: Histories, vocab: Vocabulary, games
) -> dict[str, dict[str, float]]:
    """Every method's metrics on one split, the new-game scenario included."""
    n_games, test = len(vocab.game_ids), run.split.test
    ks = next(iter(run.towers.values())).eval.ks
    rng = np.random.default_rng(next(iter(run.towers.values())).split.seed)
    popularity = histories.play_counts(run.split.train_users, n_games)
    tail = np.ones(n_games, dtype=bool)
    tail[np.argsort(-popularity, kind="stable")[:HEAD_GAMES]] = False
    tail_test = restrict_targets(test, tail)
    short_test = shorten_inputs(test, SHORT_HISTORY, rng)

    methods, ease_lambda = fit_methods(run.towers, histories, vocab, games, run.split)
    table = {}
    for name, (fitted, seconds) in methods.items():
        scorer = fitted(test)
        short = ranking_metrics(fitted(short_test), histories, short_test, [10])
        table[name] = {
            **ranking_metrics(scorer, histories, test, ks),
            "long-tail recall@10": ranking_metrics(fitted(tail_test), histories, tail_test, [10])[
                "recall@10"
            ],
            "coverage@10": catalog_coverage(scorer, histories, test, 10, n_games),
            "short-history recall@10": short["recall@10"],
            "short-history ndcg@10": short["ndcg@10"],
            "seconds": seconds,
        }
    if run.new_games:
        with_metadata = np.array(
            [len(g) + len(t) > 0 for g, t in zip(games["genres"], games["tags"], strict=True)]
        )
        new = pick_new_games(with_metadata, NEW_GAME_SHARE, rng)
        cold, cold_split = without_games(histories, run.split, new)
        is_new = np.zeros(n_games, dtype=bool)
        is_new[new] = True
        new_test = restrict_targets(cold_split.test, is_new)
        cold_methods, _ = fit_methods(run.towers, cold, vocab, games, cold_split, ease_lambda)
        for name, (fitted, _) in cold_methods.items():
            found = ranking_metrics(fitted(new_test), cold, new_test, [10, 50])
            table[name]["new-game recall@10"] = found["recall@10"]
            table[name]["new-game recall@50"] = found["recall@50"]
    return table


def als_method(histories: Histories, train) -> Callable[[], Fitted] | None:
    """ALS from `implicit`, folding the held-out players in from their inputs (optional)."""
    try:
        from implicit.als import AlternatingLeastSquares
    except ImportError:
        return None

    def fit() -> Fitted:
        model = AlternatingLeastSquares(
            factors=64, regularization=0.05, iterations=15, random_state=0
        )
        model.fit(train, show_progress=False)
        items = np.asarray(model.item_factors)

        def scorer(_: EvalSet) -> Scorer:
            def score(eval_set: EvalSet, rows: slice) -> np.ndarray:
                inputs = input_matrix(histories, eval_set, rows, train.shape[1])
                users = model.recalculate_user(np.arange(inputs.shape[0]), inputs)
                return np.asarray(users) @ items.T

            return score

        return scorer

    return fit


def summarize(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and standard deviation over runs, per method and metric."""
    return {
        method: {
            m: (
                float(np.mean([r[method][m] for r in runs])),
                float(np.std([r[method][m] for r in runs])),
            )
            for m in runs[0][method]
        }
        for method in runs[0]
    }


def _table(
    summary: dict[str, dict[str, tuple[float, float]]], metrics: tuple[str, ...], seconds: bool
) -> list[str]:
    shown = [m for m in metrics if m in next(iter(summary.values()))]
    lines = [
        "| method | " + " | ".join(shown) + (" | fit s |" if seconds else " |"),
        "| --- |" + " ---: |" * (len(shown) + seconds),
    ]
    for method, row in summary.items():
        cells = [f"{row[m][0]:.4f} ± {row[m][1]:.4f}" for m in shown]
        if seconds:
            cells.append(f"{row['seconds'][0]:.0f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def markdown(summary: dict[str, dict[str, tuple[float, float]]], protocol: str) -> str:
    ease = summary["EASE"]
    lines = [
        f"Mean ± standard deviation over {protocol}.",
        "",
        *_table(summary, METRICS, seconds=True),
        "",
    ]
    for name in (n for n in summary if n.startswith(TWO_TOWER)):
        ratios = ", ".join(f"{m} {summary[name][m][0] / ease[m][0] - 1:+.1%}" for m in METRICS)
        lines.append(f"- {name} against EASE (relative, means): {ratios}.")
    lines += [
        "",
        "What the baselines cannot do (long tail: targets outside the "
        f"{HEAD_GAMES} most played games; coverage: share of the catalog in any top-10; "
        f"short history: 1-{SHORT_HISTORY} input games; new games: "
        f"{NEW_GAME_SHARE:.1%} of the games with metadata, never played in training):",
        "",
        *_table(summary, BEYOND, seconds=False),
    ]
    return "\n".join(lines)


def write_doc(table_md: str, summary: dict, out: Path) -> None:
    doc = out / "quality.md"
    text = doc.read_text(encoding="utf-8") if doc.is_file() else "# Recommendation quality\n"
    block = f"{START}\n{table_md}\n\n![quality](quality.png)\n{END}"
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.replace("\n", f"\n\n## Benchmark (benchmarks/quality.py)\n\n{block}\n", 1)
    doc.write_text(text, encoding="utf-8")
    shown = ("recall@10", "ndcg@10", "new-game recall@10", "long-tail recall@10")
    means = {method: {m: row[m][0] for m in shown if m in row} for method, row in summary.items()}
    (out / "quality.png").write_bytes(chart_png(means, "Steam 200k, held-out players (mean)"))


def variants(settings: TrainingSettings, texts: list[str]) -> dict[str, TrainingSettings]:
    """The default two-tower and each `--variant "name: key=value key=value"`."""
    towers = {TWO_TOWER: settings}
    for text in texts:
        name, _, overrides = text.partition(":")
        pairs = dict(parse_override(o) for o in overrides.split())
        towers[f"{TWO_TOWER}, {name.strip()}"] = with_overrides(settings, pairs)
    return towers


def _run_in_worker(job: tuple[Run, Path, Path]) -> dict[str, dict[str, float]]:
    run, plays, games = job
    dataset, vocab, histories = load_steam(plays, games)
    return one_run(run, histories, vocab, dataset.games_table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plays", type=Path, default=SHARED / "steam-200k-play.csv")
    parser.add_argument("--games", type=Path, default=SHARED / "steam-games.parquet")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "training.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        help="k-fold over players (every eligible player tested once) instead of --seeds",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="override a training setting: section.field=value (repeatable)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help='another two-tower row: "name: section.field=value ..."',
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="folds run side by side, one training thread each"
    )
    parser.add_argument(
        "--no-new-games",
        action="store_true",
        help="skip the new-game scenario (it fits every method again)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()

    overrides = dict(parse_override(text) for text in args.set)
    if args.jobs > 1:
        overrides["train.threads"] = 1
    settings = load_training_config(args.config, overrides)
    _, _, histories = load_steam(args.plays, args.games)
    if args.folds:
        plan = [(settings, s) for s in kfold_splits(histories, settings.split, args.folds)]
        protocol = (
            f"{args.folds} folds of players (split seed {settings.split.seed}): "
            f"{sum(len(s.test) for _, s in plan)} test players in all"
        )
    else:
        plan = seeded_splits(settings, histories, args.seeds)
        protocol = f"seeds {[s.split.seed for s, _ in plan]} (split and training seed)"
    if args.set:
        protocol += "; every two-tower with " + ", ".join(args.set)
    jobs = [
        (Run(variants(cfg, args.variant), split, not args.no_new_games), args.plays, args.games)
        for cfg, split in plan
    ]
    runs = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, table in enumerate(pool.map(_run_in_worker, jobs)):
            runs.append(table)
            print(
                f"run {i + 1}/{len(plan)}: "
                + ", ".join(
                    f"{m} R@10 {row['recall@10']:.4f} N@10 {row['ndcg@10']:.4f}"
                    for m, row in table.items()
                ),
                flush=True,
            )
    summary = summarize(runs)
    table_md = markdown(summary, protocol)
    print(table_md)
    if not args.no_doc:
        write_doc(table_md, summary, args.out)
        print(f"wrote {args.out / 'quality.md'} and {args.out / 'quality.png'}")


if __name__ == "__main__":
    main()
