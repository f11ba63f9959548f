"""Training's start from EASE: the towers' game tables at low-rank EASE factors
(training/ease_start.py), so that the untrained towers already rank as the closed-form model
does."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from tests.conftest import config_section
from tests.unit.test_towers import FEATURES, GAMES, VOCAB
from training.config import SideRowsConfig, load_training_config, with_overrides
from training.ease_start import (
    ease_factors,
    metadata_matrix,
    metadata_start,
    side_rows,
    start_from_ease,
    with_ease_start,
)
from training.evaluate import EvalSet, Split, dlae_weights, ease_weights, train_matrix
from training.features import UserRecord, catalog_items, collate_users, encode_record
from training.histories import Histories
from training.towers import TwoTower, starts_from_ease
from training.train import parameter_groups

MODEL = {
    "tower": "additive",
    "scoring": "dot_bias",
    "embedding_dim": 4,
    "start_from_ease": True,
    "start_dropouts": [0.0],  # at EASE itself
    "start_side_rows": {  # plays alone
        "genres_and_tags": 0.0,
        "developers": 0.0,
        "title_words": 0.0,
        "title_word_max_games": 30,
    },
}
# Four players over the four games of the towers' tests; everyone trains.
PLAYS = pd.DataFrame(
    {
        "user_id": ["a", "a", "b", "b", "b", "c", "c", "d"],
        "game_id": ["g_0", "g_1", "g_1", "g_2", "g_3", "g_0", "g_3", "g_2"],
        "minutes_played": [10.0] * 8,
        "achievements": [0] * 8,
    }
)


def histories_and_split() -> tuple[Histories, Split]:
    histories = Histories.from_interactions(PLAYS, VOCAB)
    nobody = EvalSet(users=np.zeros(0, np.int64), inputs=[], targets=[])
    return histories, Split(train_users=np.arange(4), validation=nobody, test=nobody)


def settings_with(history_weight: str = "binary", **model: object):
    return with_overrides(
        load_training_config(),
        {
            **{f"model.{k}": v for k, v in {**MODEL, **model}.items()},
            "eval.ease_lambdas": [1.0],
            "features.history_weight": history_weight,
            "features.history_power": 0.5,
        },
    )


def test_the_factors_are_ease_at_full_rank():
    histories, split = histories_and_split()
    user_games, item_ids, record = ease_factors(histories, split, 4, settings_with())
    weights = ease_weights(train_matrix(histories, split.train_users, 4), 1.0)
    assert record == {"ease_lambda": 1.0, "dropout": 0.0, "rank": 4}
    product = user_games @ item_ids.T
    torch.testing.assert_close(product, torch.from_numpy(weights), atol=1e-4, rtol=0)


def test_with_a_dropout_the_factors_are_dlae_at_full_rank():
    histories, split = histories_and_split()
    settings = settings_with(start_dropouts=[0.5])
    user_games, item_ids, record = ease_factors(histories, split, 4, settings)
    assert record["dropout"] == 0.5
    weights = dlae_weights(train_matrix(histories, split.train_users, 4), 1.0, 0.5)
    assert (
        np.abs(weights - ease_weights(train_matrix(histories, split.train_users, 4), 1.0)).max()
        > 0.01
    )
    torch.testing.assert_close(
        user_games @ item_ids.T, torch.from_numpy(weights), atol=1e-4, rtol=0
    )


def test_the_start_counts_each_game_as_the_user_tower_weighs_it():
    """With `features.history_weight: power` the start is EASE on plays weighted
    (1 + minutes) ** power, not on 0/1 plays: the linear model the towers start at is the
    one their user tower's weights query."""
    plays = PLAYS.assign(minutes_played=[0.0, 300.0, 5.0, 60.0, 1.0, 1000.0, 20.0, 3.0])
    histories = Histories.from_interactions(plays, VOCAB)
    split = histories_and_split()[1]
    settings = settings_with(history_weight="power")
    user_games, item_ids, _ = ease_factors(histories, split, 4, settings)
    weighted = train_matrix(histories, split.train_users, 4, lambda m: (1 + m) ** 0.5)
    assert weighted[0, 1] == pytest.approx(301**0.5)
    expected, binary = (
        ease_weights(weighted, 1.0),
        ease_weights(train_matrix(histories, split.train_users, 4), 1.0),
    )
    assert np.abs(expected - binary).max() > 0.01
    torch.testing.assert_close(
        user_games @ item_ids.T, torch.from_numpy(expected), atol=1e-4, rtol=0
    )


