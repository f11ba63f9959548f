"""The additive towers and the dot-product scoring with a per-game bias in the index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from serving.recommender import Recommender
from tests.conftest import config_section
from tests.unit.conftest import tiny_artifacts
from training.config import load_training_config, with_overrides
from training.features import (
    ItemBatch,
    UserRecord,
    Vocabulary,
    catalog_items,
    collate_users,
    encode_record,
    with_known,
)
from training.histories import Histories
from training.retrieval import RetrievalTask, TrainingBatch
from training.towers import TwoTower, output_dim

GAMES = pd.DataFrame(
    {
        "game_id": ["g_0", "g_1", "g_2", "g_3"],
        "title": ["A", "B", "C", "D"],
        "genres": [["rpg"], ["rpg", "roguelike"], [], ["puzzle"]],
        "tags": [["co-op"], [], ["co-op"], []],
    }
)
VOCAB = Vocabulary.from_games_table(GAMES)
ADDITIVE = {"tower": "additive", "scoring": "dot_bias", "embedding_dim": 6}
FEATURES = config_section("features", history_norm="l2", history_weight="binary")


def additive_towers() -> TwoTower:
    torch.manual_seed(0)
    model = TwoTower(4, len(VOCAB.genres), len(VOCAB.tags), config_section("model", **ADDITIVE))
    with torch.no_grad():
        model.item_bias.weight.copy_(torch.tensor([[0.5], [-0.25], [0.0], [1.0]]))
    return model.eval()


def test_the_bias_rides_in_one_extra_dimension():
    model = additive_towers()
    assert output_dim(model.cfg) == 7
    users = collate_users([encode_record(UserRecord(time_played={"g_0": 5.0}), VOCAB, FEATURES)])
    u, v = model.user_embed(users), model.item_embed(catalog_items(GAMES, VOCAB, FEATURES))
    assert u.shape == (1, 7) and v.shape == (4, 7)
    assert u[0, -1] == 1.0
    torch.testing.assert_close(v[:, -1], torch.tensor([0.5, -0.25, 0.0, 1.0]))
    torch.testing.assert_close(u @ v.T, u[:, :-1] @ v[:, :-1].T + v[:, -1])  # u·v + b


def test_the_user_vector_is_the_sum_of_its_games_over_the_root_of_their_count():
    model = additive_towers()
    with torch.no_grad():
        model.user_dense.weight.zero_()  # leave out the counts' term
    record = UserRecord(time_played={"g_1": 30.0, "g_2": 600.0, "g_3": 1.0})
    u = model.user_embed(collate_users([encode_record(record, VOCAB, FEATURES)]))[0, :-1]
    expected = model.user_games.weight[[1, 2, 3]].sum(dim=0) / np.sqrt(3)
    torch.testing.assert_close(u, expected)


def one_player_batch() -> TrainingBatch:
    """Player a played g_0, g_1 (the input) and g_2 (hidden); nobody played g_3."""
    histories = Histories.from_interactions(
        pd.DataFrame(
            {
                "user_id": ["a", "a", "a"],
                "game_id": ["g_0", "g_1", "g_2"],
                "minutes_played": [1.0, 2.0, 3.0],
                "achievements": [0, 0, 0],
            }
        ),
        VOCAB,
    )
    inputs = histories.encode(0, np.array([0, 1]), np.zeros(0, np.int64), FEATURES)
    return TrainingBatch(
        users=collate_users([inputs]),
        input_rows=torch.tensor([0, 0]),
        input_cols=torch.tensor([0, 1]),
        target_rows=torch.tensor([0]),
        target_cols=torch.tensor([2]),
        target_minutes=np.array([3.0]),
    )


def full_softmax_loss(items: ItemBatch, **loss: object) -> float:
    """`one_player_batch`'s full-softmax loss under the additive towers."""
    model, batch = additive_towers(), one_player_batch()
    settings = with_overrides(
        load_training_config(),
        {
            **{f"loss.{k}": v for k, v in loss.items()},
            "loss.temperature": 1.0,
            "model.tower": "additive",
            "train.item_id_dropout": 0.0,
        },
    )
    task = RetrievalTask(settings, items, None, np.random.default_rng(0))
    candidates = task.candidates(batch)
    user = model.user_embed(batch.users)
    return task.loss(user, model.item_embed(candidates.items), batch, candidates).item()


def catalog_logits(items: ItemBatch) -> torch.Tensor:
    model = additive_towers()
    return (model.user_embed(one_player_batch().users) @ model.item_embed(items).T)[0]


@torch.no_grad()
def test_kept_games_are_weighted_targets_or_masked():
    items = catalog_items(GAMES, VOCAB, FEATURES)
    logits = catalog_logits(items)
    masked = -torch.log_softmax(logits[[2, 3]], dim=0)[0]  # games 0 and 1 out of the softmax
    log_p = torch.log_softmax(logits, dim=0)
    weighted = -(log_p[2] + 0.1 * log_p[0] + 0.1 * log_p[1])
    assert abs(full_softmax_loss(items, kept_weight=0.0) - float(masked)) < 1e-5
    assert abs(full_softmax_loss(items, kept_weight=0.1) - float(weighted)) < 1e-5


