"""Where training starts: low-rank EASE factors in the additive towers' game tables (issue 15).

EASE's item-item weights B (Steck, 2019) score a player's games x as x·B. A rank-r
factorization B ≈ P·Qᵀ has the additive two-tower's shape: a user's vector is the sum of the
played games' rows of P, a game's vector its row of Q. Fitted on the training players (λ
tuned on the validation players), with r = `model.embedding_dim`, P and Q become the
played-games and game-id tables (`TwoTower.start_from`), scaled by √`model.ease_init_scale`
each, and the softmax trains every weight from there. DLAE (Steck, 2020), the linear
autoencoder trained with input dropout, has the same shape: the start is EASE or DLAE with an
input dropout of `model.start_dropouts`, whichever scores best on the validation players.
That model is fitted to more than EASE sees: each played game counts as the user tower weighs
it (`features.history_weight`, minutes to a small power), and the games' metadata joins the
players as extra rows (`model.start_side_rows`: genres, tags, developers, series words of the
titles; collective EASE), so that games of one series or studio are close even with few
players in common. The genre and tag tables start at the ridge regression of those game
vectors on the games' genres and tags (`model.metadata_ridge`), so that a new game, placed
from its metadata alone, starts where the played games that share it are. Nothing of EASE is
kept apart or mixed in later: the served model is the trained two-tower.

Measured on Steam over 5 folds (docs/quality.md, sixth to ninth rounds): started at random,
the towers end 4-5% below EASE; started from EASE or DLAE on 0/1 plays, level with it; started
from this fit, +2.6% recall@10 and +2.2% ndcg@10 over EASE (+47% on the long tail). Training
moves them little from the start, which validation keeps where no epoch beats it.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import partial

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from training.config import SideRowsConfig, TrainingSettings, with_overrides
from training.evaluate import Split, dlae_weights, ease_weights, train_matrix, tune_ease
from training.features import ItemBatch, history_weights
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


def linear_weights(train: sp.csr_matrix, dropout_and_lambda: tuple[float, float]) -> np.ndarray:
    """EASE's item-item weights (dropout 0) or DLAE's."""
    dropout, lam = dropout_and_lambda
    return ease_weights(train, lam) if dropout == 0 else dlae_weights(train, lam, dropout)


def ease_factors(
    histories: Histories,
    split: Split,
    n_games: int,
    settings: TrainingSettings,
    metadata_rows: sp.csr_matrix | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(P, Q, the fit's record): B ≈ P·Qᵀ of rank `model.embedding_dim` (zero-padded past the
    catalog's size), B = EASE or DLAE on the training players, the model (an input dropout of
    `model.start_dropouts`, 0 for EASE) and λ (of `eval.ease_lambdas`) chosen on the
    validation players. Each played game counts as the user tower weighs it
    (`features.history_weight`); `metadata_rows` (made by `side_rows`) join the players'
    rows."""
    weigh = partial(history_weights, cfg=settings.features)
    train = train_matrix(histories, split.train_users, n_games, weigh)
    if metadata_rows is not None:
        train = sp.vstack([train, metadata_rows], format="csr")
    lambdas = settings.eval.ease_lambdas
    candidates = [(p, lam) for p in settings.model.start_dropouts for lam in lambdas]
    (dropout, lam), weights = tune_ease(
        histories, train, split.validation, candidates, linear_weights, weigh
    )
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
        {"ease_lambda": float(lam), "dropout": float(dropout), "rank": rank},
    )


