"""The served catalog: titles, genres and popularity by catalog position, for responses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from serving.recommender import Ranked
from serving.schemas import Game
from training.schema import normalize_label
from training.store import ModelArtifacts


@dataclass
class Catalog:
    """Lookups by catalog position (a game's row in the model's games table), built once per
    model version: ids, titles, genres, popularity, title search."""

    artifacts: ModelArtifacts

    def __post_init__(self) -> None:
        table = self.artifacts.games_table
        self.ids: list[str] = table["game_id"].astype(str).tolist()
        self.titles: list[str] = table["title"].astype(str).tolist()
        self.genres: list[list[str]] = [list(g) for g in table["genres"]]
        self.popularity = table["popularity"].to_numpy(np.float64)
        self.by_popularity = np.argsort(-self.popularity, kind="stable")
        self.lower_titles = pd.Series(self.titles).str.lower()
        self.positions_of_genre: dict[str, list[int]] = {}
        for position, genres in enumerate(self.genres):
            for genre in genres:
                self.positions_of_genre.setdefault(genre, []).append(position)

    def game(self, position: int) -> Game:
        return Game(
            game_id=self.ids[position], title=self.titles[position], genres=self.genres[position]
        )

    def outside_genres(self, genres: list[str]) -> set[int]:
        """Positions of games with none of these genres (for the `only_genres` filter)."""
        wanted = {normalize_label(g) for g in genres}
        return set(np.flatnonzero(~self.has_genre(wanted)).tolist())

    def positions(self, game_ids: list[str]) -> set[int]:
        index = self.artifacts.vocab.game_index
        return {index[g] for g in game_ids if g in index}

    def popular(self, k: int, exclude: set[int], genres: list[str]) -> Ranked:
        """Cold start: the most played games, those of the preferred genres first."""
        order = self.by_popularity
        if exclude:
            order = order[~np.isin(order, list(exclude))]
        wanted = {normalize_label(g) for g in genres}
        if wanted:
            match = self.has_genre(wanted)[order]
            order = np.concatenate([order[match], order[~match]])  # each part by popularity
        picked = order[:k]
        top = self.popularity.max() or 1.0
        return Ranked(
            positions=picked.astype(np.int64),
            scores=(self.popularity[picked] / top).astype(np.float32),
        )

    def has_genre(self, genres: set[str]) -> np.ndarray:
        """Per game, whether it has any of these genres."""
        mask = np.zeros(len(self.ids), bool)
        for genre in genres:
            mask[self.positions_of_genre.get(genre, [])] = True
        return mask

    def because_you_played(self, recommended: np.ndarray, played: np.ndarray) -> list[str | None]:
        """For each recommended game, the played game whose embedding is closest to it."""
        if len(played) == 0 or len(recommended) == 0:
            return [None] * len(recommended)
        vectors = self.artifacts.game_vectors
        closest = np.argmax(vectors[recommended] @ vectors[played].T, axis=1)
        return [self.ids[played[c]] for c in closest]

    def search(self, query: str, limit: int, offset: int) -> tuple[int, list[Game]]:
        hits = np.flatnonzero(self.lower_titles.str.contains(query.lower(), regex=False).to_numpy())
        hits = hits[np.argsort(-self.popularity[hits], kind="stable")]
        return len(hits), [self.game(int(i)) for i in hits[offset : offset + limit]]