SERIES = GAMES.assign(
    title=["Portal", "Portal 2: The Sequel", "The Witcher", "Stardew Valley"],
    developer=["Valve", "Valve", None, "ConcernedApe"],
)


def side_rows_with(**weights: float):
    cfg = {**MODEL["start_side_rows"], **weights}
    items = catalog_items(SERIES, VOCAB, FEATURES)
    return side_rows(SERIES, items, len(VOCAB.genres), len(VOCAB.tags), SideRowsConfig(**cfg))


def test_side_rows_are_the_games_of_each_genre_tag_developer_and_series_word():
    genres_and_tags = side_rows_with(genres_and_tags=0.5).toarray()
    # rpg: g_0 and g_1; roguelike: g_1; puzzle: g_3; co-op: g_0 and g_2
    assert sorted(map(tuple, genres_and_tags.tolist())) == sorted(
        [(0.5, 0.5, 0, 0), (0, 0.5, 0, 0), (0, 0, 0, 0.5), (0.5, 0, 0.5, 0)]
    )
    developers = side_rows_with(developers=2.0).toarray()  # a game without one is in none
    assert sorted(map(tuple, developers.tolist())) == [(0, 0, 0, 2), (2, 2, 0, 0)]
    # Words of 3+ letters in 2 to title_word_max_games titles: "portal" and "the"
    words = side_rows_with(title_words=1.0).toarray()
    assert sorted(map(tuple, words.tolist())) == [(0, 1, 1, 0), (1, 1, 0, 0)]
    assert side_rows_with(title_words=1.0, title_word_max_games=2).shape == (2, 4)
    assert side_rows_with().shape == (0, 4)  # every weight 0: plays alone


def test_side_rows_join_the_play_matrix_the_start_is_fitted_to():
    """Collective EASE: the start is EASE on the players' rows and the side rows together."""
    histories, split = histories_and_split()
    rows = side_rows_with(genres_and_tags=0.7, developers=1.0, title_words=1.0)
    user_games, item_ids, _ = ease_factors(histories, split, 4, settings_with(), rows)
    plays = train_matrix(histories, split.train_users, 4)
    expected = ease_weights(sp.vstack([plays, rows]), 1.0)
    assert np.abs(expected - ease_weights(plays, 1.0)).max() > 0.01
    torch.testing.assert_close(
        user_games @ item_ids.T, torch.from_numpy(expected), atol=1e-4, rtol=0
    )


@torch.no_grad()
def test_started_towers_score_a_player_as_ease_does_times_the_scale():
    """The towers' score of every game, before any training step, is the player's EASE score
    (over the l2-normalized history) times `model.ease_init_scale`, plus nothing else: the
    biases start at zero and the metadata only places games without plays."""
    histories, split = histories_and_split()
    settings = settings_with()
    towers = TwoTower(4, len(VOCAB.genres), len(VOCAB.tags), settings.model).eval()
    items = catalog_items(GAMES, VOCAB, FEATURES)
    record = start_from_ease(towers, histories, split, items, GAMES, settings)
    assert record == {"ease_lambda": 1.0, "dropout": 0.0, "rank": 4}
    user = collate_users([encode_record(UserRecord(time_played={"g_1": 5.0}), VOCAB, FEATURES)])
    scores = towers.user_embed(user) @ towers.item_embed(items).T
    weights = ease_weights(train_matrix(histories, split.train_users, 4), 1.0)
    expected = settings.model.ease_init_scale * weights[VOCAB.game_ids.index("g_1")]
    np.testing.assert_allclose(scores[0].numpy(), expected, atol=1e-3)