@torch.no_grad()
def test_games_nobody_played_in_training_are_not_negatives():
    """g_3 has no training plays (a new game): out of the softmax, unless
    `loss.unplayed_negatives`; a sampled softmax never draws it."""
    items = with_known(catalog_items(GAMES, VOCAB, FEATURES), np.array([True, True, True, False]))
    logits = catalog_logits(items)
    log_p = torch.log_softmax(logits[[0, 1, 2]], dim=0)
    without = -(log_p[2] + 0.1 * log_p[0] + 0.1 * log_p[1])
    log_p = torch.log_softmax(logits, dim=0)
    with_it = -(log_p[2] + 0.1 * log_p[0] + 0.1 * log_p[1])
    loss = {"kept_weight": 0.1}
    assert abs(full_softmax_loss(items, **loss, unplayed_negatives=False) - float(without)) < 1e-5
    assert abs(full_softmax_loss(items, **loss, unplayed_negatives=True) - float(with_it)) < 1e-5
    settings = with_overrides(load_training_config(), {"loss.kind": "sampled"})
    task = RetrievalTask(settings, items, np.array([5, 3, 1, 0]), np.random.default_rng(0))
    drawn = task.candidates(one_player_batch()).positions[1:]  # after the one target
    assert len(drawn) == settings.loss.uniform_negatives and 3 not in drawn.tolist()


@torch.no_grad()
@pytest.mark.parametrize("metadata_for_played", [False, True])
def test_a_new_game_is_placed_from_its_metadata_alone(metadata_for_played):
    torch.manual_seed(0)
    cfg = config_section("model", **ADDITIVE, metadata_for_played=metadata_for_played)
    model = TwoTower(4, len(VOCAB.genres), len(VOCAB.tags), cfg).eval()
    for table in (model.item_genres, model.item_tags, model.item_bias):
        table.weight.normal_()
    items = catalog_items(GAMES, VOCAB, FEATURES)
    known = model.item_embed(items)
    new = model.item_embed(with_known(items, np.array([True, False, True, True])))
    # g_1 is new: rpg and roguelike (no tags), averaged; bias from the tables' last column.
    metadata = model.item_genres.weight[[VOCAB.genre_index["rpg"], VOCAB.genre_index["roguelike"]]]
    torch.testing.assert_close(new[1], metadata.mean(dim=0))
    torch.testing.assert_close(new[[0, 2, 3]], known[[0, 2, 3]])
    own = torch.cat([model.item_ids.weight[1], model.item_bias.weight[1]])
    if metadata_for_played:
        torch.testing.assert_close(known[1], own + metadata.mean(dim=0))
    else:
        torch.testing.assert_close(known[1], own)


def test_id_dropout_places_a_share_of_games_from_metadata():
    settings = with_overrides(load_training_config(), {"train.item_id_dropout": 0.5})
    items = catalog_items(pd.concat([GAMES] * 250, ignore_index=True), VOCAB, FEATURES)
    task = RetrievalTask(settings, items, None, np.random.default_rng(0))
    assert 0.45 < (~task._dropped_ids(items).known.numpy()).mean() < 0.55
    played = np.arange(1000) % 3 > 0
    still_known = task._dropped_ids(with_known(items, played)).known.numpy()
    assert not (still_known & ~played).any()  # a new game never gets its id back


def test_similar_games_are_the_cosine_nearest_without_the_bias():
    artifacts = tiny_artifacts()
    overrides = {f"model.{k}": v for k, v in {**ADDITIVE, "embedding_dim": 8}.items()}
    artifacts.settings = with_overrides(artifacts.settings, overrides)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12, 8)).astype(np.float32)
    bias = np.full((12, 1), 100.0, np.float32)  # huge biases must not sway item similarity
    bias[5] = -100.0
    artifacts.item_embeddings = np.hstack([vectors, bias])
    ranked = Recommender(artifacts).similar(3, k=4)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = unit @ unit[3]
    cosine[3] = -np.inf
    assert ranked.positions.tolist() == np.argsort(-cosine)[:4].tolist()
    np.testing.assert_allclose(ranked.scores, np.sort(cosine)[::-1][:4], rtol=1e-5)


@pytest.mark.parametrize("tower", ["mlp", "additive"])
def test_inputs_switched_off_are_ignored(tower: str):
    torch.manual_seed(0)
    cfg = config_section(
        "model",
        tower=tower,
        user_genres=False,
        user_counts=False,
        item_metadata=False,
        embedding_dim=6,
        id_dim=4,
        hidden_dims=[8],
    )
    model = TwoTower(4, len(VOCAB.genres), len(VOCAB.tags), cfg).eval()
    plain = UserRecord(time_played={"g_0": 5.0})
    fancy = UserRecord(time_played={"g_0": 5000.0}, genres=["rpg"], achievements={"g_0": 9})
    fancy_minus_achievements = UserRecord(time_played={"g_0": 5000.0}, genres=["rpg"])
    users = collate_users(
        [encode_record(r, VOCAB, FEATURES) for r in (plain, fancy_minus_achievements, fancy)]
    )
    u = model.user_embed(users)
    torch.testing.assert_close(u[0], u[1])  # genres and counts make no difference
    no_metadata = GAMES.assign(genres=[[]] * 4, tags=[[]] * 4)
    torch.testing.assert_close(
        model.item_embed(catalog_items(GAMES, VOCAB, FEATURES)),
        model.item_embed(catalog_items(no_metadata, VOCAB, FEATURES)),
    )
