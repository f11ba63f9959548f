"""The synthetic default data set: deterministic, canonical, and structured like play data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from training.data import io as data_io
from training.data.io import write_dataset, write_dataset_pieces
from training.data.synthetic import GENRES, TAGS, _gumbel_top_k, _PlayModel, generate, synthesize
from training.schema import validate_dataset


@pytest.fixture(scope="module")
def default_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate()  # the default size; takes a few seconds


def test_same_seed_same_data_other_seed_other_data() -> None:
    first, second = generate(300, 120, seed=3), generate(300, 120, seed=3)
    pd.testing.assert_frame_equal(first[0], second[0])
    pd.testing.assert_frame_equal(first[1], second[1])
    other = generate(300, 120, seed=4)
    assert not first[0].equals(other[0])


def test_pieces_make_the_same_data_however_they_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written piece by piece (several row groups), the data reads back as the one-piece
    write; and a player's plays do not depend on how many players come after."""
    interactions, games = generate(2500, 60, seed=9)
    monkeypatch.setattr(data_io, "ROW_GROUP_PLAYS", 20_000)  # a piece is ~15,000 plays
    write_dataset_pieces(synthesize(2500, 60, seed=9)[1], games, tmp_path / "pieces", "synth")
    write_dataset(interactions, games, tmp_path / "whole", "synth")
    pieces = pq.ParquetFile(tmp_path / "pieces" / "interactions.parquet")
    assert pieces.metadata.num_row_groups == 3  # a piece each (1,000, 1,000, 500 players)
    assert pieces.read().equals(pq.read_table(tmp_path / "whole" / "interactions.parquet"))
    first, _ = generate(1000, 60, seed=9)
    pd.testing.assert_frame_equal(first, interactions.iloc[: len(first)])


def test_large_catalogs_draw_with_the_probabilities_of_gumbel_keys() -> None:
    """The rejection sampler of large catalogs picks each game as often as Gumbel-top-k."""
    rng = np.random.default_rng(0)
    n_games, n_players, picks = 40, 20_000, 5
    genre_mask = np.zeros((n_games, len(GENRES)), dtype=bool)
    for game in range(n_games):
        genre_mask[game, rng.choice(len(GENRES), size=rng.integers(1, 3), replace=False)] = True
    prevalence = np.full(len(GENRES), 1 / len(GENRES))
    model = _PlayModel.build(rng, genre_mask, prevalence, pd.Series(np.ones(n_games, bool)))
    taste = np.tile(rng.normal(0.0, 1.0, len(model.combo_mass)), (n_players, 1))
    factors = np.tile(rng.normal(0.0, 0.5, 8), (n_players, 1))
    counts = np.full(n_players, picks)
    _, games = model._draw_by_rejection(np.random.default_rng(1), taste, factors, counts)
    scores = model.log_popularity + taste[0, model.combo_of_game] + model.game_factors @ factors[0]
    keyed = _gumbel_top_k(np.random.default_rng(2), np.tile(scores, (n_players, 1)), counts)
    drawn = np.bincount(games, minlength=n_games) / n_players
    expected = np.bincount(np.concatenate(keyed), minlength=n_games) / n_players
    assert np.abs(drawn - expected).max() < 0.02, (drawn, expected)  # sd of a share <= 0.005


def test_shapes_and_ranges(default_data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    interactions, games = default_data
    validate_dataset(interactions, games, "synthetic")
    assert len(games) == 5_000
    assert games["game_id"].tolist()[:2] == ["g_0", "g_1"]
    assert games["title"].is_unique
    assert games["genres"].map(len).between(1, 3).all()
    assert games["tags"].map(len).between(3, 8).all()
    assert {g for gs in games["genres"] for g in gs} <= set(GENRES)
    assert {t for ts in games["tags"] for t in ts} <= set(TAGS)
    assert games["price"].ge(0).all() and games["release_year"].between(2005, 2024).all()

    per_user = interactions.groupby("user_id").size()
    assert len(per_user) == 20_000 and per_user.min() >= 1
    assert 9 <= per_user.median() <= 15
    assert 100 < per_user.max() <= 300
    assert (interactions["minutes_played"] >= 1).all()
    without = interactions["game_id"].isin(games.loc[~games["has_achievements"], "game_id"])
    assert interactions.loc[without, "achievements"].eq(0).all()
    assert interactions["achievements"].gt(0).mean() > 0.3


def test_popularity_follows_a_power_law(default_data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    interactions, games = default_data
    plays = interactions["game_id"].value_counts().to_numpy()
    top_share = plays[: len(games) // 100].sum() / plays.sum()
    assert top_share > 0.12  # a uniform catalog would give 0.01


def test_play_time_follows_taste(default_data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """Users play longer where a game's genres are common among their other games."""
    interactions, games = default_data
    u, g, users, genre_of = _matrices(interactions, games)
    n_other = np.asarray(users.sum(axis=1)).ravel()[u] - 1
    other_counts = (users @ genre_of)[u] - genre_of[g]  # genres of the user's other games
    overlap = (other_counts * genre_of[g]).sum(axis=1) / genre_of[g].sum(axis=1)
    keep = n_other >= 4
    taste = overlap[keep] / n_other[keep]
    log_minutes = np.log(interactions["minutes_played"].to_numpy()[keep])
    assert np.corrcoef(taste, log_minutes)[0, 1] > 0.1


def test_genre_taste_beats_popularity(default_data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """On held-out games, genre profile x popularity clearly beats popularity alone."""
    interactions, games = default_data
    _, _, users, genre_of = _matrices(interactions, games)
    rng = np.random.default_rng(0)
    heavy = np.flatnonzero(np.asarray(users.sum(axis=1)).ravel() >= 10)
    played = users[rng.choice(heavy, size=1000, replace=False)].toarray()
    held = played * (rng.random(played.shape) < 0.2)
    known = played - held
    log_pop = np.log1p(np.asarray(users.sum(axis=0)).ravel())

    profile = known @ genre_of
    profile /= profile.sum(axis=1, keepdims=True)
    genre_share = genre_of / genre_of.sum(axis=1, keepdims=True)
    taste = np.log(profile @ genre_share.T + 0.02) + log_pop
    popularity = np.tile(log_pop, (len(played), 1))
    assert _recall_at_10(taste, known, held) > 1.5 * _recall_at_10(popularity, known, held)


def _matrices(
    interactions: pd.DataFrame, games: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix, np.ndarray]:
    """Per interaction user and game positions, the 0/1 user x game and game x genre matrices."""
    u = pd.Categorical(interactions["user_id"]).codes.astype(np.int64)
    positions = pd.Series(np.arange(len(games)), index=games["game_id"])
    g = interactions["game_id"].map(positions).to_numpy()
    users = sp.csr_matrix((np.ones(len(u)), (u, g)), shape=(u.max() + 1, len(games)))
    genre_of = np.array([[genre in gs for genre in GENRES] for gs in games["genres"]], float)
    return u, g, users, genre_of


def _recall_at_10(scores: np.ndarray, known: np.ndarray, held: np.ndarray) -> float:
    scores = np.where(known > 0, -np.inf, scores)
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    hits = np.take_along_axis(held, top, axis=1).sum(axis=1)
    n_held = held.sum(axis=1)
    has_held = n_held > 0
    return float(np.mean(hits[has_held] / np.minimum(n_held[has_held], 10)))
