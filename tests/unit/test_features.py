import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import config_section
from training.features import (
    UserRecord,
    Vocabulary,
    catalog_items,
    collate_users,
    encode_histories,
    encode_history,
    encode_record,
)
from training.histories import Histories, genre_matrix, top_genres
from training.retrieval import select_items
from training.towers import TwoTower

CFG = config_section("features", history_weight="log1p", history_norm="mean")
GAMES = pd.DataFrame(
    {
        "game_id": ["g_0", "g_1", "g_2"],
        "title": ["A", "B", "C"],
        "genres": [["rpg"], ["rpg", "roguelike"], []],
        "tags": [["open world"], ["difficult"], ["co-op", "difficult"]],
    }
)
VOCAB = Vocabulary.from_games_table(GAMES)


def test_vocabulary_positions_follow_the_catalog():
    assert VOCAB.game_ids == ["g_0", "g_1", "g_2"]
    assert VOCAB.genres == ["roguelike", "rpg"]
    assert VOCAB.tags == ["co-op", "difficult", "open world"]


def test_play_time_weights_are_log1p_and_normalized():
    user = encode_history(
        np.array([0, 1]), np.array([0.0, np.e - 1]), np.zeros(2), np.zeros(0), CFG
    )
    np.testing.assert_allclose(user.game_weights, [1 / 3, 2 / 3], rtol=1e-6)
    assert user.achievement_weights.sum() == 0


def test_binary_weights_ignore_minutes():
    cfg = config_section("features", history_weight="binary", history_norm="mean")
    user = encode_history(np.array([0, 1]), np.array([5.0, 5000.0]), np.zeros(2), np.zeros(0), cfg)
    np.testing.assert_allclose(user.game_weights, [0.5, 0.5])


def test_power_weights_grow_slowly_with_minutes():
    cfg = config_section("features", history_weight="power", history_power=0.5, history_norm="mean")
    user = encode_history(np.array([0, 1]), np.array([0.0, 8.0]), np.zeros(2), np.zeros(0), cfg)
    np.testing.assert_allclose(user.game_weights, [1 / 4, 3 / 4], rtol=1e-6)  # 1 and 9 ** 0.5


def test_history_is_capped_at_the_most_played_games():
    cfg = config_section("features", max_history=2)
    user = encode_history(np.arange(3), np.array([1.0, 100.0, 50.0]), np.zeros(3), np.zeros(0), cfg)
    assert user.game_positions.tolist() == [1, 2]


def test_record_ignores_and_lists_unknown_games_and_genres():
    record = UserRecord(
        time_played={"g_1": 120.0, "g_404": 3.0},
        achievements={"g_0": 15, "g_x": 1},
        genres=["RPG", "roguelike", "jazz"],
    )
    user = encode_record(record, VOCAB, CFG)
    assert user.game_positions.tolist() == [1, 0]  # g_0 has achievements: played for 0 minutes
    assert user.unknown_games == ("g_404", "g_x")
    assert user.unknown_genres == ("jazz",)
    assert user.genre_positions.tolist() == [0, 1]
    np.testing.assert_allclose(user.achievement_weights, [0.0, 1.0])


def test_empty_record_encodes_to_empty_bags():
    user = encode_record(UserRecord(), VOCAB, CFG)
    assert len(user.game_positions) == 0 and len(user.genre_positions) == 0
    assert user.dense.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_top_genres_follow_the_weights():
    genres = genre_matrix([np.array([1]), np.array([1, 0]), np.array([], np.int64)], 2)
    rows, picked = top_genres(
        np.array([0, 0, 1, 2, 2]),
        np.array([0, 1, 2, 1, 2]),
        np.array([1.0, 1.0, 1.0, 1.0, 1.0]),
        genres,
        n_rows=3,
        n=1,
    )
    # Row 0: genre 1 twice; row 1: a game without genres; row 2: a tie, the lower position.
    assert rows.tolist() == [0, 2] and picked.tolist() == [1, 0]
    rows, picked = top_genres(np.array([0, 0]), np.array([0, 1]), np.ones(2), genres, 1, 3)
    assert rows.tolist() == [0, 0] and picked.tolist() == [0, 1]  # sorted, only present ones


