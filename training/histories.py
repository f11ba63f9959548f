"""Training-only features: players' histories from the play table, as flat arrays.

Held-out evaluation and the training batches read histories from here; they turn parts of
histories into model inputs with `training.features` (`encode_history`, `encode_histories`), the
feature function serving uses. A streamed run (`training/data/stream.py`) holds the histories of
a batch of players at a time, built from an Arrow table by the same `Histories.from_table`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from training.config import FeatureConfig
from training.features import EncodedUser, Vocabulary, encode_history
from training.schema import INTERACTION_COLUMNS


def genre_matrix(game_genres: list[np.ndarray], n_genres: int) -> sp.csr_matrix:
    """Binary games x genres matrix of the catalog's genres."""
    rows = np.repeat(np.arange(len(game_genres)), [len(g) for g in game_genres])
    cols = np.concatenate(game_genres) if game_genres else np.zeros(0, np.int64)
    data = np.ones(len(rows), np.float64)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(game_genres), max(n_genres, 1)))


def top_genres(
    rows: np.ndarray,
    games: np.ndarray,
    weights: np.ndarray,
    genres_of_games: sp.csr_matrix,
    n_rows: int,
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `n` genres its history weights most (ties: the lower genre position): what
    a player would tick as preferred genres. Flat (row, genre) pairs sorted by row, genre."""
    if n == 0 or len(games) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    histories = sp.csr_matrix((weights, (rows, games)), shape=(n_rows, genres_of_games.shape[0]))
    score = np.asarray((histories @ genres_of_games).todense())
    best = np.argsort(-score, axis=1, kind="stable")[:, :n]
    present = np.take_along_axis(score, best, axis=1) > 0
    best = np.sort(np.where(present, best, np.iinfo(np.int64).max), axis=1)
    picked = best != np.iinfo(np.int64).max
    return np.nonzero(picked)[0].astype(np.int64), best[picked].astype(np.int64)


@dataclass(frozen=True)
class Histories:
    """All users' play histories as CSR arrays over catalog positions."""

    user_ids: np.ndarray  # str, one per user
    indptr: np.ndarray  # int64 (n_users + 1,)
    game_positions: np.ndarray  # int64 catalog positions
    minutes: np.ndarray  # float64
    achievements: np.ndarray  # float64

    @classmethod
    def from_interactions(cls, interactions: pd.DataFrame, vocab: Vocabulary) -> Histories:
        """Every player's games as catalog positions, sorted by player id, then position."""
        table = pa.Table.from_pandas(
            interactions[list(INTERACTION_COLUMNS)], preserve_index=False
        ).combine_chunks()
        return cls.from_table(table.take(by_player_id(table["user_id"])), vocab)

    @classmethod
    def from_table(cls, table: pa.Table, vocab: Vocabulary) -> Histories:
        """The histories of a play table whose rows come grouped by player: players in the
        table's order, each one's games sorted by catalog position."""
        ids = table["user_id"].combine_chunks()
        starts = np.zeros(min(len(ids), 1), np.int64)
        if len(ids) > 1:
            changes = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
            starts = np.concatenate([starts, np.flatnonzero(changes) + 1])
        lengths = np.diff(np.append(starts, len(ids)))
        positions = game_positions(table["game_id"], vocab)
        player = np.repeat(np.arange(len(starts)), lengths)
        # Stable, and linear on rows already in order (as `gamerec data synth` writes them).
        order = np.argsort(player * len(vocab.game_ids) + positions, kind="stable")
        return cls(
            user_ids=np.asarray(ids.take(starts).to_numpy(zero_copy_only=False), dtype=str),
            indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            game_positions=positions[order],
            minutes=_floats(table["minutes_played"])[order],
            achievements=_floats(table["achievements"])[order],
        )

    @classmethod
    def concat(cls, parts: list[Histories]) -> Histories:
        """The players of `parts`, one after the other."""
        if not parts:
            empty = np.zeros(0)
            return cls(np.zeros(0, str), np.zeros(1, np.int64), np.zeros(0, np.int64), empty, empty)
        lengths = np.concatenate([part.lengths() for part in parts])
        return cls(
            user_ids=np.concatenate([part.user_ids for part in parts]),
            indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            game_positions=np.concatenate([part.game_positions for part in parts]),
            minutes=np.concatenate([part.minutes for part in parts]),
            achievements=np.concatenate([part.achievements for part in parts]),
        )

    def take(self, users: np.ndarray) -> Histories:
        """The histories of `users` (player numbers), in that order."""
        flat = self.flat_index(users)
        return Histories(
            user_ids=self.user_ids[users],
            indptr=np.concatenate([[0], np.cumsum(self.lengths()[users])]).astype(np.int64),
            game_positions=self.game_positions[flat],
            minutes=self.minutes[flat],
            achievements=self.achievements[flat],
        )

    def flat_index(self, users: np.ndarray) -> np.ndarray:
        """Where the games of `users` lie in the flat arrays, user after user."""
        lengths = self.lengths()[users]
        row_starts = np.cumsum(lengths) - lengths
        return np.arange(lengths.sum()) + np.repeat(self.indptr[users] - row_starts, lengths)

    def __len__(self) -> int:
        return len(self.user_ids)

    def span(self, user: int) -> slice:
        """Where user number `user`'s games lie in the flat arrays."""
        return slice(self.indptr[user], self.indptr[user + 1])

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def play_counts(self, users: np.ndarray, n_games: int) -> np.ndarray:
        """How many of `users` played each catalog game."""
        spans = [self.game_positions[self.span(u)] for u in users]
        played = np.concatenate(spans) if spans else np.zeros(0, np.int64)
        return np.bincount(played, minlength=n_games).astype(np.int64)

    def encode(
        self, user: int, keep: np.ndarray, genres: np.ndarray, cfg: FeatureConfig
    ) -> EncodedUser:
        """Features of the part `keep` (positions within the user's history) of a user's history."""
        s = self.span(user)
        return encode_history(
            self.game_positions[s][keep],
            self.minutes[s][keep],
            self.achievements[s][keep],
            genres,
            cfg,
        )


def by_player_id(user_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The order that sorts player ids (stable): how every list of players is sorted."""
    return pc.sort_indices(user_ids).to_numpy()


def game_positions(game_ids: pa.Array | pa.ChunkedArray, vocab: Vocabulary) -> np.ndarray:
    """Catalog positions (int64) of game ids; an id outside the catalog is an error."""
    positions = pc.index_in(game_ids, value_set=pa.array(vocab.game_ids, pa.string()))
    if positions.null_count:
        missing = game_ids.filter(positions.is_null())[0].as_py()
        raise ValueError(f"game {missing!r} is played but not in the catalog")
    return positions.to_numpy().astype(np.int64)


def _floats(values: pa.ChunkedArray) -> np.ndarray:
    return values.to_numpy().astype(np.float64)
