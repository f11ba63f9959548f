"""Processed data sets on disk, written atomically.

A processed data directory holds `interactions.parquet`, `games.parquet` and `dataset.json`
(name, creation time, counts, the importer's report and the SHA-256 of both Parquet files).
`dataset.json` is replaced last, so a write interrupted between the replacements is caught on
load: the files no longer match their recorded digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
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
    out_dir = Path(out_dir)
    interactions = validate_interactions(interactions, f"{name} interactions")
    games = validate_games(games, f"{name} games")
    validate_dataset(interactions, games, f"{name} data set")
    contents = {
        INTERACTIONS_FILE: _parquet_bytes(interactions, INTERACTIONS_SCHEMA),
        GAMES_FILE: _parquet_bytes(games, _games_schema(games)),
    }
    info = {
        "name": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "n_users": int(interactions["user_id"].nunique()),
        "n_games": len(games),
        "n_interactions": len(interactions),
        "report": report or {},
        "sha256": {filename: _sha256(data) for filename, data in contents.items()},
    }
    contents[INFO_FILE] = (json.dumps(info, indent=2, default=_json_default) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    # All temporary files are complete before the first replace, so a failure (e.g. a full disk)
    # leaves the previous data set as it was; the info file goes last (see the module doc).
    temps: dict[str, Path] = {}
    try:
        for filename, data in contents.items():
            temps[filename] = _write_temp(out_dir / filename, data)
        for filename, temp in temps.items():
            os.replace(temp, out_dir / filename)
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    return out_dir


def load_dataset(processed_dir: Path) -> Dataset:
    """Read and validate a processed data directory."""
    processed_dir = Path(processed_dir)
    if not processed_dir.is_dir():
        raise DataError(processed_dir, f"data directory not found; {_HOW_TO_CREATE}")
    interactions_path = processed_dir / INTERACTIONS_FILE
    games_path = processed_dir / GAMES_FILE
    interactions = validate_interactions(_read_parquet(interactions_path), str(interactions_path))
    games = validate_games(_read_parquet(games_path), str(games_path))
    info = _read_info(processed_dir / INFO_FILE)
    _check_digests(processed_dir, info)
    validate_dataset(interactions, games, str(interactions_path))
    return Dataset(interactions, games, str(info.get("name", processed_dir.name)), info)


def _write_temp(path: Path, data: bytes) -> Path:
    """A complete, synced temporary file next to `path` (same file system, so replace is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        temp.chmod(0o644)  # mkstemp creates 0600; outputs are meant to be shared
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
        if digest is not None and _sha256((processed_dir / filename).read_bytes()) != digest:
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
