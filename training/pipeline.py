"""The offline pipeline: processed data -> two-tower -> evaluation -> FAISS index -> model store."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from index import IndexReport, build_and_measure
from training import distributed
from training.config import EvalConfig, TrainingSettings
from training.data.io import open_dataset
from training.data.stream import TrainingPlays, training_plays
from training.ease_start import with_ease_start
from training.evaluate import Split, baseline_table, popularity_scorer, ranking_metrics
from training.features import Vocabulary
from training.histories import Histories
from training.report import chart_png, format_table
from training.store import ModelArtifacts, save_model
from training.train import (
    TrainResult,
    catalog_with_plays,
    eval_inputs,
    item_embeddings,
    tower_scorer,
    train_two_tower,
    user_embeddings,
)

TWO_TOWER = "two-tower"


@dataclass
class PipelineResult:
    artifacts: ModelArtifacts
    split: Split
    histories: Histories
    train: TrainResult
    table: dict[str, dict[str, float]]
    tag: str = ""


def with_popularity(games_table: pd.DataFrame, train_counts: np.ndarray) -> pd.DataFrame:
    """The games table with each game's number of training players (cold start ranks by it)."""
    return games_table.assign(popularity=train_counts)


def baselines(
    plays: TrainingPlays, n_games: int, cfg: EvalConfig, ease_lambda: float | None
) -> dict[str, dict[str, float]]:
    """`baseline_table`; a streamed run holds no training player in memory, so popularity only
    (from the streamed counts: a one-row matrix of them, which popularity_scorer sums)."""
    if plays.stream is None:
        return baseline_table(plays.histories, plays.split, n_games, cfg, ease_lambda)
    counts = sp.csr_matrix(plays.train_counts[None, :].astype(np.float32))
    scorer = popularity_scorer(counts)
    return {"popularity": ranking_metrics(scorer, plays.histories, plays.split.test, cfg.ks)}


def run(
    settings: TrainingSettings, progress: bool = True, save: bool = True
) -> PipelineResult | None:
    """Train, evaluate, build the index, save. In a distributed run every rank trains and only
    rank 0 goes on (the others return None)."""
    dataset = open_dataset(settings.data.processed_dir)
    vocab = Vocabulary.from_games_table(dataset.games_table)
    started = time.perf_counter()
    plays = training_plays(dataset, vocab, settings, progress)
    settings = with_ease_start(settings, len(vocab.game_ids), plays.stream is not None)
    data_seconds = time.perf_counter() - started
    histories, split = plays.histories, plays.split
    trained = train_two_tower(
        histories, split, vocab, dataset.games_table, settings, progress, plays.stream
    )
    if not distributed.current().is_main:
        return None

    items = catalog_with_plays(dataset.games_table, vocab, plays.train_counts, settings.features)
    # A start at EASE was tuned on the same validation players: its λ is the baseline's.
    lam = trained.ease_start.get("ease_lambda") if not trained.ease_start.get("dropout") else None
    table = baselines(plays, len(vocab.game_ids), settings.eval, lam)
    scorer = tower_scorer(trained.towers, histories, split.test, items, settings)
    table[TWO_TOWER] = ranking_metrics(scorer, histories, split.test, settings.eval.ks)

    embeddings = item_embeddings(trained.towers, items)
    queries = user_embeddings(trained.towers, eval_inputs(histories, split.validation, settings))
    queries = queries[: settings.index.recall_queries]
    index, report = build_and_measure(embeddings, settings.index, queries, settings.train.seed)
    metrics = {
        "evaluation": table,
        "training": {
            "seconds": round(trained.seconds, 1),
            "best_epoch": trained.best_epoch,
            "best_validation_recall@10": trained.best_validation,
            "loss": trained.loss_kind,
            "streamed": plays.stream is not None,
            "data_seconds": round(data_seconds, 1),  # reading the plays (streamed: both passes)
            "epochs": trained.epochs,
            "ease_start": trained.ease_start,
            "machine": platform.platform(),
        },
        "split": {
            "train_users": plays.n_train_players,
            "validation_users": len(split.validation),
            "test_users": len(split.test),
        },
        "index": asdict(report),
    }
    artifacts = ModelArtifacts(
        towers=trained.towers,
        vocab=vocab,
        games_table=with_popularity(dataset.games_table, plays.train_counts),
        item_embeddings=embeddings,
        index=index,
        settings=settings,
        metrics=metrics,
        dataset=dataset.name,
        recall_queries=queries,
        chart_png=chart_png(table, f"{dataset.name}: held-out users, full catalog"),
    )
    result = PipelineResult(artifacts, split, histories, trained, table)
    if save:
        result.tag = artifacts.tag = save_model(artifacts)
    return result


def summary(result: PipelineResult) -> str:
    m = result.artifacts.metrics
    index_report = IndexReport(**m["index"])
    return "\n".join(
        [
            format_table(
                result.table,
                f"Test users: {m['split']['test_users']} (data set: {result.artifacts.dataset})",
            ),
            f"\ntraining: {m['training']['seconds']} s, best epoch {m['training']['best_epoch']}, "
            f"loss {m['training']['loss']}, {_start(m['training'].get('ease_start'))}",
            index_report.summary(),
            *filter(None, [index_report.warning()]),
        ]
    )


def _start(ease_start: dict[str, float] | None) -> str:
    if not ease_start:
        return "started at random"
    fit = f"DLAE, dropout {ease_start['dropout']:g}" if ease_start.get("dropout") else "EASE"
    return f"started from {fit} (rank {ease_start['rank']}, λ={ease_start['ease_lambda']:g})"
