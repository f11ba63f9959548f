"""The offline pipeline: processed data -> two-tower -> evaluation -> FAISS index -> model store."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from index import build_and_measure
from training.config import IndexConfig, TrainingSettings
from training.data.io import load_dataset
from training.evaluate import Split, baseline_table, ranking_metrics, split_users
from training.features import Histories, Vocabulary, catalog_items
from training.report import chart_png, format_table
from training.store import ModelArtifacts, save_model
from training.train import (
    TrainResult,
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


def build_index(
    embeddings: np.ndarray, queries: np.ndarray, cfg: IndexConfig, seed: int
) -> tuple[Any, dict[str, Any]]:
    """The index over item embeddings, with its recall@10 against exact search measured."""
    index, report = build_and_measure(embeddings, cfg, queries[: cfg.recall_queries], seed)
    return index, asdict(report)


def with_popularity(games: pd.DataFrame, histories: Histories, users: np.ndarray) -> pd.DataFrame:
    """The catalog with each game's number of training players (cold start ranks by it)."""
    played = np.concatenate([histories.games[histories.span(u)] for u in users])
    return games.assign(popularity=np.bincount(played, minlength=len(games)).astype(np.int64))


def run(settings: TrainingSettings, progress: bool = True, save: bool = True) -> PipelineResult:
    dataset = load_dataset(settings.data.processed_dir)
    vocab = Vocabulary.from_catalog(dataset.games)
    histories = Histories.from_interactions(dataset.interactions, vocab)
    split = split_users(histories, settings.split)
    trained = train_two_tower(histories, split, vocab, dataset.games, settings, progress=progress)

    items = catalog_items(dataset.games, vocab, settings.features)
    table = baseline_table(histories, split, len(vocab.games), settings.eval)
    scorer = tower_scorer(trained.model, histories, split.test, items, settings)
    table[TWO_TOWER] = ranking_metrics(scorer, histories, split.test, settings.eval.ks)

    embeddings = item_embeddings(trained.model, items)
    queries = user_embeddings(trained.model, eval_inputs(histories, split.validation, settings))
    index, report = build_index(embeddings, queries, settings.index, settings.train.seed)
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
        "index": report,
    }
    artifacts = ModelArtifacts(
        model=trained.model,
        vocab=vocab,
        catalog=with_popularity(dataset.games, histories, split.train_users),
        item_embeddings=embeddings,
        index=index,
        settings=settings,
        metrics=metrics,
        dataset=dataset.name,
        recall_queries=queries[: settings.index.recall_queries],
        chart_png=chart_png(table, f"{dataset.name}: held-out users, full catalog"),
    )
    result = PipelineResult(artifacts, split, histories, trained, table)
    if save:
        result.tag = artifacts.tag = save_model(artifacts)
    return result


def summary(result: PipelineResult) -> str:
    m = result.artifacts.metrics
    return "\n".join(
        [
            format_table(
                result.table,
                f"Test users: {m['split']['test_users']} (data set: {result.artifacts.dataset})",
            ),
            f"\ntraining: {m['training']['seconds']} s, best epoch {m['training']['best_epoch']}, "
            f"loss {m['training']['loss']}",
            f"index: {m['index']['type']}, recall@10 vs exact {m['index']['recall_at_10']:.4f}",
        ]
    )
