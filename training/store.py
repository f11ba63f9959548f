"""The `gamerec` model in the BentoML model store: one custom artifact with every part.

Files in a model version:
    towers.pt             both towers' state dict (read back with weights_only=True: no pickle)
    item_embeddings.npy   the item tower's outputs (the index's vectors), catalog order
    recall_queries.npy    validation users' embeddings, to measure a rebuilt index's recall
    index.faiss           the FAISS index over them (ids = catalog positions)
    catalog.parquet       the game catalog with training popularity
    vocab.json            games, genres and tags vocabularies
    training.yaml         the training config used
    metrics.json          evaluation table, training summary, index report
    evaluation.png        the evaluation chart
A model is checked whole before it serves (`check_consistency`).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import faiss
import numpy as np
import pandas as pd
import torch
import yaml

from index import index_bytes, read_index
from training.config import TrainingSettings
from training.data.io import atomic_write_bytes
from training.features import Vocabulary
from training.schema import validate_games
from training.towers import TwoTower, output_dim

TOWERS, EMBEDDINGS, INDEX, CATALOG = (
    "towers.pt",
    "item_embeddings.npy",
    "index.faiss",
    "catalog.parquet",
)
QUERIES = "recall_queries.npy"
VOCAB, CONFIG, METRICS, CHART = "vocab.json", "training.yaml", "metrics.json", "evaluation.png"
REQUIRED_FILES = (TOWERS, EMBEDDINGS, INDEX, CATALOG, VOCAB, CONFIG, METRICS, QUERIES)
CATALOG_COLUMNS = ("game_id", "title", "genres", "tags", "popularity")  # what serving reads


class ModelIntegrityError(ValueError):
    """A stored model whose parts are missing or disagree; it must not serve."""


class ModelNotFound(ModelIntegrityError):
    """No model by that tag in the store (or not a valid tag at all)."""


@dataclass
class ModelArtifacts:
    """Everything one model version holds, in memory."""

    towers: TwoTower
    vocab: Vocabulary
    games_table: pd.DataFrame  # the catalog: one row a game, in catalog order, with popularity
    item_embeddings: np.ndarray
    index: faiss.Index
    settings: TrainingSettings
    metrics: dict[str, Any]
    dataset: str
    recall_queries: np.ndarray  # validation users' embeddings: recall of a rebuilt index
    tag: str = "in-memory"
    created: str = ""
    chart_png: bytes = b""  # the evaluation chart, kept with the model

    @functools.cached_property
    def game_vectors(self) -> np.ndarray:
        """Unit-norm game vectors without the bias dimension: item-item cosine similarity
        (`/similar`, "because you played"), whatever the scoring of users."""
        vectors = self.item_embeddings[:, : self.settings.model.embedding_dim]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def save_model(artifacts: ModelArtifacts) -> str:
    """Save a new version of the model; the store only keeps it if every file was written."""
    check_consistency(artifacts)
    labels = {"dataset": artifacts.dataset, "index": artifacts.metrics["index"]["type"]}
    metadata = {
        "dataset": artifacts.dataset,
        "n_games": len(artifacts.games_table),
        "embedding_dim": int(artifacts.item_embeddings.shape[1]),
        "index_type": artifacts.metrics["index"]["type"],
        "index_recall_at_10": artifacts.metrics["index"]["recall_at_10"],
        "evaluation": artifacts.metrics["evaluation"],
    }
    with bentoml.models.create(
        artifacts.settings.model_name, labels=labels, metadata=metadata
    ) as bm:
        path = Path(bm.path)
        torch.save(artifacts.towers.state_dict(), path / TOWERS)
        np.save(path / EMBEDDINGS, artifacts.item_embeddings, allow_pickle=False)
        np.save(path / QUERIES, artifacts.recall_queries, allow_pickle=False)
        atomic_write_bytes(path / INDEX, index_bytes(artifacts.index))
        artifacts.games_table.to_parquet(path / CATALOG, index=False)
        artifacts.vocab.save(path / VOCAB)
        (path / CONFIG).write_text(
            yaml.safe_dump(artifacts.settings.model_dump(mode="json")), encoding="utf-8"
        )
        (path / METRICS).write_text(json.dumps(artifacts.metrics, indent=2), encoding="utf-8")
        if artifacts.chart_png:
            (path / CHART).write_bytes(artifacts.chart_png)
    return str(bm.tag)


def get_model(tag: str) -> bentoml.Model:
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound as err:
        raise ModelNotFound(
            f"model {tag!r} is not in the BentoML model store (BENTOML_HOME="
            f"{os.environ.get('BENTOML_HOME', '~/bentoml')}); run `gamerec train` first"
        ) from err
    except (ValueError, bentoml.exceptions.BentoMLException) as err:  # a malformed tag
        raise ModelNotFound(f"{tag!r} is not a valid model tag: {err}") from err


def load_model(tag: str) -> ModelArtifacts:
    """Load and check a stored model; refuse it with a message naming the broken part."""
    bm = get_model(tag)
    return load_model_dir(
        Path(bm.path),
        tag=str(bm.tag),
        created=bm.info.creation_time.isoformat(),
        dataset=bm.info.labels.get("dataset", "unknown"),
    )


def load_model_dir(
    path: Path, tag: str, created: str = "", dataset: str = "unknown"
) -> ModelArtifacts:
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ModelIntegrityError(f"model {tag}: missing {', '.join(missing)} in {path}")
    settings = _read(path / CONFIG, tag, _read_settings)
    vocab = _read(path / VOCAB, tag, Vocabulary.load)
    towers = TwoTower(len(vocab.game_ids), len(vocab.genres), len(vocab.tags), settings.model)
    state = _read(
        path / TOWERS, tag, lambda p: torch.load(p, weights_only=True, map_location="cpu")
    )
    try:
        towers.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelIntegrityError(
            f"model {tag}: {TOWERS} does not fit the config and vocabulary: "
            f"{str(err).splitlines()[0]}"
        ) from err
    towers.eval()
    artifacts = ModelArtifacts(
        towers=towers,
        vocab=vocab,
        games_table=_read(
            path / CATALOG, tag, lambda p: validate_games(pd.read_parquet(p), p.name)
        ),
        item_embeddings=_read(path / EMBEDDINGS, tag, _load_array),
        recall_queries=_read(path / QUERIES, tag, _load_array),
        index=_read(path / INDEX, tag, read_index),
        settings=settings,
        metrics=_read(path / METRICS, tag, lambda p: json.loads(p.read_text(encoding="utf-8"))),
        dataset=dataset,
        tag=tag,
        created=created,
        chart_png=(path / CHART).read_bytes() if (path / CHART).is_file() else b"",
    )
    check_consistency(artifacts)
    return artifacts


# Settings added after models were first stored, with the value those models were trained
# with: a model saved before a setting existed reads as it behaved then.
ADDED_SETTINGS = {
    ("model", "tower"): "mlp",
    ("model", "scoring"): "cosine",
    ("loss", "kept_weight"): 0.0,
    ("loss", "unplayed_negatives"): True,
    ("model", "user_genres"): True,
    ("model", "user_counts"): True,
    ("model", "item_metadata"): True,
    ("train", "item_id_dropout"): 0.0,
    ("model", "metadata_for_played"): True,
    ("model", "start_from_ease"): False,  # started at random; the two below change nothing then
    ("model", "ease_init_scale"): 30.0,
    ("model", "metadata_ridge"): 0.0,
    ("model", "start_dropouts"): [0.0],  # only the start of training; served weights are stored
    ("train", "learning_rate_from_ease"): 1e-4,
    ("train", "patience_from_ease"): 10,
    ("features", "history_power"): 0.0,  # only read with history_weight "power", new with it
    ("model", "start_side_rows"): {  # only the start of training; served weights are stored
        "genres_and_tags": 0.0,
        "developers": 0.0,
        "title_words": 0.0,
        "title_word_max_games": 30,
    },
    # Older models have a concrete index.type, which none of these change; only the target's
    # check (a warning on a rebuild below it) is new.
    ("index", "recall_target"): 0.95,
    ("index", "exact_budget_ms"): 1.0,
    ("index", "refine_factor"): 4,
    ("index", "max_probe_fraction"): 0.25,
    ("index", "approximate"): "ivfsq",
    ("index", "recall_margin"): 0.0,
    # Older models read their plays whole; the streaming settings change nothing after training.
    ("data", "streaming"): "never",
    ("data", "stream_above_plays"): 5_000_000,
    ("data", "stream_buffer_plays"): 2_000_000,
}


# Settings removed since, with the value that makes a model stored with them read as it is now.
# A model whose value differs was made differently and cannot be served by this code.
REMOVED_SETTINGS = {
    # The frozen low-rank EASE part mixed into the scores (2026-11 to 2026-12-01): gone, as the
    # product's ranking is the trained two-tower's alone (issue 15).
    ("model", "linear_rank"): 0,
    ("train", "linear_mixes"): [0.0],
}


def _read_settings(path: Path) -> TrainingSettings:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for (section, name), value in REMOVED_SETTINGS.items():
        section_raw = raw.get(section) if isinstance(raw, dict) else None
        if isinstance(section_raw, dict) and section_raw.pop(name, value) != value:
            raise ValueError(
                f"{section}.{name} is set: the model was trained by an older GameRec with "
                "a part this one no longer has; train a new one (`gamerec train`)"
            )
    for (section, name), value in ADDED_SETTINGS.items():
        if isinstance(raw, dict) and isinstance(raw.get(section), dict):
            raw[section].setdefault(name, value)
    return TrainingSettings.model_validate(raw)


def _load_array(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _read(path: Path, tag: str, reader):  # a reader of any file kind
    try:
        return reader(path)
    except Exception as err:  # every reader's failure means the same: a broken part
        raise ModelIntegrityError(f"model {tag}: cannot read {path.name}: {err}") from err


def check_consistency(a: ModelArtifacts) -> None:
    """The parts must agree: catalog and vocabularies, dimensions, counts, finite vectors."""
    missing = sorted(set(CATALOG_COLUMNS) - set(a.games_table.columns))
    if missing:
        raise ModelIntegrityError(f"model {a.tag} refused: {CATALOG} lacks columns {missing}")
    n_games, dim = len(a.vocab.game_ids), output_dim(a.settings.model)
    problems = []
    expected = Vocabulary.from_games_table(a.games_table)
    for part, name in (("game_ids", "games"), ("genres", "genres"), ("tags", "tags")):
        if getattr(expected, part) != getattr(a.vocab, part):
            problems.append(f"the {name} vocabulary in {VOCAB} differs from the {CATALOG} {name}")
    if a.item_embeddings.shape != (n_games, dim):
        problems.append(
            f"{EMBEDDINGS} has shape {a.item_embeddings.shape}, expected ({n_games}, {dim})"
        )
    elif not np.isfinite(a.item_embeddings).all():
        problems.append(f"{EMBEDDINGS} holds non-finite values")
    if a.recall_queries.ndim != 2 or a.recall_queries.shape[1] != dim:
        problems.append(f"{QUERIES} has shape {a.recall_queries.shape}, expected (n, {dim})")
    if a.index.d != dim:
        problems.append(f"{INDEX} has dimension {a.index.d}, the user tower outputs {dim}")
    if a.index.ntotal != n_games:
        problems.append(f"{INDEX} holds {a.index.ntotal} vectors for {n_games} catalog games")
    if a.towers.sizes != {
        "n_games": n_games,
        "n_genres": len(a.vocab.genres),
        "n_tags": len(a.vocab.tags),
    }:
        problems.append(f"{TOWERS} sizes {a.towers.sizes} differ from {VOCAB}")
    if problems:
        raise ModelIntegrityError(f"model {a.tag} refused: " + "; ".join(problems))
