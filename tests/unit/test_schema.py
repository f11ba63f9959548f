"""Canonical schema: coercion, and errors that name the source, row and column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.schema import (
    DataError,
    normalize_label,
    validate_dataset,
    validate_games,
    validate_interactions,
)


def interactions(**columns: list) -> pd.DataFrame:
    base = {
        "user_id": ["u1", "u1", "u2"],
        "game_id": ["g1", "g2", "g1"],
        "minutes_played": [10.0, 0.0, 125.5],
        "achievements": [0, 3, 1],
    }
    return pd.DataFrame({**base, **columns})


def games(**columns: list) -> pd.DataFrame:
    base = {
        "game_id": ["g1", "g2"],
        "title": ["First", "Second"],
        "genres": [["RPG"], []],
        "tags": [["Co-op", "Pixel Graphics"], ["Difficult"]],
    }
    return pd.DataFrame({**base, **columns})


def test_error_message_names_file_row_and_column() -> None:
    error = DataError("data/x.csv", "not a number: 'abc'", row=17, column="hours")
    assert str(error) == "data/x.csv: row 17, column 'hours': not a number: 'abc'"
    assert (error.file, error.row, error.column) == ("data/x.csv", 17, "hours")
    assert str(DataError("data/x.csv", "file is empty")) == "data/x.csv: file is empty"
    assert str(DataError("f", "m", column="c")) == "f: column 'c': m"
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("RPG", "rpg"),
        ("Design &amp; Illustration", "design & illustration"),
        ("  Open   World\t", "open world"),
        ("Co-op", "co-op"),
        ("", ""),
    ],
)
def test_normalize_label(raw: str, label: str) -> None:
    assert normalize_label(raw) == label


def test_valid_interactions_get_canonical_dtypes() -> None:
    df = interactions(user_id=[101, 101, 102], achievements=[0.0, 3.0, 1.0])
    out = validate_interactions(df, "mem")
    assert list(out.columns) == ["user_id", "game_id", "minutes_played", "achievements"]
    assert out["user_id"].tolist() == ["101", "101", "102"]
    assert out["user_id"].dtype == "str" and out["game_id"].dtype == "str"
    assert out["minutes_played"].dtype == np.float64
    assert out["achievements"].dtype == np.int64


def test_missing_column_is_named() -> None:
    with pytest.raises(DataError) as info:
        validate_interactions(interactions().drop(columns="minutes_played"), "mem")
    assert (info.value.file, info.value.column, info.value.row) == ("mem", "minutes_played", None)


@pytest.mark.parametrize(
    ("column", "values", "row", "message"),
    [
        ("minutes_played", [1.0, 2.0, -5.0], 3, "negative"),
        ("minutes_played", [1.0, np.nan, 3.0], 2, "not finite"),
        ("minutes_played", [np.inf, 1.0, 2.0], 1, "not finite"),
        ("minutes_played", [1.0, "abc", 3.0], 2, "not a number: 'abc'"),
        ("achievements", [0, -1, 0], 2, "negative"),
        ("achievements", [0, 1.5, 0], 2, "not a whole number"),
        ("user_id", ["u1", None, "u2"], 2, "missing value"),
        ("user_id", ["u1", "u1", " "], 3, "empty id"),
        ("game_id", ["g1", 7.0, "g1"], 2, "not a string"),
    ],
)
def test_bad_interaction_values_name_row_and_column(
    column: str, values: list, row: int, message: str
) -> None:
    with pytest.raises(DataError) as info:
        validate_interactions(interactions(**{column: values}), "mem")
    assert (info.value.row, info.value.column) == (row, column)
    assert message in info.value.message


def test_duplicate_pair_names_the_second_row() -> None:
    df = interactions(user_id=["u1", "u2", "u1"], game_id=["g1", "g1", "g1"])
    with pytest.raises(DataError, match="duplicate") as info:
        validate_interactions(df, "mem")
    assert (info.value.row, info.value.column) == (3, "game_id")


def test_games_are_normalized_and_extras_kept() -> None:
    df = games(
        genres=[np.array(["Design &amp; Illustration", "RPG", "rpg"]), []],
        price=[9.99, 0.0],
    )
    out = validate_games(df, "mem")
    assert list(out.columns) == ["game_id", "title", "genres", "tags", "price"]
    assert out["genres"].tolist() == [["design & illustration", "rpg"], []]
    assert out["tags"].tolist() == [["co-op", "pixel graphics"], ["difficult"]]
    assert out["price"].tolist() == [9.99, 0.0]
    assert out["game_id"].dtype == "str" and out["title"].dtype == "str"


@pytest.mark.parametrize(
    ("column", "values", "row"),
    [
        ("game_id", ["g1", "g1"], 2),
        ("game_id", ["g1", ""], 2),
        ("title", [None, "x"], 1),
        ("genres", [["rpg"], "rpg"], 2),
        ("tags", [None, []], 1),
        ("tags", [[], ["ok", 3]], 2),
    ],
)
def test_bad_games_name_row_and_column(column: str, values: list, row: int) -> None:
    with pytest.raises(DataError) as info:
        validate_games(games(**{column: values}), "games.parquet")
    assert (info.value.file, info.value.row, info.value.column) == ("games.parquet", row, column)


def test_unknown_game_id_is_located() -> None:
    df = validate_interactions(interactions(game_id=["g1", "g2", "g9"]), "mem")
    catalog = validate_games(games(), "mem")
    with pytest.raises(DataError, match="'g9' is not in the games catalog") as info:
        validate_dataset(df, catalog, "mem")
    assert (info.value.row, info.value.column) == (3, "game_id")
    validate_dataset(validate_interactions(interactions(), "mem"), catalog, "mem")


def test_empty_dataset_is_rejected() -> None:
    empty = validate_interactions(interactions().iloc[:0], "mem")
    with pytest.raises(DataError, match="no interactions"):
        validate_dataset(empty, validate_games(games(), "mem"), "mem")
