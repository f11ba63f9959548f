"""Model inputs: the one feature module of training and serving (no train/serve skew).

A user is what a client sends: `time_played` (game id -> minutes), `achievements`
(game id -> count) and preferred `genres`. Training builds the same features from the play
table (`training/histories.py`, with the target games removed) through `encode_history`, so
the towers see identical features in both places. A game is its catalog position, genres and
tags. Positions (a game's row in the catalog, a genre's place in the vocabulary) are what the
towers take; ids are what clients send.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from training.config import FeatureConfig
from training.schema import normalize_label

# Dense user features: log1p(#games), log1p(total minutes), log1p(total achievements), has genres.
N_DENSE = 4
_DENSE_SCALE = np.array([1 / 5, 1 / 10, 1 / 8, 1.0], dtype=np.float32)


@dataclass(frozen=True)
class Vocabulary:
    """Positions of games, genres and tags; a game's position is its row in the catalog."""

    game_ids: list[str]
    genres: list[str]
    tags: list[str]
    game_index: dict[str, int] = field(init=False, repr=False, compare=False)
    genre_index: dict[str, int] = field(init=False, repr=False, compare=False)
    tag_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "game_index", {g: i for i, g in enumerate(self.game_ids)})
        object.__setattr__(self, "genre_index", {g: i for i, g in enumerate(self.genres)})
        object.__setattr__(self, "tag_index", {t: i for i, t in enumerate(self.tags)})

    @classmethod
    def from_games_table(cls, games_table: pd.DataFrame) -> Vocabulary:
        genres = sorted({g for gs in games_table["genres"] for g in gs})
        tags = sorted({t for ts in games_table["tags"] for t in ts})
        return cls(game_ids=[str(g) for g in games_table["game_id"]], genres=genres, tags=tags)

    def to_dict(self) -> dict[str, list[str]]:
        return {"games": self.game_ids, "genres": self.genres, "tags": self.tags}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(game_ids=raw["games"], genres=raw["genres"], tags=raw["tags"])


@dataclass(frozen=True)
class UserRecord:
    """What a client knows about a player, in the request's own units (minutes)."""

    time_played: dict[str, float] = field(default_factory=dict)
    achievements: dict[str, int] = field(default_factory=dict)
    genres: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EncodedUser:
    """One user's model inputs as positions and weights, before batching."""

    game_positions: np.ndarray  # int64 catalog positions of played games
    game_weights: np.ndarray  # float32, sum or L2 norm 1 (`history_norm`), or empty
    achievement_weights: np.ndarray  # float32 per played game, sums to 1 (or all zero)
    genre_positions: np.ndarray  # int64 vocabulary positions of preferred genres
    dense: np.ndarray  # float32 (N_DENSE,)
    unknown_games: tuple[str, ...] = ()
    unknown_genres: tuple[str, ...] = ()


def _normalized(weights: np.ndarray, norm: str = "mean") -> np.ndarray:
    total = np.sqrt((weights**2).sum()) if norm == "l2" else weights.sum()
    return (weights / total).astype(np.float32) if total > 0 else np.zeros_like(weights, np.float32)


