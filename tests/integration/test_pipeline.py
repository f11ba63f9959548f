"""Synthetic data -> short training -> evaluation -> index -> model store, and back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from index import build_index
from serving.recommender import Recommender
from tests.conftest import config_section, quick_settings
from training.config import with_overrides
from training.features import UserRecord
from training.pipeline import run
from training.store import ModelIntegrityError, load_model, save_model


def test_two_tower_clearly_beats_popularity(trained):
    table = trained.table
    assert set(table) == {"popularity", "ease", "two-tower"}
    assert table["two-tower"]["recall@10"] > 1.3 * table["popularity"]["recall@10"], table
    assert table["two-tower"]["ndcg@10"] > table["popularity"]["ndcg@10"], table


def test_sampled_softmax_regime_also_learns(small_data: Path):
    """The large-catalog loss (in-batch + uniform negatives, logQ) on the same data."""
    settings = quick_settings(small_data)
    settings = settings.model_copy(
        update={
            "loss": settings.loss.model_copy(update={"kind": "sampled", "uniform_negatives": 64})
        }
    )
    result = run(settings, progress=False, save=False)
    assert result.train.loss_kind == "sampled"
    table = result.table
    assert table["two-tower"]["recall@10"] > 1.3 * table["popularity"]["recall@10"], table


def test_training_keeps_the_best_validation_epoch(trained):
    epochs = trained.train.epochs
    best = max(epochs, key=lambda e: e["val_recall@10"])
    assert trained.train.best_epoch == best["epoch"]
    assert trained.train.best_validation == best["val_recall@10"]


def test_split_holds_users_out_of_training(trained):
    split = trained.split
    held_out = set(split.validation.users) | set(split.test.users)
    assert held_out.isdisjoint(split.train_users)
    for inputs, targets, user in zip(
        split.test.inputs, split.test.targets, split.test.users, strict=True
    ):
        games = trained.histories.game_positions[trained.histories.span(user)]
        assert set(games[inputs]).isdisjoint(targets)
        assert len(inputs) + len(targets) == len(games)


def test_metrics_and_chart_are_stored_with_the_model(trained):
    stored = load_model(trained.tag)
    assert stored.metrics["evaluation"]["two-tower"] == pytest.approx(trained.table["two-tower"])
    assert stored.chart_png.startswith(b"\x89PNG")
    assert stored.dataset == "synthetic-small"
    assert stored.metrics["index"]["recall_at_10"] == 1.0


def _records(trained, n: int = 20) -> list[UserRecord]:
    h, games = trained.histories, trained.artifacts.vocab.game_ids
    records = []
    for user in trained.split.test.users[:n]:
        span = h.span(user)
        records.append(
            UserRecord(
                time_played={
                    games[g]: float(m)
                    for g, m in zip(h.game_positions[span], h.minutes[span], strict=True)
                },
                achievements={
                    games[g]: int(a)
                    for g, a in zip(h.game_positions[span], h.achievements[span], strict=True)
                },
            )
        )
    return records


def test_store_round_trip_gives_identical_recommendations(trained):
    records = _records(trained) + [UserRecord(genres=["rpg"]), UserRecord()]
    in_memory = Recommender(trained.artifacts).recommend(records, k=10)
    loaded = Recommender.from_store(trained.tag).recommend(records, k=10)
    for a, b in zip(in_memory, loaded, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_recommendations_never_include_played_games(trained):
    records = _records(trained)
    recommender = Recommender(trained.artifacts)
    for record, ranked in zip(records, recommender.recommend(records, k=50), strict=True):
        played = {recommender.artifacts.vocab.game_index[g] for g in record.time_played}
        assert len(ranked.positions) == 50
        assert played.isdisjoint(ranked.positions.tolist())
        assert np.all(np.diff(ranked.scores) <= 1e-6)


ADDITIVE = {
    "model.tower": "additive",
    "model.scoring": "dot_bias",
    "features.history_norm": "l2",
    "loss.kept_weight": 0.1,
    "loss.temperature": 1.0,
}


def test_additive_towers_with_a_game_bias_learn_and_serve_what_they_evaluate(small_data: Path):
    settings = with_overrides(quick_settings(small_data), ADDITIVE)
    result = run(settings, progress=False, save=True)
    table = result.table
    assert table["two-tower"]["recall@10"] > 1.3 * table["popularity"]["recall@10"], table
    stored = load_model(result.tag)
    # user [u, 1], game [v, b]: the embedding (as wide as trained), the bias
    trained_width = result.artifacts.settings.model.embedding_dim
    assert trained_width == settings.model.embedding_dim_from_ease  # it started from EASE
    assert stored.index.d == stored.settings.model.embedding_dim + 1 == trained_width + 1
    assert stored.metrics["index"]["recall_at_10"] == 1.0
    records = _records(result)
    in_memory = Recommender(result.artifacts).recommend(records, k=10)
    loaded = Recommender.from_store(result.tag).recommend(records, k=10)
    for a, b in zip(in_memory, loaded, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)


def test_rebuilt_index_is_a_new_version_with_measured_recall(trained):
    artifacts = load_model(trained.tag)
    cfg = config_section("index", type="hnsw")
    index = build_index(artifacts.item_embeddings, cfg)
    tag = save_model(
        replace(
            artifacts,
            index=index,
            metrics={**artifacts.metrics, "index": {"type": "hnsw", "recall_at_10": 0.99}},
        )
    )
    assert tag != trained.tag
    assert load_model(tag).index.ntotal == len(artifacts.vocab.game_ids)


def test_unknown_model_tag_says_how_to_make_one():
    with pytest.raises(ModelIntegrityError, match="gamerec train"):
        load_model("gamerec:doesnotexist")


def test_training_starts_from_ease_with_the_baselines_lambda(trained):
    """The default towers start at EASE's factors, its λ tuned on the validation players and
    the EASE baseline's λ too."""
    training = trained.artifacts.metrics["training"]
    settings = trained.artifacts.settings
    assert settings.model.start_from_ease
    assert training["ease_start"]["ease_lambda"] in settings.eval.ease_lambdas
    assert training["ease_start"]["ease_lambda"] == trained.table["ease"]["lambda"]
    assert training["ease_start"]["rank"] == settings.model.embedding_dim
