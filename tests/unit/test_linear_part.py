"""The towers' linear part: low-rank EASE factors mixed into the learned scores, in one inner
product (training/towers.py, training/linear_init.py)."""

from __future__ import annotations

import torch

from tests.conftest import config_section
from tests.unit.test_towers import FEATURES, GAMES, VOCAB
from training.config import load_training_config
from training.features import UserRecord, catalog_items, collate_users, encode_record
from training.linear_init import with_linear_part
from training.towers import TwoTower, output_dim

MODEL = {"tower": "additive", "scoring": "dot_bias", "embedding_dim": 6, "linear_rank": 3}
RECORDS = [
    UserRecord(time_played={"g_0": 5.0}),
    UserRecord(time_played={"g_1": 30.0, "g_3": 2.0}),
]


def towers_and_inputs():
    torch.manual_seed(0)
    model = TwoTower(4, len(VOCAB.genres), len(VOCAB.tags), config_section("model", **MODEL))
    with torch.no_grad():
        model.item_bias.weight.normal_()
    users = collate_users([encode_record(r, VOCAB, FEATURES) for r in RECORDS])
    return model.eval(), users, catalog_items(GAMES, VOCAB, FEATURES)


@torch.no_grad()
def test_before_mixing_the_linear_part_adds_nothing():
    model, users, items = towers_and_inputs()
    u, v = model.user_embed(users), model.item_embed(items)
    assert u.shape[1] == v.shape[1] == output_dim(model.cfg) == 6 + 3 + 1
    assert (u[:, 6:9] == 0).all() and u[0, -1] == 1.0
    torch.testing.assert_close(u @ v.T, u[:, :6] @ v[:, :6].T + v[:, -1])


@torch.no_grad()
def test_training_before_the_mix_leaves_the_zero_columns_out():
    """The training softmax's work is the width of the vectors: the linear part's zero
    columns are left out until it is mixed in, and the scores are the same."""
    model, users, items = towers_and_inputs()
    served = model.user_embed(users) @ model.item_embed(items).T
    model.train()
    u, v = model.user_embed(users), model.item_embed(items)
    assert u.shape[1] == v.shape[1] == 6 + 1
    torch.testing.assert_close(u @ v.T, served)
    model.mix_linear(torch.randn(4, 3), torch.randn(4, 3), 0.0, items)  # α 0, in training
    assert model.training and model.user_embed(users).shape[1] == 6 + 1
    model.mix_linear(torch.randn(4, 3), torch.randn(4, 3), 0.5, items)
    assert model.user_embed(users).shape[1] == output_dim(model.cfg)


@torch.no_grad()
def test_the_mix_is_the_standardized_scores_weighted_by_alpha():
    model, users, items = towers_and_inputs()
    learned = model.user_embed(users) @ model.item_embed(items).T  # before mixing
    p, q = torch.randn(4, 3), torch.randn(4, 3)
    linear = (
        (
            users.game_weights.new_zeros(2, 4).index_put_(
                (
                    torch.repeat_interleave(torch.arange(2), torch.tensor([1, 2])),
                    users.game_positions,
                ),
                users.game_weights,
            )
        )
        @ p
        @ q.T
    )
    alpha = 0.3
    model.mix_linear(p, q, alpha, items)
    mixed = model.user_embed(users) @ model.item_embed(items).T

    def standardized(scores: torch.Tensor) -> torch.Tensor:
        return scores / scores.std(dim=1, keepdim=True)

    expected = (1 - alpha) * standardized(learned) + alpha * standardized(linear)
    torch.testing.assert_close(mixed, expected, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_a_new_game_gets_no_linear_score():
    model, users, items = towers_and_inputs()
    model.mix_linear(torch.randn(4, 3), torch.randn(4, 3), 0.5, items)
    unknown = items.__class__(**{**items.__dict__, "known": torch.tensor([1, 1, 0, 1]).bool()})
    assert (model.item_embed(unknown)[2, 6:9] == 0).all()


def test_no_linear_part_where_ease_cannot_be_fitted():
    settings = load_training_config()
    rank, too_many = settings.model.linear_rank, settings.eval.ease_max_games + 1
    assert rank > 0
    assert with_linear_part(settings, 1000, streamed=False).model.linear_rank == rank
    assert with_linear_part(settings, too_many, streamed=False).model.linear_rank == 0
    assert with_linear_part(settings, 1000, streamed=True).model.linear_rank == 0
