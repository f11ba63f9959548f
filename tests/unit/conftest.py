"""A small, untrained model in memory: the serving code's inputs, without any training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from index import build_index
from tests.conftest import config_section
from training.config import load_training_config, with_overrides
from training.features import Vocabulary, catalog_items
from training.store import ModelArtifacts
from training.towers import TwoTower
from training.train import item_embeddings

GAMES = pd.DataFrame(
    {
        "game_id": [f"g_{i}" for i in range(12)],
        "title": [f"Game {i}" for i in range(12)],
        "genres": [["rpg"] if i % 3 == 0 else ["puzzle"] if i % 3 == 1 else [] for i in range(12)],
        "tags": [["co-op"] if i % 2 else [] for i in range(12)],
        "popularity": [50 - 3 * i for i in range(12)],
    }
)


def tiny_artifacts(
    tag: str = "gamerec:tiny", seed: int = 0, overrides: dict[str, object] | None = None
) -> ModelArtifacts:
    """Random towers over a 12-game catalog, with an exact index of their game vectors."""
    torch.manual_seed(seed)
    settings = with_overrides(
        load_training_config(),
        {
            "model.embedding_dim": 8,
            "model.id_dim": 8,
            "model.hidden_dims": [16],
            **(overrides or {}),
        },
    )
    vocab = Vocabulary.from_games_table(GAMES)
    towers = TwoTower(len(vocab.game_ids), len(vocab.genres), len(vocab.tags), settings.model)
    embeddings = item_embeddings(towers, catalog_items(GAMES, vocab, settings.features))
    return ModelArtifacts(
        towers=towers,
        vocab=vocab,
        games_table=GAMES,
        item_embeddings=embeddings,
        index=build_index(embeddings, config_section("index", type="flat")),
        settings=settings,
        metrics={"index": {"type": "flat", "recall_at_10": 1.0}, "evaluation": {}, "training": {}},
        dataset="tiny",
        recall_queries=np.zeros((1, embeddings.shape[1]), np.float32),
        tag=tag,
    )


@pytest.fixture
def artifacts() -> ModelArtifacts:
    return tiny_artifacts()
