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
    encode_history,
    encode_record,
)
from training.histories import Histories, top_genres
from training.retrieval import select_items
from training.towers import TwoTower

CFG = config_section("features", history_weight="log1p")
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
    cfg = config_section("features", history_weight="binary")
    user = encode_history(np.array([0, 1]), np.array([5.0, 5000.0]), np.zeros(2), np.zeros(0), cfg)
    np.testing.assert_allclose(user.game_weights, [0.5, 0.5])


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
    game_genres = [np.array([1]), np.array([1, 0]), np.array([], np.int64)]
    assert top_genres(np.array([0, 1]), np.array([1.0, 1.0]), game_genres, 1).tolist() == [1]
    assert top_genres(np.array([2]), np.array([1.0]), game_genres, 3).tolist() == []


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
        config_section("model", embedding_dim=8, id_dim=4, hidden_dims=[16]),
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
