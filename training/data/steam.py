"""Importers for real Steam data: the steam-200k play file and the UCSD game metadata.

Game ids: a played title is matched to the metadata by `normalize_title` (store `title`, else
`app_name`). When the match has a Steam app id, the game id is that id as a decimal string
("220"). Otherwise it is a slug of the normalized title, "slug-" + words joined by hyphens
("slug-dota-2"); titles with no letters or digits get "slug-x" + a hash of the title. Both
forms are stable across imports, so ids survive re-importing the same files.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import math
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from training.schema import (
    MAX_MINUTES,
    DataError,
    validate_dataset,
    validate_games,
    validate_interactions,
)


class _Column(NamedTuple):
    index: int
    name: str  # as the file's header or the Kaggle documentation names it


PLAYS_HEADER = ("user_id", "game_title", "hours")
# The raw Kaggle file has no header: user_id, title, behaviour, value (hours when playing), 0.
RAW_FIELDS = 5
RAW_COLUMNS = {
    "user": _Column(0, "user_id"),
    "title": _Column(1, "title"),
    "hours": _Column(3, "value"),
}
RAW_BEHAVIOUR = _Column(2, "behaviour")
_DROPPED_SIGNS = str.maketrans("", "", "\u2122\u00ae\u00a9")  # ™ ® ©
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def normalize_title(title: str) -> str:
    """Title key for matching: lowercase, no accents, signs, punctuation or symbols."""
    text = unicodedata.normalize("NFKD", title.translate(_DROPPED_SIGNS)).lower()
    kept = "".join(ch for ch in text if unicodedata.category(ch)[0] not in "MPS")
    return " ".join(kept.split())


def read_plays(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Play records as (user_id, game_title, hours), duplicates summed, plus a report of counts.

    Accepts the 3-column file with header `user_id,game_title,hours` and the raw headerless
    Kaggle file (`user_id,title,behaviour,value,0`), of which only `play` rows are kept.
    Errors name the file's line number and the column as the file (or the Kaggle page) names it.
    """
    path = Path(path)
    rows = _rows(_read_text(path), path)
    first_line, first = next(rows, (1, []))  # (no row at all: reported as no header below)
    if "user_id" in (field.strip() for field in first):
        form, columns = "header", _header_columns(first, path, first_line)
    elif len(first) == RAW_FIELDS:
        form, columns, rows = "raw", RAW_COLUMNS, itertools.chain([(first_line, first)], rows)
    else:
        raise DataError(
            path,
            f"expected the header {','.join(PLAYS_HEADER)!r} or the raw Kaggle form with "
            f"{RAW_FIELDS} columns, found {len(first)} columns and no header",
            row=first_line,
        )
    users, titles, hours = [], [], []
    rows_read = purchases = 0
    for line, fields in rows:
        rows_read += 1
        if len(fields) != len(first):
            raise DataError(path, f"expected {len(first)} columns, found {len(fields)}", row=line)
        if form == "raw" and _behaviour(fields, path, line) == "purchase":
            purchases += 1
            continue
        users.append(_text(fields, columns["user"], path, line).strip())
        titles.append(_text(fields, columns["title"], path, line))
        hours.append(_hours(fields, columns["hours"], path, line))

    plays = pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype="str"),
            "game_title": pd.Series(titles, dtype="str"),
            "hours": np.array(hours, dtype=np.float64),
        }
    )
    merged = plays.groupby(["user_id", "game_title"], sort=False, as_index=False)["hours"].sum()
    report = {
        "plays_form": form,
        "rows_read": rows_read,
        "purchase_rows_skipped": purchases,
        "duplicate_rows_merged": len(plays) - len(merged),
        "rows_kept": len(merged),
    }
    return merged, report


def read_game_metadata(path: Path) -> pd.DataFrame:
    """The UCSD `steam_games` table, as stored (needs genres, tags and title or app_name)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, f"not a readable Parquet file: {e}") from e
    for column in ("genres", "tags"):
        if column not in table.column_names:
            raise DataError(path, "missing column", column=column)
    if "title" not in table.column_names and "app_name" not in table.column_names:
        raise DataError(path, "missing column (nor is there 'app_name')", column="title")
    for column, (expected, fits) in _METADATA_TYPES.items():
        found = table.schema.field(column).type if column in table.column_names else pa.null()
        if not (pa.types.is_null(found) or fits(found)):  # an all-null column is just missing
            raise DataError(path, f"expected {expected}, found {found}", column=column)
    meta = table.to_pandas()
    if "app_id" in meta:
        _check_app_ids(meta["app_id"], path)
    return meta


def import_steam200k(
    plays_path: Path, games_path: Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Interactions, games catalog and report from the play file and optional metadata.

    Report counts satisfy rows_read = rows_kept + rows_merged + rows_dropped.
    """
    plays, report = read_plays(plays_path)
    meta = _metadata_by_key(read_game_metadata(games_path)) if games_path else pd.DataFrame()
    titles = _play_titles(plays, meta)
    plays = plays.assign(
        game_id=plays["game_title"].map(titles.set_index("play_title")["game_id"]),
        minutes_played=plays["hours"] * 60.0,
    )
    interactions = plays.groupby(["user_id", "game_id"], sort=False, as_index=False)[
        "minutes_played"
    ].sum()
    # Rounding hides float dust such as 0.1 h * 60 = 6.000000000000001.
    interactions["minutes_played"] = interactions["minutes_played"].round(6)
    interactions["achievements"] = 0

    source = f"steam import of {plays_path}"
    interactions = validate_interactions(interactions, source)
    games = validate_games(_catalog(titles, plays, meta), source)
    validate_dataset(interactions, games, source)
    report.update(
        rows_merged=report["duplicate_rows_merged"] + len(plays) - len(interactions),
        rows_dropped=report["purchase_rows_skipped"],
        rows_kept=len(interactions),
        games=len(games),
        games_matched=int(games["has_metadata"].sum()),
        users=int(interactions["user_id"].nunique()),
    )
    return interactions, games, report


