"""The offline pipeline: processed data -> two-tower -> evaluation -> FAISS index -> model store."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from index import IndexReport, build_and_measure
from training import distributed
from training.config import TrainingSettings
from training.data.io import load_dataset
from training.evaluate import Split, baseline_table, ranking_metrics, split_users
from training.features import Vocabulary
from training.histories import Histories
from training.report import chart_png, format_table
from training.store import ModelArtifacts, save_model
from training.train import (
    TrainResult,
    eval_inputs,
    item_embeddings,
    played_catalog,
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


def with_popularity(
    games_table: pd.DataFrame, histories: Histories, users: np.ndarray
) -> pd.DataFrame:
    """The games table with each game's number of training players (cold start ranks by it)."""
    return games_table.assign(popularity=histories.play_counts(users, len(games_table)))


def run(
    settings: TrainingSettings, progress: bool = True, save: bool = True
) -> PipelineResult | None:
    """Train, evaluate, build the index, save. In a distributed run every rank trains and only
    rank 0 goes on (the others return None)."""
    dataset = load_dataset(settings.data.processed_dir)
    vocab = Vocabulary.from_games_table(dataset.games_table)
    histories = Histories.from_interactions(dataset.interactions, vocab)
    split = split_users(histories, settings.split)
    trained = train_two_tower(
        histories, split, vocab, dataset.games_table, settings, progress=progress
    )
    if not distributed.current().is_main:
        return None

    items = played_catalog(
        dataset.games_table, vocab, histories, split.train_users, settings.features
    )
    table = baseline_table(histories, split, len(vocab.game_ids), settings.eval)
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
            "epochs": trained.epochs,
            "machine": platform.platform(),
        },
        "split": {
            "train_users": len(split.train_users),
            "validation_users": len(split.validation),
            "test_users": len(split.test),
        },
        "index": asdict(report),
    }
    artifacts = ModelArtifacts(
        towers=trained.towers,
        vocab=vocab,
        games_table=with_popularity(dataset.games_table, histories, split.train_users),
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
            f"loss {m['training']['loss']}",
            index_report.summary(),
            *filter(None, [index_report.warning()]),
        ]
    )