def history_weights(minutes: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """How much each played game counts, before normalization."""
    if cfg.history_weight == "log1p":
        return 1.0 + np.log1p(minutes)  # a listed game counts even at 0 minutes
    return np.ones(len(minutes))


def encode_history(
    game_positions: np.ndarray,
    minutes: np.ndarray,
    achievements: np.ndarray,
    genre_positions: np.ndarray,
    cfg: FeatureConfig,
) -> EncodedUser:
    """The feature function itself: positions of played games with minutes and achievements."""
    games = np.asarray(game_positions, dtype=np.int64)
    minutes = np.asarray(minutes, dtype=np.float64)
    achievements = np.asarray(achievements, dtype=np.float64)
    if len(games) > cfg.max_history:  # keep the most-played games
        keep = np.argsort(-minutes, kind="stable")[: cfg.max_history]
        games, minutes, achievements = games[keep], minutes[keep], achievements[keep]
    weights = history_weights(minutes, cfg)
    dense = np.array(
        [
            np.log1p(len(games)),
            np.log1p(minutes.sum()),
            np.log1p(achievements.sum()),
            len(genre_positions) > 0,
        ],
        dtype=np.float32,
    )
    return EncodedUser(
        game_positions=games,
        game_weights=_normalized(weights, cfg.history_norm),
        achievement_weights=_normalized(np.log1p(achievements)),
        genre_positions=np.asarray(genre_positions, dtype=np.int64),
        dense=dense * _DENSE_SCALE,
    )


def encode_record(record: UserRecord, vocab: Vocabulary, cfg: FeatureConfig) -> EncodedUser:
    """A request-shaped record to features; unknown game ids and genres are dropped and listed.

    A game with achievements but no minutes counts as played for 0 minutes.
    """
    played = list(dict.fromkeys([*record.time_played, *record.achievements]))
    known = [g for g in played if g in vocab.game_index]
    labels = [normalize_label(g) for g in record.genres]
    encoded = encode_history(
        game_positions=np.array([vocab.game_index[g] for g in known], dtype=np.int64),
        minutes=np.array([record.time_played.get(g, 0.0) for g in known], dtype=np.float64),
        achievements=np.array([record.achievements.get(g, 0) for g in known], dtype=np.float64),
        genre_positions=np.array(
            sorted({vocab.genre_index[g] for g in labels if g in vocab.genre_index}), dtype=np.int64
        ),
        cfg=cfg,
    )
    return replace(
        encoded,
        unknown_games=tuple(g for g in played if g not in vocab.game_index),
        unknown_genres=tuple(
            g for g, lab in zip(record.genres, labels, strict=True) if lab not in vocab.genre_index
        ),
    )


@dataclass
class UserBatch:
    """Flat tensors for `F.embedding_bag`: a bag of games and a bag of genres per user."""

    game_positions: torch.Tensor
    game_offsets: torch.Tensor
    game_weights: torch.Tensor
    achievement_weights: torch.Tensor
    genre_positions: torch.Tensor
    genre_offsets: torch.Tensor
    genre_weights: torch.Tensor
    dense: torch.Tensor

    def __len__(self) -> int:
        return len(self.game_offsets)


def _offsets(lengths: list[int]) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))


def collate_users(users: list[EncodedUser]) -> UserBatch:
    genre_weights = [
        np.full(len(u.genre_positions), 1.0 / max(len(u.genre_positions), 1), np.float32)
        for u in users
    ]
    return UserBatch(
        game_positions=torch.from_numpy(np.concatenate([u.game_positions for u in users])),
        game_offsets=_offsets([len(u.game_positions) for u in users]),
        game_weights=torch.from_numpy(np.concatenate([u.game_weights for u in users])),
        achievement_weights=torch.from_numpy(
            np.concatenate([u.achievement_weights for u in users])
        ),
        genre_positions=torch.from_numpy(np.concatenate([u.genre_positions for u in users])),
        genre_offsets=_offsets([len(u.genre_positions) for u in users]),
        genre_weights=torch.from_numpy(np.concatenate(genre_weights)),
        dense=torch.from_numpy(np.stack([u.dense for u in users])),
    )


@dataclass
class ItemBatch:
    """Flat tensors for the item tower: catalog position, a bag of genres and a bag of tags per
    game."""

    positions: torch.Tensor
    genres: torch.Tensor
    genre_offsets: torch.Tensor
    genre_weights: torch.Tensor
    tags: torch.Tensor
    tag_offsets: torch.Tensor
    tag_weights: torch.Tensor


def item_batch(
    positions: np.ndarray,
    genres: np.ndarray,
    genre_lengths: np.ndarray,
    tags: np.ndarray,
    tag_lengths: np.ndarray,
) -> ItemBatch:
    def weights(lengths: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(np.float32))

    return ItemBatch(
        positions=torch.from_numpy(np.asarray(positions, dtype=np.int64)),
        genres=torch.from_numpy(genres.astype(np.int64)),
        genre_offsets=_offsets(list(genre_lengths)),
        genre_weights=weights(genre_lengths),
        tags=torch.from_numpy(tags.astype(np.int64)),
        tag_offsets=_offsets(list(tag_lengths)),
        tag_weights=weights(tag_lengths),
    )


def catalog_items(games_table: pd.DataFrame, vocab: Vocabulary, cfg: FeatureConfig) -> ItemBatch:
    """Item-tower inputs for the whole catalog, in catalog order."""
    genres = game_genre_positions(games_table, vocab)
    tags = [
        np.array(
            [vocab.tag_index[t] for t in list(ts)[: cfg.max_item_tags] if t in vocab.tag_index],
            np.int64,
        )
        for ts in games_table["tags"]
    ]
    return item_batch(np.arange(len(games_table)), *_flat(genres), *_flat(tags))


def _flat(bags: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(b) for b in bags], np.int64)
    return (np.concatenate(bags) if bags else np.zeros(0, np.int64)), lengths


def game_genre_positions(games_table: pd.DataFrame, vocab: Vocabulary) -> list[np.ndarray]:
    """Each catalog game's genre positions."""
    return [
        np.array([vocab.genre_index[g] for g in gs if g in vocab.genre_index], np.int64)
        for gs in games_table["genres"]
    ]