@pytest.mark.parametrize("history_norm", ["mean", "l2"])
@pytest.mark.parametrize("history_weight", ["binary", "log1p", "power"])
def test_batch_encoding_equals_one_history_at_a_time(history_weight, history_norm):
    """Training encodes a batch at once; serving one request at a time: the same features."""
    cfg = config_section(
        "features", history_weight=history_weight, history_norm=history_norm, max_history=3
    )
    rng = np.random.default_rng(0)
    histories = [rng.choice(8, size=n, replace=False) for n in (4, 0, 1, 3)]
    minutes = [rng.integers(0, 500, len(h)).astype(float) for h in histories]
    achievements = [rng.integers(0, 3, len(h)).astype(float) for h in histories]
    genres = [np.array([0, 2]), np.array([1]), np.zeros(0, np.int64), np.zeros(0, np.int64)]
    one_by_one = collate_users(
        [
            encode_history(*row, cfg)
            for row in zip(histories, minutes, achievements, genres, strict=True)
        ]
    )

    def flat(parts):
        return np.concatenate(parts)

    def rows_of(parts):
        return np.repeat(np.arange(len(parts)), [len(p) for p in parts])

    batch = encode_histories(
        rows_of(histories),
        flat(histories),
        flat(minutes),
        flat(achievements),
        rows_of(genres),
        flat(genres),
        len(histories),
        cfg,
    )
    for name in vars(one_by_one):
        torch.testing.assert_close(getattr(batch, name), getattr(one_by_one, name), msg=name)


def test_histories_are_csr_by_user():
    plays = pd.DataFrame(
        {
            "user_id": ["u_b", "u_a", "u_b"],
            "game_id": ["g_2", "g_0", "g_1"],
            "minutes_played": [1.0, 2.0, 3.0],
            "achievements": [0, 1, 0],
        }
    )
    h = Histories.from_interactions(plays, VOCAB)
    assert h.user_ids.tolist() == ["u_a", "u_b"]
    assert h.lengths().tolist() == [1, 2]
    assert h.game_positions[h.span(1)].tolist() == [1, 2]
    with pytest.raises(ValueError, match="g_9"):
        Histories.from_interactions(plays.assign(game_id="g_9"), VOCAB)


def test_towers_give_unit_vectors_of_the_configured_size():
    torch.manual_seed(0)
    model = TwoTower(
        3,
        len(VOCAB.genres),
        len(VOCAB.tags),
        config_section(
            "model", tower="mlp", scoring="cosine", embedding_dim=8, id_dim=4, hidden_dims=[16]
        ),
    )
    model.eval()
    users = collate_users(
        [
            encode_record(UserRecord(time_played={"g_0": 10.0}), VOCAB, CFG),
            encode_record(UserRecord(), VOCAB, CFG),  # an empty bag must still work
            encode_record(UserRecord(genres=["rpg"]), VOCAB, CFG),
        ]
    )
    u = model.user_embed(users)
    i = model.item_embed(catalog_items(GAMES, VOCAB, CFG))
    assert u.shape == (3, 8) and i.shape == (3, 8)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(i.norm(dim=1), torch.ones(3))


def test_selected_candidates_match_the_full_catalog():
    torch.manual_seed(0)
    model = TwoTower(3, len(VOCAB.genres), len(VOCAB.tags), config_section("model", hidden_dims=[]))
    model.eval()
    items = catalog_items(GAMES, VOCAB, CFG)
    full = model.item_embed(items)
    picked = model.item_embed(select_items(items, torch.tensor([2, 0])))
    torch.testing.assert_close(picked, full[[2, 0]])
