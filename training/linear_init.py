"""The towers' linear part: low-rank EASE, mixed into the learned scores (issue 15).

EASE's item-item weights B (Steck, 2019) score a player's games x as x·B. A rank-r
factorization B ≈ P·Qᵀ has the additive two-tower's shape: a user's vector is the sum of the
played games' rows of P, a game's vector its row of Q. Fitted on the training players (λ
tuned on the validation players), frozen, and mixed with the learned towers' scores after
training (`TwoTower.mix_linear`), it stays one inner product and one FAISS search.

Measured on Steam (docs/quality.md): softmax training started from these factors drifts below
them, while the learned towers and EASE err differently, so their standardized mix beats each.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from training.config import TrainingSettings, with_overrides
from training.evaluate import Split, train_matrix, tune_ease
from training.features import ItemBatch
from training.histories import Histories
from training.towers import TwoTower


def with_linear_part(settings: TrainingSettings, n_games: int, streamed: bool) -> TrainingSettings:
    """The settings as trained: `model.linear_rank` 0 where EASE cannot be fitted, a catalog over
    `eval.ease_max_games` (a dense games x games inverse) or a streamed run (no training player
    in memory), so that no index carries a part of zeros."""
    if settings.model.linear_rank and (streamed or n_games > settings.eval.ease_max_games):
        return with_overrides(settings, {"model.linear_rank": 0})
    return settings


def ease_factors(
    histories: Histories, split: Split, n_games: int, settings: TrainingSettings
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(P, Q, λ): B ≈ P·Qᵀ of rank `model.linear_rank` (zero-padded past the catalog's size),
    B = EASE on the training players with λ from `eval.ease_lambdas` chosen on the validation
    players."""
    train = train_matrix(histories, split.train_users, n_games)
    lam, weights = tune_ease(histories, train, split.validation, settings.eval.ease_lambdas)
    rank = settings.model.linear_rank
    kept = min(rank, n_games)
    generator = torch.random.get_rng_state()  # the factorization's sketch must not shift seeds
    u, s, v = torch.svd_lowrank(torch.from_numpy(weights), q=min(kept + 32, n_games), niter=6)
    torch.random.set_rng_state(generator)
    root = s[:kept].sqrt()
    pad = torch.zeros(n_games, rank - kept)
    return (
        torch.cat([u[:, :kept] * root, pad], dim=1),
        torch.cat([v[:, :kept] * root, pad], dim=1),
        float(lam),
    )


def choose_mix(
    towers: TwoTower,
    factors: tuple[torch.Tensor, torch.Tensor, float],
    items: ItemBatch,
    alphas: list[float],
    validate: Callable[[], dict[str, float]],
) -> dict[str, float]:
    """Mix the factors in at each α of `alphas`, keep the one whose validation
    recall@10 + ndcg@10 (`validate`) is highest; returns the fit's record."""
    user_games, item_ids, lam = factors
    tried = {}
    for alpha in alphas:
        towers.mix_linear(user_games, item_ids, alpha, items)
        metrics = validate()
        tried[alpha] = metrics["recall@10"] + metrics["ndcg@10"]
    best = max(tried, key=tried.__getitem__)
    towers.mix_linear(user_games, item_ids, best, items)
    return {"ease_lambda": lam, "alpha": best, "val_recall+ndcg@10": round(tried[best], 4)}
