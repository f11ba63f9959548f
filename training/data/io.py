"""Processed data sets on disk, written atomically.

A processed data directory holds `interactions.parquet`, `games.parquet` and `dataset.json`
(name, creation time, counts, the importer's report and the SHA-256 of both Parquet files).
`dataset.json` is replaced last, so a write interrupted between the replacements is caught on
load: the files no longer match their recorded digests.

The interactions are written in pieces (`write_dataset_pieces`), in row groups of at most
`ROW_GROUP_PLAYS` rows, so that a data set larger than memory can be written, and read back in
batches of row groups (`training/data/stream.py`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from training.schema import (
    GAME_COLUMNS,
    GAMES_SCHEMA,
    INTERACTIONS_SCHEMA,
    DataError,
    validate_dataset,
    validate_games,
    validate_interactions,
)

INTERACTIONS_FILE = "interactions.parquet"
GAMES_FILE = "games.parquet"
INFO_FILE = "dataset.json"
# A streamed epoch reads row groups in a random order (training/data/stream.py): smaller groups
# mix better, larger ones mean fewer reads. 2^17 rows are about 1.5 MB of Parquet.
ROW_GROUP_PLAYS = 1 << 17
_HOW_TO_CREATE = "run `gamerec data synth` or `gamerec data steam200k` to create it"


@dataclass
class Dataset:
    interactions: pd.DataFrame
    games_table: pd.DataFrame
    name: str
    info: dict[str, Any]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the complete new one."""
    os.replace(_write_temp(Path(path), data), path)


def write_dataset(
    interactions: pd.DataFrame,
    games: pd.DataFrame,
    out_dir: Path,
    name: str,
    report: dict[str, Any] | None = None,
) -> Path:
    """Validate and write a data set to `out_dir`; nothing is touched if validation fails."""
    return write_dataset_pieces([interactions], games, out_dir, name, report)


def write_dataset_pieces(
    pieces: Iterable[pd.DataFrame],
    games: pd.DataFrame,
    out_dir: Path,
    name: str,
    report: dict[str, Any] | None = None,
) -> Path:
    """`write_dataset` for interactions that come in pieces, each holding whole players (the
    synthetic generator's), never all in memory. Every piece is validated before the previous
    data set is replaced: a bad one leaves it as it was."""
    out_dir = Path(out_dir)
    games = validate_games(games, f"{name} games")
    out_dir.mkdir(parents=True, exist_ok=True)
    # All temporary files are complete before the first replace, so a failure (e.g. a full disk)
    # leaves the previous data set as it was; the info file goes last (see the module doc).
    temps: dict[str, Path] = {}
    try:
        temps[INTERACTIONS_FILE], n_users, n_rows = _write_interactions(
            pieces, games, out_dir / INTERACTIONS_FILE, f"{name} interactions"
        )
        temps[GAMES_FILE] = _write_temp(
            out_dir / GAMES_FILE, _parquet_bytes(games, _games_schema(games))
        )
        info = {
            "name": name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "n_users": n_users,
            "n_games": len(games),
            "n_interactions": n_rows,
            "report": report or {},
            "sha256": {filename: _file_sha256(temp) for filename, temp in temps.items()},
        }
        info_bytes = (json.dumps(info, indent=2, default=_json_default) + "\n").encode()
        temps[INFO_FILE] = _write_temp(out_dir / INFO_FILE, info_bytes)
        for filename, temp in temps.items():
            os.replace(temp, out_dir / filename)
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    return out_dir


def _write_interactions(
    pieces: Iterable[pd.DataFrame], games: pd.DataFrame, path: Path, source: str
) -> tuple[Path, int, int]:
    """The pieces, validated, in a complete temporary file next to `path`; (file, players,
    rows). Pieces are gathered into row groups of up to `ROW_GROUP_PLAYS` rows; a larger piece
    is cut into row groups of that size (a player may then span two)."""
    temp = _new_temp(path)
    n_users = n_rows = 0
    try:
        with pq.ParquetWriter(temp, INTERACTIONS_SCHEMA) as writer:
            for group in _row_groups(pieces):
                group = validate_piece(group, games, source, first_row=n_rows + 1)
                table = pa.Table.from_pandas(
                    group, schema=INTERACTIONS_SCHEMA, preserve_index=False
                )
                writer.write_table(table, row_group_size=ROW_GROUP_PLAYS)
                n_users += group["user_id"].nunique()
                n_rows += len(group)
        if n_rows == 0:
            raise DataError(source, "no interactions")
        _sync(temp)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp, n_users, n_rows