def side_rows(
    games_table: pd.DataFrame, items: ItemBatch, n_genres: int, n_tags: int, cfg: SideRowsConfig
) -> sp.csr_matrix:
    """The games' metadata as rows of the play matrix (collective EASE: side information as
    extra users, Ning & Karypis 2012, Steck 2019): a row per genre and per tag (as the item
    tower reads them), per developer, and per title word of 3+ letters that 2 to
    `title_word_max_games` games share, each 'playing' those games with its weight. Two
    games of one series or studio then co-occur even where few players have both.
    `games_table` is in catalog order, as `items` is."""
    labels = metadata_matrix(items, n_genres, n_tags).numpy().T > 0
    developers = games_table.get("developer", pd.Series([None] * len(games_table)))
    words = [set(re.findall(r"[a-z0-9]{3,}", str(title).lower())) for title in games_table["title"]]
    counts = Counter(w for game in words for w in game)
    in_series = [[w for w in game if 2 <= counts[w] <= cfg.title_word_max_games] for game in words]
    blocks = [
        (cfg.genres_and_tags, sp.csr_matrix(labels, dtype=np.float64)),
        (
            cfg.developers,
            _membership([[d] if isinstance(d, str) and d else [] for d in developers]),
        ),
        (cfg.title_words, _membership(in_series)),
    ]
    return sp.vstack(
        [weight * rows for weight, rows in blocks if weight > 0]
        or [sp.csr_matrix((0, len(words)))],
        format="csr",
    )


def _membership(labels_of_games: list[list[str]]) -> sp.csr_matrix:
    """Labels x games, 1 where a game has the label."""
    index = {
        label: i for i, label in enumerate(sorted({lb for ls in labels_of_games for lb in ls}))
    }
    rows = [index[label] for labels in labels_of_games for label in labels]
    cols = [game for game, labels in enumerate(labels_of_games) for _ in labels]
    shape = (len(index), len(labels_of_games))
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)


def metadata_matrix(items: ItemBatch, n_genres: int, n_tags: int) -> torch.Tensor:
    """Each game's genres and tags as one row, weighted as the item tower's bags weigh them:
    (n_games, n_genres + n_tags)."""

    def rows(values: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor, width: int):
        games = torch.bucketize(torch.arange(len(values)), offsets, right=True) - 1
        out = torch.zeros(len(offsets), width)
        out.index_put_((games, values), weights, accumulate=True)
        return out

    return torch.cat(
        [
            rows(items.genres, items.genre_offsets, items.genre_weights, n_genres),
            rows(items.tags, items.tag_offsets, items.tag_weights, n_tags),
        ],
        dim=1,
    )


def metadata_start(
    game_vectors: torch.Tensor, items: ItemBatch, n_genres: int, n_tags: int, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(genre rows, tag rows): the ridge regression W = (XᵀX + λI)⁻¹XᵀV of the played games'
    vectors V on their metadata X, fitted on the games with plays (`items.known`). A new
    game's vector from its metadata, X·W, is then near the games that share its genres and
    tags, which the softmax alone barely learns from a start at EASE (docs/quality.md)."""
    x = metadata_matrix(items, n_genres, n_tags)
    known = items.known & (x.sum(dim=1) > 0)
    x, v = x[known].double(), game_vectors[known].double()
    gram = x.T @ x + lam * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(gram, x.T @ v).float()
    return w[:n_genres], w[n_genres:]


def start_from_ease(
    towers: TwoTower,
    histories: Histories,
    split: Split,
    items: ItemBatch,
    games_table: pd.DataFrame,
    settings: TrainingSettings,
) -> dict[str, float]:
    """Put EASE's factors, scaled, into the towers' game tables, and the metadata fitted to
    them into the genre and tag tables (`model.metadata_ridge` > 0); the fit's record. EASE's
    scores are regression outputs near 0-1, so the scale gives the softmax logits with a spread
    to start from."""
    n_games, n_genres, n_tags = (towers.sizes[k] for k in ("n_games", "n_genres", "n_tags"))
    rows = side_rows(games_table, items, n_genres, n_tags, settings.model.start_side_rows)
    user_games, item_ids, record = ease_factors(histories, split, n_games, settings, rows)
    root = settings.model.ease_init_scale**0.5
    towers.start_from(user_games * root, item_ids * root)
    if settings.model.metadata_ridge > 0 and settings.model.item_metadata:
        genres, tags = metadata_start(
            item_ids * root, items, n_genres, n_tags, settings.model.metadata_ridge
        )
        towers.start_metadata_from(genres, tags)
    return record
