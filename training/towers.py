"""The two towers. Both end in L2-normalized embeddings, so inner product ranks by cosine."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ModelConfig
from training.features import N_DENSE, ItemBatch, UserBatch


def _mlp(in_dim: int, hidden: list[int], out_dim: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def _bag(
    table: nn.Embedding, values: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted sum of embeddings per bag; an empty bag gives zeros."""
    return F.embedding_bag(values, table.weight, offsets, mode="sum", per_sample_weights=weights)


class TwoTower(nn.Module):
    """User tower: played games (by play time and by achievements), preferred genres, counts.
    Item tower: game id, genres, tags."""

    def __init__(self, n_games: int, n_genres: int, n_tags: int, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.id_dim
        self.sizes = {"n_games": n_games, "n_genres": n_genres, "n_tags": n_tags}
        self.user_games = nn.Embedding(n_games, d)
        self.user_genres = nn.Embedding(max(n_genres, 1), d)
        self.user_mlp = _mlp(3 * d + N_DENSE, cfg.hidden_dims, cfg.embedding_dim, cfg.dropout)
        self.item_ids = nn.Embedding(n_games, d)
        self.item_genres = nn.Embedding(max(n_genres, 1), d)
        self.item_tags = nn.Embedding(max(n_tags, 1), d)
        self.item_mlp = _mlp(3 * d, cfg.hidden_dims, cfg.embedding_dim, cfg.dropout)
        for table in (
            self.user_games,
            self.user_genres,
            self.item_ids,
            self.item_genres,
            self.item_tags,
        ):
            nn.init.normal_(table.weight, std=0.05)

    def user_embed(self, x: UserBatch) -> torch.Tensor:
        parts = [
            _bag(self.user_games, x.game_positions, x.game_offsets, x.game_weights),
            _bag(self.user_games, x.game_positions, x.game_offsets, x.achievement_weights),
            _bag(self.user_genres, x.genre_positions, x.genre_offsets, x.genre_weights),
            x.dense,
        ]
        return F.normalize(self.user_mlp(torch.cat(parts, dim=1)), dim=1)

    def item_embed(self, x: ItemBatch) -> torch.Tensor:
        parts = [
            self.item_ids(x.positions),
            _bag(self.item_genres, x.genres, x.genre_offsets, x.genre_weights),
            _bag(self.item_tags, x.tags, x.tag_offsets, x.tag_weights),
        ]
        return F.normalize(self.item_mlp(torch.cat(parts, dim=1)), dim=1)
