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


def history_weights(minutes: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """How much each played game counts, before normalization."""
    if cfg.history_weight == "log1p":
        return 1.0 + np.log1p(minutes)  # a listed game counts even at 0 minutes
    if cfg.history_weight == "power":
        return (1.0 + minutes) ** cfg.history_power
    return np.ones(len(minutes))


def _row_normalized(weights: np.ndarray, rows: np.ndarray, n_rows: int, norm: str) -> np.ndarray:
    """Weights divided by their row's sum (`mean`) or L2 norm (`l2`); all-zero rows stay 0."""
    if norm == "l2":
        totals = np.sqrt(np.bincount(rows, weights**2, minlength=n_rows))
    else:
        totals = np.bincount(rows, weights, minlength=n_rows)
    per_game = totals[rows]
    safe = np.where(per_game > 0, per_game, 1.0)
    return np.where(per_game > 0, weights / safe, 0.0).astype(np.float32)


def _most_played(rows: np.ndarray, minutes: np.ndarray, n_rows: int, cap: int) -> np.ndarray:
    """Mask of each row's `cap` most-played games (ties: the earlier game), in place."""
    counts = np.bincount(rows, minlength=n_rows)
    if counts.max(initial=0) <= cap:
        return np.ones(len(rows), dtype=bool)
    order = np.lexsort((np.arange(len(rows)), -minutes, rows))
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = np.zeros(len(rows), dtype=bool)
    keep[order[rank < cap]] = True
    return keep


@dataclass(frozen=True)
class _FlatHistories:
    rows: np.ndarray
    games: np.ndarray
    game_weights: np.ndarray
    achievement_weights: np.ndarray
    dense: np.ndarray  # (n_rows, N_DENSE)


def _encode_flat(
    rows: np.ndarray,
    games: np.ndarray,
    minutes: np.ndarray,
    achievements: np.ndarray,
    has_genres: np.ndarray,
    cfg: FeatureConfig,
) -> _FlatHistories:
    """The feature function itself, for many histories at once (row `rows[j]` played
    `games[j]`): history and achievement weights per game, the dense counts per row."""
    n_rows = len(has_genres)
    keep = _most_played(rows, minutes, n_rows, cfg.max_history)
    rows, games = rows[keep], games[keep]
    minutes, achievements = minutes[keep], achievements[keep]
    dense = np.stack(
        [
            np.log1p(np.bincount(rows, minlength=n_rows)),
            np.log1p(np.bincount(rows, minutes, minlength=n_rows)),
            np.log1p(np.bincount(rows, achievements, minlength=n_rows)),
            has_genres,
        ],
        axis=1,
    ).astype(np.float32)
    return _FlatHistories(
        rows=rows,
        games=games,
        game_weights=_row_normalized(history_weights(minutes, cfg), rows, n_rows, cfg.history_norm),
        achievement_weights=_row_normalized(np.log1p(achievements), rows, n_rows, "mean"),
        dense=dense * _DENSE_SCALE,
    )


def encode_history(
    game_positions: np.ndarray,
    minutes: np.ndarray,
    achievements: np.ndarray,
    genre_positions: np.ndarray,
    cfg: FeatureConfig,
) -> EncodedUser:
    """One history's features: positions of played games with minutes and achievements."""
    games = np.asarray(game_positions, dtype=np.int64)
    flat = _encode_flat(
        np.zeros(len(games), np.int64),
        games,
        np.asarray(minutes, dtype=np.float64),
        np.asarray(achievements, dtype=np.float64),
        np.array([len(genre_positions) > 0]),
        cfg,
    )
    return EncodedUser(
        game_positions=flat.games,
        game_weights=flat.game_weights,
        achievement_weights=flat.achievement_weights,
        genre_positions=np.asarray(genre_positions, dtype=np.int64),
        dense=flat.dense[0],
    )


def encode_histories(
    rows: np.ndarray,
    game_positions: np.ndarray,
    minutes: np.ndarray,
    achievements: np.ndarray,
    genre_rows: np.ndarray,
    genre_positions: np.ndarray,
    n_rows: int,
    cfg: FeatureConfig,
) -> UserBatch:
    """A batch of histories at once, as flat arrays sorted by row (row `rows[j]` played game
    `game_positions[j]`; row `genre_rows[j]` prefers genre `genre_positions[j]`): the same
    features as `encode_history` row by row, then `collate_users`, without a Python loop."""
    genre_counts = np.bincount(genre_rows, minlength=n_rows)
    flat = _encode_flat(
        np.asarray(rows, np.int64),
        np.asarray(game_positions, np.int64),
        np.asarray(minutes, np.float64),
        np.asarray(achievements, np.float64),
        genre_counts > 0,
        cfg,
    )
    return UserBatch(
        game_positions=torch.from_numpy(flat.games),
        game_offsets=_offsets(list(np.bincount(flat.rows, minlength=n_rows))),
        game_weights=torch.from_numpy(flat.game_weights),
        achievement_weights=torch.from_numpy(flat.achievement_weights),
        genre_positions=torch.from_numpy(np.asarray(genre_positions, np.int64)),
        genre_offsets=_offsets(list(genre_counts)),
        genre_weights=torch.from_numpy(
            (1.0 / np.maximum(genre_counts, 1))[genre_rows].astype(np.float32)
        ),
        dense=torch.from_numpy(flat.dense),
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
    # False: the game's id embedding is not used (a game no training player played, or one
    # whose id is dropped in a training batch); the item tower places it from its metadata.
    known: torch.Tensor


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
        known=torch.ones(len(positions), dtype=torch.bool),
    )


def with_known(items: ItemBatch, known: np.ndarray) -> ItemBatch:
    """The same games, with the id embedding used only where `known` is true."""
    return replace(items, known=torch.from_numpy(np.asarray(known, dtype=bool)))


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
