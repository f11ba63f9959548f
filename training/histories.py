"""Training-only features: every player's history from the play table, as flat arrays.

Held-out evaluation and the training batches read histories from here; they turn parts of
histories into model inputs with `training.features` (`encode_history`, `encode_histories`), the
feature function serving uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from training.config import FeatureConfig
from training.features import EncodedUser, Vocabulary, encode_history


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
        positions = interactions["game_id"].map(vocab.game_index)
        if positions.isna().any():
            missing = interactions.loc[positions.isna(), "game_id"].iloc[0]
            raise ValueError(f"game {missing!r} is played but not in the catalog")
        frame = interactions.assign(pos=positions.astype(np.int64)).sort_values(
            ["user_id", "pos"], kind="stable"
        )
        user_ids, counts = np.unique(frame["user_id"].to_numpy(dtype=str), return_counts=True)
        return cls(
            user_ids=user_ids,
            indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            game_positions=frame["pos"].to_numpy(np.int64),
            minutes=frame["minutes_played"].to_numpy(np.float64),
            achievements=frame["achievements"].to_numpy(np.float64),
        )

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
