"""Canonical tables of GameRec and their validation.

Interactions: `user_id` (str), `game_id` (str), `minutes_played` (float64, 0 to `MAX_MINUTES`),
`achievements` (int64, >= 0); one row per (user_id, game_id).

Games: `game_id` (str, unique, non-empty), `title` (str), `genres` and `tags` (lists of labels
normalized by `normalize_label`), plus any extra metadata columns, kept as they are.

Ids and titles use the pandas string dtype `"str"` (`ID_DTYPE`); genres and tags are object
columns holding python lists of str.

Row numbers in a `DataError` from `validate_*` are 1-based positions in the frame (the first
record is row 1), which for a Parquet file is the record number in the file. Readers of text
files (e.g. `training.data.steam`) report line numbers of the file instead.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ID_DTYPE = "str"
MAX_MINUTES = 1e8  # per (user, game): about 190 years; sums of a whole history stay finite

INTERACTION_COLUMNS = ("user_id", "game_id", "minutes_played", "achievements")
GAME_COLUMNS = ("game_id", "title", "genres", "tags")

INTERACTIONS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("game_id", pa.string()),
        ("minutes_played", pa.float64()),
        ("achievements", pa.int64()),
    ]
)
GAMES_SCHEMA = pa.schema(
    [
        ("game_id", pa.string()),
        ("title", pa.string()),
        ("genres", pa.list_(pa.string())),
        ("tags", pa.list_(pa.string())),
    ]
)


class DataError(ValueError):
    """Bad input data, located by file (or other source), row and column where known."""

    def __init__(
        self,
        file: str | Path,
        message: str,
        *,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file = str(file)
        self.row = row
        self.column = column
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        location = f"{self.file}: {', '.join(where)}" if where else self.file
        return f"{location}: {self.message}"


def normalize_label(label: str) -> str:
    """Genre/tag label: HTML entities decoded, lowercase, single spaces, no outer spaces."""
    return " ".join(html.unescape(label).split()).lower()


def validate_interactions(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check and coerce an interactions table; returns exactly the canonical columns and dtypes."""
    _require_columns(df, INTERACTION_COLUMNS, source)
    out = pd.DataFrame(
        {
            "user_id": _ids(df["user_id"], source, "user_id"),
            "game_id": _ids(df["game_id"], source, "game_id"),
            "minutes_played": _non_negative(df["minutes_played"], source, "minutes_played"),
            "achievements": _non_negative(df["achievements"], source, "achievements"),
        }
    )
    pos = _first_bad(out["minutes_played"].to_numpy() > MAX_MINUTES)
    if pos is not None:
        raise DataError(
            source,
            f"{out['minutes_played'].iat[pos]:g} minutes is over the maximum of {MAX_MINUTES:g}",
            row=pos + 1,
            column="minutes_played",
        )
    _check_integral(out["achievements"], source, "achievements")
    out["achievements"] = out["achievements"].astype(np.int64)
    duplicated = out.duplicated(["user_id", "game_id"]).to_numpy()
    if duplicated.any():
        pos = int(np.argmax(duplicated))
        user, game = out["user_id"].iat[pos], out["game_id"].iat[pos]
        raise DataError(
            source,
            f"duplicate (user_id, game_id) pair ({user!r}, {game!r})",
            row=pos + 1,
            column="game_id",
        )
    return out


