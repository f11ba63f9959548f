"""The two towers. A user's score for a game is the inner product of their outputs, so one
FAISS inner-product search serves it.

Two designs (`model.tower`):
- `mlp`: embedding bags concatenated and passed through an MLP, in both towers;
- `additive`: linear sums. User: the played games' input embeddings (by the history weights;
  `features.history_norm: l2` gives 1/sqrt(games played) for a binary history), plus the
  achievement-weighted bag of the same embeddings, the preferred genres and the counts. Game:
  an output embedding of its own plus its genres and tags.
A game no training player played (`ItemBatch.known` false) is placed from its genres and tags
alone, its id embedding unused (and with `model.metadata_for_played: false` a played game is
its id embedding alone); training drops the ids of a share of games per batch
(`train.item_id_dropout`) so that this placement is learned.
Two scorings (`model.scoring`):
- `cosine`: both outputs L2-normalized;
- `dot_bias`: raw outputs and a per-game bias, carried as one extra dimension of each vector
  (user [u, 1], game [v, b]), so the inner product is u·v + b. In the additive tower the
  genres and tags carry a share of the bias too (their tables' last column).
A start from EASE (`model.start_from_ease`, additive dot_bias towers only): the played-games
table and the game-id table start at factors of EASE's item-item weights of the embedding's
rank (training/ease_start.py, `start_from`), so that training begins where the closed-form
linear model ends, and the genre and tag tables at a ridge fit to those game vectors
(`start_metadata_from`), so that new games start near the games that share their metadata;
the softmax then trains every weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ModelConfig
from training.features import N_DENSE, ItemBatch, UserBatch


def starts_from_ease(cfg: ModelConfig) -> bool:
    """`model.start_from_ease` where it applies: additive dot_bias towers, whose score is the
    inner product of summed game rows, as EASE's is."""
    return cfg.start_from_ease and cfg.tower == "additive" and cfg.scoring == "dot_bias"


def output_dim(cfg: ModelConfig) -> int:
    """The size of the towers' outputs, which is the index's dimension: the embedding, the
    bias."""
    return cfg.embedding_dim + (cfg.scoring == "dot_bias")


def _mlp(in_dim: int, hidden: list[int], out_dim: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def _bag(
    table: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted sum of a table's rows per bag; an empty bag gives zeros."""
    return F.embedding_bag(values, table, offsets, mode="sum", per_sample_weights=weights)


class TwoTower(nn.Module):
    """User tower: played games (by play time and by achievements), preferred genres, counts.
    Item tower: game id, genres, tags."""

    def __init__(self, n_games: int, n_genres: int, n_tags: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sizes = {"n_games": n_games, "n_genres": n_genres, "n_tags": n_tags}
        # The additive towers sum embeddings of the output's width; the MLPs concatenate.
        d = cfg.id_dim if cfg.tower == "mlp" else cfg.embedding_dim
        self.user_games = nn.Embedding(n_games, d)
        self.user_genres = nn.Embedding(max(n_genres, 1), d)
        self.item_ids = nn.Embedding(n_games, d)
        self.metadata_bias = cfg.tower == "additive" and cfg.scoring == "dot_bias"
        self.item_genres = nn.Embedding(max(n_genres, 1), d + self.metadata_bias)
        self.item_tags = nn.Embedding(max(n_tags, 1), d + self.metadata_bias)
        if cfg.tower == "mlp":
            self.user_mlp = _mlp(3 * d + N_DENSE, cfg.hidden_dims, cfg.embedding_dim, cfg.dropout)
            self.item_mlp = _mlp(3 * d, cfg.hidden_dims, cfg.embedding_dim, cfg.dropout)
        else:
            self.user_dense = nn.Linear(N_DENSE, d, bias=False)
        if cfg.scoring == "dot_bias":
            self.item_bias = nn.Embedding(n_games, 1)
            nn.init.zeros_(self.item_bias.weight)
        for table in (
            self.user_games,
            self.user_genres,
            self.item_ids,
            self.item_genres,
            self.item_tags,
        ):
            nn.init.normal_(table.weight, std=0.05)
        if self.metadata_bias:  # the bias starts at zero, as the id bias does
            for table in (self.item_genres, self.item_tags):
                nn.init.zeros_(table.weight[:, -1])

    def forward(self, users: UserBatch, items: ItemBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers at once (what DistributedDataParallel wraps): users' and games' outputs."""
        return self.user_embed(users), self.item_embed(items)

    def user_embed(self, x: UserBatch) -> torch.Tensor:
        games = _bag(self.user_games.weight, x.game_positions, x.game_offsets, x.game_weights)
        achievements = _bag(
            self.user_games.weight, x.game_positions, x.game_offsets, x.achievement_weights
        )
        genres = _bag(self.user_genres.weight, x.genre_positions, x.genre_offsets, x.genre_weights)
        dense = x.dense
        if not self.cfg.user_genres:
            genres = torch.zeros_like(genres)
        if not self.cfg.user_counts:
            dense = torch.zeros_like(dense)
        if self.cfg.tower == "mlp":
            user = self.user_mlp(torch.cat([games, achievements, genres, dense], dim=1))
        else:
            user = games + achievements + genres + self.user_dense(dense)
        if self.cfg.scoring == "cosine":
            return F.normalize(user, dim=1)
        return torch.cat([user, torch.ones(len(user), 1)], dim=1)

    def item_embed(self, x: ItemBatch) -> torch.Tensor:
        known = x.known.unsqueeze(1).float()
        ids = self.item_ids(x.positions) * known
        genres = _bag(self.item_genres.weight, x.genres, x.genre_offsets, x.genre_weights)
        tags = _bag(self.item_tags.weight, x.tags, x.tag_offsets, x.tag_weights)
        if not self.cfg.item_metadata:
            genres, tags = torch.zeros_like(genres), torch.zeros_like(tags)
        elif not self.cfg.metadata_for_played:  # metadata only where the id is unknown
            genres, tags = genres * (1 - known), tags * (1 - known)
        metadata_bias = torch.zeros(len(ids), 1)
        if self.metadata_bias:
            metadata_bias = (genres + tags)[:, -1:]
            genres, tags = genres[:, :-1], tags[:, :-1]
        if self.cfg.tower == "mlp":
            item = self.item_mlp(torch.cat([ids, genres, tags], dim=1))
        else:
            item = ids + genres + tags
        if self.cfg.scoring == "cosine":
            return F.normalize(item, dim=1)
        bias = self.item_bias(x.positions) * known + metadata_bias
        return torch.cat([item, bias], dim=1)

    @torch.no_grad()
    def start_from(self, user_games: torch.Tensor, item_ids: torch.Tensor) -> None:
        """Set the played-games and game-id tables: the start of training, which then changes
        them too."""
        self.user_games.weight.copy_(user_games)
        self.item_ids.weight.copy_(item_ids)

    @torch.no_grad()
    def start_metadata_from(self, genres: torch.Tensor, tags: torch.Tensor) -> None:
        """Set the genre and tag tables' embedding columns (their bias column, if any, stays)."""
        width = genres.shape[1]
        self.item_genres.weight[: len(genres), :width].copy_(genres)
        self.item_tags.weight[: len(tags), :width].copy_(tags)