def test_metadata_matrix_weighs_genres_and_tags_as_the_item_bags_do():
    items = catalog_items(GAMES, VOCAB, FEATURES)
    x = metadata_matrix(items, len(VOCAB.genres), len(VOCAB.tags)).numpy()
    rpg, roguelike = VOCAB.genre_index["rpg"], VOCAB.genre_index["roguelike"]
    co_op = len(VOCAB.genres) + VOCAB.tag_index["co-op"]
    assert x[0, rpg] == 1.0 and x[0, co_op] == 1.0 and x[0].sum() == 2.0
    assert x[1, rpg] == x[1, roguelike] == 0.5 and x[1].sum() == 1.0
    assert x[2, co_op] == 1.0 and x[2].sum() == 1.0  # no genres, one tag
    assert x[3].sum() == 1.0


@torch.no_grad()
def test_a_game_without_plays_starts_near_the_played_games_that_share_its_metadata():
    """g_3 (puzzle) is new; with a small ridge λ the fit reproduces the played games' vectors
    from their metadata, and g_3's vector comes from the genre it shares with none of them:
    zero. A new game with g_0's metadata would get g_0's vector."""
    settings = settings_with(metadata_ridge=1e-6)
    towers = TwoTower(4, len(VOCAB.genres), len(VOCAB.tags), settings.model).eval()
    vectors = torch.randn(4, 4)
    known = torch.tensor([True, True, True, False])
    items = replace(catalog_items(GAMES, VOCAB, FEATURES), known=known)
    genres, tags = metadata_start(vectors, items, len(VOCAB.genres), len(VOCAB.tags), 1e-6)
    towers.start_metadata_from(genres, tags)
    placed = towers.item_embed(replace(items, known=torch.zeros(4, dtype=torch.bool)))[:, :-1]
    torch.testing.assert_close(placed[:3], vectors[:3], atol=1e-3, rtol=0)
    torch.testing.assert_close(placed[3], torch.zeros(4), atol=1e-6, rtol=0)
    assert (towers.item_embed(items)[:, -1] == 0).all()  # the biases are not fitted


def test_only_additive_dot_bias_towers_start_from_ease():
    assert starts_from_ease(config_section("model", **MODEL))
    assert not starts_from_ease(config_section("model", **{**MODEL, "tower": "mlp"}))
    assert not starts_from_ease(config_section("model", **{**MODEL, "scoring": "cosine"}))
    assert not starts_from_ease(config_section("model", **{**MODEL, "start_from_ease": False}))


def test_no_ease_start_where_ease_cannot_be_fitted_and_each_start_has_its_width():
    settings = load_training_config()
    model, too_many = settings.model, settings.eval.ease_max_games + 1
    assert model.start_from_ease and model.embedding_dim_from_ease != model.embedding_dim
    started = with_ease_start(settings, 1000, streamed=False)
    assert started.model.start_from_ease
    assert started.model.embedding_dim == model.embedding_dim_from_ease
    assert with_ease_start(started, 1000, streamed=False) == started  # applied twice: the same
    for at_random in (
        with_ease_start(settings, too_many, streamed=False),
        with_ease_start(settings, 1000, streamed=True),
    ):
        assert not at_random.model.start_from_ease
        assert at_random.model.embedding_dim == model.embedding_dim
    mlp = with_overrides(settings, {"model.tower": "mlp"})
    assert with_ease_start(mlp, 1000, streamed=False) == mlp


def test_the_scale_must_be_positive():
    with pytest.raises(ValueError, match="ease_init_scale"):
        config_section("model", ease_init_scale=0.0)


def test_the_started_tables_learn_at_their_own_rate_and_the_rest_at_the_usual_one():
    settings = settings_with()
    towers = TwoTower(4, len(VOCAB.genres), len(VOCAB.tags), settings.model)
    started, others = parameter_groups(towers, settings)
    assert started["lr"] == settings.train.learning_rate_from_ease
    assert started["params"] == [towers.user_games.weight, towers.item_ids.weight]
    assert "lr" not in others  # the optimizer's default: train.learning_rate
    every = started["params"] + others["params"]
    assert len(every) == len(list(towers.parameters())) == len({id(p) for p in every})
    at_random = settings_with(start_from_ease=False)
    towers = TwoTower(4, len(VOCAB.genres), len(VOCAB.tags), at_random.model)
    (random_start,) = parameter_groups(towers, at_random)
    assert len(random_start["params"]) == len(every) and "lr" not in random_start
