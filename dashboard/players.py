"""Real players for the Players page: their histories in the processed data set (pandas)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

INTERACTIONS_FILE = "interactions.parquet"
GAMES_FILE = "games.parquet"
INFO_FILE = "dataset.json"


@dataclass(frozen=True)
class PlayerData:
    interactions: pd.DataFrame  # user_id, game_id, minutes_played, achievements
    games: pd.DataFrame  # indexed by game_id: title, genres (as "rpg, puzzle")
    name: str  # the data set's name from dataset.json, or its folder's


def missing_files(folder: Path) -> list[str]:
    return [name for name in (INTERACTIONS_FILE, GAMES_FILE) if not (folder / name).is_file()]


def load(folder: Path) -> PlayerData:
    interactions = pd.read_parquet(
        folder / INTERACTIONS_FILE,
        columns=["user_id", "game_id", "minutes_played", "achievements"],
    )
    games = pd.read_parquet(folder / GAMES_FILE, columns=["game_id", "title", "genres"])
    games["genres"] = games["genres"].map(lambda genres: ", ".join(genres))
    return PlayerData(interactions, games.set_index("game_id"), _name(folder))


def _name(folder: Path) -> str:
    try:
        return str(json.loads((folder / INFO_FILE).read_text())["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return folder.name


def active_players(interactions: pd.DataFrame, min_games: int = 5, limit: int = 1000) -> pd.Series:
    """Number of games per player, for players with at least `min_games`: most active first."""
    counts = interactions.groupby("user_id").size()
    counts = counts[counts >= min_games]
    return counts.sort_values(ascending=False, kind="stable").head(limit)


def history(data: PlayerData, user_id: str) -> pd.DataFrame:
    """One player's games with titles and genres, most played first."""
    played = data.interactions[data.interactions["user_id"] == user_id].drop(columns="user_id")
    played = played.join(data.games, on="game_id")
    played["title"] = played["title"].fillna(played["game_id"])
    columns = ["game_id", "title", "genres", "minutes_played", "achievements"]
    return played[columns].sort_values("minutes_played", ascending=False).reset_index(drop=True)


def hold_out(played: pd.DataFrame, fraction: float, seed: int = 0) -> pd.Series:
    """A reproducible random `fraction` of the rows (True = held out), keeping at least one sent."""
    n = len(played)
    held = min(max(round(n * fraction), 1), n - 1) if fraction > 0 and n >= 2 else 0
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, size=held, replace=False)] = True
    return pd.Series(mask, index=played.index)


def recommend_body(user_id: str, sent: pd.DataFrame, top_k: int) -> dict[str, Any]:
    """The `POST /recommend` body for a player who played the games in `sent`."""
    games = sent["game_id"].tolist()
    minutes = sent["minutes_played"].astype(float).tolist()
    achievements = sent["achievements"].astype(int).tolist()
    return {
        "user_id": user_id,
        "time_played": dict(zip(games, minutes, strict=True)),
        "achievements": dict(zip(games, achievements, strict=True)),
        "top_k": top_k,
    }