def _row_groups(pieces: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
    """Consecutive pieces gathered into frames of up to `ROW_GROUP_PLAYS` rows (a piece larger
    than that alone)."""
    pending: list[pd.DataFrame] = []
    rows = 0
    for piece in pieces:
        if pending and rows + len(piece) > ROW_GROUP_PLAYS:
            yield _joined(pending)
            pending, rows = [], 0
        if not piece.empty:
            pending.append(piece)
            rows += len(piece)
    if pending:
        yield _joined(pending)


def _joined(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def validate_piece(
    interactions: pd.DataFrame, games: pd.DataFrame, source: str, first_row: int
) -> pd.DataFrame:
    """`validate_interactions` and `validate_dataset` for a piece of a table whose first row is
    row `first_row` of the whole: errors name rows of the whole table."""
    try:
        interactions = validate_interactions(interactions, source)
        validate_dataset(interactions, games, source)
    except DataError as err:
        if err.row is None or first_row == 1:
            raise
        row = err.row + first_row - 1
        raise DataError(err.file, err.message, row=row, column=err.column) from err
    return interactions


@dataclass
class StoredDataset:
    """A processed data set whose interactions stay on disk (to be streamed): the catalog, the
    info, and the checked interactions file."""

    directory: Path
    games_table: pd.DataFrame
    name: str
    info: dict[str, Any]

    @property
    def interactions_path(self) -> Path:
        return self.directory / INTERACTIONS_FILE

    def n_interactions(self) -> int:
        """Rows of the interactions file, from its Parquet footer."""
        path = self.interactions_path
        try:
            return pq.read_metadata(path).num_rows
        except (pa.ArrowException, OSError) as e:
            raise DataError(path, f"not a readable Parquet file: {e}") from e


def open_dataset(processed_dir: Path) -> StoredDataset:
    """A processed data directory's catalog and info, both files checked against their
    digests; the interactions are not read."""
    processed_dir = Path(processed_dir)
    if not processed_dir.is_dir():
        raise DataError(processed_dir, f"data directory not found; {_HOW_TO_CREATE}")
    interactions_path = processed_dir / INTERACTIONS_FILE
    if not interactions_path.is_file():
        raise DataError(interactions_path, f"file not found; {_HOW_TO_CREATE}")
    games_path = processed_dir / GAMES_FILE
    games = validate_games(_read_parquet(games_path), str(games_path))
    info = _read_info(processed_dir / INFO_FILE)
    _check_digests(processed_dir, info)
    return StoredDataset(processed_dir, games, str(info.get("name", processed_dir.name)), info)


def load_dataset(processed_dir: Path) -> Dataset:
    """Read and validate a processed data directory."""
    return read_interactions(open_dataset(processed_dir))


def read_interactions(stored: StoredDataset) -> Dataset:
    """The opened data set with its interactions read whole and validated."""
    path = stored.interactions_path
    interactions = validate_interactions(_read_parquet(path), str(path))
    validate_dataset(interactions, stored.games_table, str(path))
    return Dataset(interactions, stored.games_table, stored.name, stored.info)


def _new_temp(path: Path) -> Path:
    """An empty temporary file next to `path` (same file system, so replace is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def _write_temp(path: Path, data: bytes) -> Path:
    """A complete, synced temporary file next to `path` holding `data`."""
    temp = _new_temp(path)
    try:
        temp.write_bytes(data)
        _sync(temp)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _sync(path: Path) -> None:
    """Flush a written file to disk, readable by all (mkstemp creates 0600; outputs are meant
    to be shared)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    path.chmod(0o644)


def _file_sha256(path: Path) -> str:
    """The file's SHA-256, read in blocks (a 20M-play file is never read whole)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _parquet_bytes(df: pd.DataFrame, schema: pa.Schema) -> bytes:
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _games_schema(games: pd.DataFrame) -> pa.Schema:
    """Core columns typed by GAMES_SCHEMA, extra columns as pyarrow infers them."""
    extras = [c for c in games.columns if c not in GAME_COLUMNS]
    if not extras:
        return GAMES_SCHEMA
    inferred = pa.Schema.from_pandas(games[extras], preserve_index=False)
    return pa.schema(list(GAMES_SCHEMA) + list(inferred))


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(path, f"file not found; {_HOW_TO_CREATE}")
    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, f"not a readable Parquet file: {e}") from e


def _read_info(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(path, f"file not found; {_HOW_TO_CREATE}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"not valid JSON: {e}") from e
    if not isinstance(info, dict):
        raise DataError(path, "expected a JSON object")
    return info


def _check_digests(processed_dir: Path, info: dict[str, Any]) -> None:
    """Both Parquet files are the ones `dataset.json` was written with (older sets record none)."""
    recorded = info.get("sha256", {})
    if not isinstance(recorded, dict):
        raise DataError(processed_dir / INFO_FILE, "'sha256' must map file names to digests")
    for filename in (INTERACTIONS_FILE, GAMES_FILE):
        digest = recorded.get(filename)
        if digest is not None and _file_sha256(processed_dir / filename) != digest:
            raise DataError(
                processed_dir / filename,
                f"does not match its digest in {INFO_FILE}: the files come from different "
                f"writes (one was interrupted?); {_HOW_TO_CREATE}",
            )


def _json_default(value: object) -> object:
    """numpy scalars (common in reports) as plain numbers, paths as strings."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {value!r}")