# --- play file parsing -------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """UTF-8 text, not empty. A byte order mark is honoured: UTF-8, or UTF-16 as Excel saves it."""
    if not path.is_file():
        raise DataError(path, "file not found")
    data = path.read_bytes()
    encoding = "utf-8"
    for bom, codec in _BOMS:
        if data.startswith(bom):
            data, encoding = data[len(bom) :], codec
            break
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].decode(encoding, errors="replace").count("\n") + 1
        raise DataError(
            path, f"not valid {encoding.upper()} (byte 0x{data[e.start]:02x})", row=line
        ) from e
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise DataError(path, "NUL character: not a text file, or UTF-16 without a BOM", row=line)
    if not text.strip():
        raise DataError(path, "file is empty")
    return text


def _rows(text: str, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of the non-blank CSV rows; a row the CSV reader refuses is an error."""
    reader = csv.reader(io.StringIO(text, newline=""))  # as the csv module wants files opened
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(path, f"not a valid CSV row: {e}", row=reader.line_num) from e
        if fields:
            yield reader.line_num, fields


def _header_columns(header: list[str], path: Path, line: int) -> dict[str, _Column]:
    names = [name.strip() for name in header]
    for name in PLAYS_HEADER:
        if name not in names:
            raise DataError(path, f"missing column (header is {header})", row=line, column=name)
    user, title, hours = (_Column(names.index(name), name) for name in PLAYS_HEADER)
    return {"user": user, "title": title, "hours": hours}


def _behaviour(fields: list[str], path: Path, line: int) -> str:
    behaviour = fields[RAW_BEHAVIOUR.index].strip().lower()
    if behaviour not in ("play", "purchase"):
        raise DataError(
            path,
            f"expected 'play' or 'purchase', got {fields[RAW_BEHAVIOUR.index]!r}",
            row=line,
            column=RAW_BEHAVIOUR.name,
        )
    return behaviour


def _text(fields: list[str], column: _Column, path: Path, line: int) -> str:
    value = fields[column.index]
    if not value.strip():
        raise DataError(path, "empty value", row=line, column=column.name)
    return value


def _hours(fields: list[str], column: _Column, path: Path, line: int) -> float:
    text = fields[column.index].strip()
    try:
        hours = float(text)
    except ValueError:
        raise DataError(path, f"not a number: {text!r}", row=line, column=column.name) from None
    if not math.isfinite(hours):
        raise DataError(path, f"not finite: {text!r}", row=line, column=column.name)
    if hours < 0:
        raise DataError(path, f"negative hours: {text!r}", row=line, column=column.name)
    if hours * 60 > MAX_MINUTES:
        raise DataError(
            path,
            f"{text} hours is over the maximum of {MAX_MINUTES / 60:g}",
            row=line,
            column=column.name,
        )
    return hours


# --- metadata types ----------------------------------------------------------------------


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _is_text_list(kind: pa.DataType) -> bool:
    return (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and (
        _is_text(kind.value_type) or pa.types.is_null(kind.value_type)
    )


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _is_date(kind: pa.DataType) -> bool:
    return pa.types.is_timestamp(kind) or pa.types.is_date(kind) or _is_text(kind)


# The metadata columns the importer reads (all optional but genres, tags and a title), their
# types as the error names them, and the Arrow types that fit.
_METADATA_TYPES = {
    "title": ("strings", _is_text),
    "app_name": ("strings", _is_text),
    "developer": ("strings", _is_text),
    "genres": ("lists of strings", _is_text_list),
    "tags": ("lists of strings", _is_text_list),
    "app_id": ("numbers", _is_number),
    "price": ("numbers", _is_number),
    "num_reviews": ("numbers", _is_number),
    "release_date": ("dates", _is_date),
}
MAX_APP_ID = 2**32 - 1  # Steam app ids are unsigned 32-bit


def _check_app_ids(values: pd.Series, path: Path) -> None:
    """Present app ids are whole numbers in 0..MAX_APP_ID."""
    ids = values.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = ~np.isnan(ids) & ~((ids >= 0) & (ids <= MAX_APP_ID) & (ids == np.floor(ids)))
    if bad.any():
        pos = int(np.argmax(bad))
        raise DataError(path, f"not a Steam app id: {ids[pos]:g}", row=pos + 1, column="app_id")


# --- joining to metadata -----------------------------------------------------------------


def _metadata_by_key(meta: pd.DataFrame) -> pd.DataFrame:
    """One metadata row per normalized title, indexed by it.

    Keys come from `title`, else `app_name`; among rows with the same key the one with an app
    id and then the most reviews wins. Alternative `app_name` keys only fill gaps.
    """
    meta = meta.reset_index(drop=True)
    app_id = meta["app_id"] if "app_id" in meta else pd.Series(np.nan, index=meta.index)
    reviews = meta["num_reviews"] if "num_reviews" in meta else pd.Series(0.0, index=meta.index)
    meta = meta.assign(
        _has_id=app_id.notna(),
        _reviews=pd.to_numeric(reviews, errors="coerce").fillna(0),
        _primary=_names(meta, "title", "app_name"),
        _secondary=_names(meta, "app_name", "title"),
    )
    keyed = pd.concat(
        [
            meta.assign(_key=meta["_primary"].map(normalize_title), _rank=0),
            meta.assign(_key=meta["_secondary"].map(normalize_title), _rank=1),
        ]
    )
    keyed = keyed[keyed["_key"] != ""].sort_values(
        ["_rank", "_has_id", "_reviews"], ascending=[True, False, False], kind="stable"
    )
    return keyed.drop_duplicates("_key").set_index("_key")


def _names(meta: pd.DataFrame, preferred: str, fallback: str) -> pd.Series:
    """The `preferred` name column where it is a non-empty string, else `fallback`."""
    empty = pd.Series("", index=meta.index)
    first, second = meta.get(preferred, empty), meta.get(fallback, empty)
    usable = first.map(lambda v: isinstance(v, str) and bool(v.strip()))
    return first.where(usable, second).map(lambda v: v if isinstance(v, str) else "")


def _play_titles(plays: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct play title: its key, whether metadata matched, and its game id."""
    titles = pd.DataFrame({"play_title": plays["game_title"].unique()})
    titles["key"] = titles["play_title"].map(normalize_title)
    titles["matched"] = titles["key"].isin(meta.index)
    app_ids = titles["key"].map(_column(meta, "app_id"))
    titles["game_id"] = [
        _game_id(app_id, key, title)
        for app_id, key, title in zip(app_ids, titles["key"], titles["play_title"], strict=True)
    ]
    return titles


def _game_id(app_id: float, key: str, title: str) -> str:
    if pd.notna(app_id):
        return str(int(app_id))
    if key:
        return "slug-" + key.replace(" ", "-")
    return "slug-x" + hashlib.sha1(title.strip().encode("utf-8")).hexdigest()[:10]


def _catalog(titles: pd.DataFrame, plays: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """One row per game id, described by its most played title and that title's metadata."""
    minutes = plays.groupby("game_title", sort=False)["minutes_played"].sum()
    titles = (
        titles.assign(minutes=titles["play_title"].map(minutes))
        .sort_values("minutes", ascending=False, kind="stable")
        .drop_duplicates("game_id")
        .sort_index()
    )
    rows = meta.reindex(titles["key"]).reset_index(drop=True)
    matched = titles["matched"].to_numpy()
    store_title = _column(rows, "_primary").to_numpy()
    return pd.DataFrame(
        {
            "game_id": titles["game_id"].to_numpy(),
            "title": np.where(matched, store_title, titles["play_title"].str.strip()),
            "genres": _column(rows, "genres").map(_string_list),
            "tags": _column(rows, "tags").map(_string_list),
            "app_id": pd.to_numeric(_column(rows, "app_id"), errors="coerce").astype("Int64"),
            "developer": _column(rows, "developer").astype("str"),
            "price": pd.to_numeric(_column(rows, "price"), errors="coerce").astype("float64"),
            "release_year": pd.to_datetime(
                _column(rows, "release_date"), errors="coerce"
            ).dt.year.astype("Int64"),
            "has_metadata": matched,
        }
    )


def _column(rows: pd.DataFrame, name: str) -> pd.Series:
    return rows[name] if name in rows else pd.Series(np.nan, index=rows.index, dtype=object)


def _string_list(value: object) -> list[str]:
    """Metadata lists (numpy arrays from Parquet) as lists of str; missing -> []."""
    if isinstance(value, list | tuple | np.ndarray):
        return [v for v in value if isinstance(v, str)]
    return []