def validate_games(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check and coerce a games catalog; core columns first, extra columns kept unchanged."""
    _require_columns(df, GAME_COLUMNS, source)
    out = df.reset_index(drop=True)
    out["game_id"] = _ids(df["game_id"], source, "game_id")
    out["title"] = _strings(df["title"], source, "title")
    out["genres"] = _label_lists(df["genres"], source, "genres")
    out["tags"] = _label_lists(df["tags"], source, "tags")
    duplicated = out["game_id"].duplicated().to_numpy()
    if duplicated.any():
        pos = int(np.argmax(duplicated))
        raise DataError(
            source, f"duplicate game_id {out['game_id'].iat[pos]!r}", row=pos + 1, column="game_id"
        )
    extras = [c for c in out.columns if c not in GAME_COLUMNS]
    return out[list(GAME_COLUMNS) + extras]


def validate_dataset(interactions: pd.DataFrame, games: pd.DataFrame, source: str) -> None:
    """Cross-check validated tables: interactions exist and every game_id is in the catalog."""
    if interactions.empty:
        raise DataError(source, "no interactions")
    unknown = ~interactions["game_id"].isin(games["game_id"]).to_numpy()
    if unknown.any():
        pos = int(np.argmax(unknown))
        raise DataError(
            source,
            f"game_id {interactions['game_id'].iat[pos]!r} is not in the games catalog "
            f"({int(unknown.sum())} interactions have unknown game ids)",
            row=pos + 1,
            column="game_id",
        )


def _require_columns(df: pd.DataFrame, columns: Iterable[str], source: str) -> None:
    for column in columns:
        if column not in df.columns:
            raise DataError(source, f"missing column (found {list(df.columns)})", column=column)


def _first_bad(mask: np.ndarray) -> int | None:
    return int(np.argmax(mask)) if mask.any() else None


def _ids(values: pd.Series, source: str, column: str) -> pd.Series:
    """Non-empty strings; integer ids (e.g. Steam user ids) are converted to decimal strings."""
    if pd.api.types.is_integer_dtype(values.dtype) and not values.isna().any():
        return values.astype(ID_DTYPE).reset_index(drop=True)
    strings = _strings(values, source, column)
    pos = _first_bad((strings.str.strip() == "").to_numpy())
    if pos is not None:
        raise DataError(source, "empty id", row=pos + 1, column=column)
    return strings


def _strings(values: pd.Series, source: str, column: str) -> pd.Series:
    if isinstance(values.dtype, pd.StringDtype):  # fast path: only missing values can be wrong
        is_str = ~values.isna().to_numpy()
    else:
        is_str = np.fromiter((isinstance(v, str) for v in values), bool, count=len(values))
    pos = _first_bad(~is_str)
    if pos is not None:
        value = values.iat[pos]
        problem = "missing value" if _is_missing(value) else f"not a string: {value!r}"
        raise DataError(source, problem, row=pos + 1, column=column)
    return values.astype(ID_DTYPE).reset_index(drop=True)


def _non_negative(values: pd.Series, source: str, column: str) -> pd.Series:
    """Finite numbers >= 0 as float64."""
    numbers = pd.to_numeric(values, errors="coerce").astype("float64").reset_index(drop=True)
    array = numbers.to_numpy()
    pos = _first_bad(np.isnan(array) & ~values.isna().to_numpy())
    if pos is not None:
        raise DataError(source, f"not a number: {values.iat[pos]!r}", row=pos + 1, column=column)
    pos = _first_bad(~np.isfinite(array))
    if pos is not None:
        raise DataError(source, f"not finite: {values.iat[pos]!r}", row=pos + 1, column=column)
    pos = _first_bad(array < 0)
    if pos is not None:
        raise DataError(source, f"negative: {array[pos]!r}", row=pos + 1, column=column)
    return numbers


def _check_integral(values: pd.Series, source: str, column: str) -> None:
    array = values.to_numpy()
    pos = _first_bad(array != np.floor(array))
    if pos is not None:
        raise DataError(source, f"not a whole number: {array[pos]!r}", row=pos + 1, column=column)


def _label_lists(values: pd.Series, source: str, column: str) -> pd.Series:
    """Lists of normalized labels, empty labels and repeats removed, order kept."""
    lists = []
    for pos, value in enumerate(values):
        if not isinstance(value, list | tuple | np.ndarray) or not all(
            isinstance(v, str) for v in value
        ):
            raise DataError(
                source, f"expected a list of strings, got {value!r}", row=pos + 1, column=column
            )
        labels = (normalize_label(v) for v in value)
        lists.append(list(dict.fromkeys(label for label in labels if label)))
    return pd.Series(lists, dtype=object)


def _is_missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
