"""Training-only features: every player's history from the play table, as flat arrays.

Held-out evaluation and the training examples read histories from here; both turn a part of a
history into model inputs with `training.features.encode_history`, the function serving uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.config import FeatureConfig
from training.features import EncodedUser, Vocabulary, encode_history


def top_genres(
    games: np.ndarray, weights: np.ndarray, game_genres: list[np.ndarray], n: int
) -> np.ndarray:
    """The `n` genres a history weights most: what a player would tick as preferred genres."""
    if n == 0 or len(games) == 0:
        return np.zeros(0, np.int64)
    score: dict[int, float] = {}
    for g, w in zip(games, weights, strict=True):
        for genre in game_genres[g]:
            score[int(genre)] = score.get(int(genre), 0.0) + float(w)
    ranked = sorted(score, key=lambda k: (-score[k], k))[:n]
    return np.array(sorted(ranked), np.int64)


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
