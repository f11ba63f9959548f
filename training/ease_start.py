"""Where training starts: low-rank EASE factors in the additive towers' game tables (issue 15).

EASE's item-item weights B (Steck, 2019) score a player's games x as x·B. A rank-r
factorization B ≈ P·Qᵀ has the additive two-tower's shape: a user's vector is the sum of the
played games' rows of P, a game's vector its row of Q. Fitted on the training players (λ
tuned on the validation players), with r = `model.embedding_dim`, P and Q become the
played-games and game-id tables (`TwoTower.start_from`), scaled by √`model.ease_init_scale`
each, and the softmax trains every weight from there. Nothing of EASE is kept apart or mixed
in later: the served model is the trained two-tower.

Measured on Steam over 5 folds (docs/quality.md, sixth round): started at random, the towers
end 4-5% below EASE; started here, 0.5% below it, level within the noise. Training moves them
little from the start (best epochs 1-10).
"""

from __future__ import annotations

import torch

from training.config import TrainingSettings, with_overrides
from training.evaluate import Split, train_matrix, tune_ease
from training.histories import Histories
from training.towers import TwoTower, starts_from_ease


def with_ease_start(settings: TrainingSettings, n_games: int, streamed: bool) -> TrainingSettings:
    """The settings as trained. Towers that start from EASE have `model.embedding_dim_from_ease`
    as their width (`model.embedding_dim`). Where EASE cannot be fitted, a catalog over
    `eval.ease_max_games` (a dense games x games inverse) or a streamed run (no training player
    in memory), `model.start_from_ease` is off: those towers start at random, `embedding_dim`
    wide."""
    model = settings.model
    if not starts_from_ease(model):
        return settings
    if streamed or n_games > settings.eval.ease_max_games:
        return with_overrides(settings, {"model.start_from_ease": False})
    return with_overrides(settings, {"model.embedding_dim": model.embedding_dim_from_ease})


def ease_factors(
    histories: Histories, split: Split, n_games: int, settings: TrainingSettings
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(P, Q, λ): B ≈ P·Qᵀ of rank `model.embedding_dim` (zero-padded past the catalog's
    size), B = EASE on the training players with λ from `eval.ease_lambdas` chosen on the
    validation players."""
    train = train_matrix(histories, split.train_users, n_games)
    lam, weights = tune_ease(histories, train, split.validation, settings.eval.ease_lambdas)
    rank = settings.model.embedding_dim
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


def start_from_ease(
    towers: TwoTower, histories: Histories, split: Split, settings: TrainingSettings
) -> dict[str, float]:
    """Put EASE's factors, scaled, into the towers' game tables; the fit's record. EASE's
    scores are regression outputs near 0-1, so the scale gives the softmax logits with a spread
    to start from."""
    n_games = towers.sizes["n_games"]
    user_games, item_ids, lam = ease_factors(histories, split, n_games, settings)
    root = settings.model.ease_init_scale**0.5
    towers.start_from(user_games * root, item_ids * root)
    return {"ease_lambda": lam, "rank": settings.model.embedding_dim}
