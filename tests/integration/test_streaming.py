"""A training run that streams its plays from Parquet: end to end in one process, and
sharded over two (`gamerec train --nproc 2`)."""

from __future__ import annotations

from pathlib import Path

import bentoml
import pytest

from tests.conftest import quick_settings, train_in_two_processes
from training.config import with_overrides
from training.data import io as data_io
from training.data.io import write_dataset_pieces
from training.data.synthetic import synthesize
from training.pipeline import run
from training.store import load_model

MODEL_NAME = "gamerec-stream"  # not `gamerec`: other tests serve gamerec:latest


@pytest.fixture(scope="module")
def pieces_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,500 players x 200 games in row groups of about 4,000 plays: several pieces."""
    games, pieces = synthesize(n_users=1500, n_games=200, seed=3)
    out = tmp_path_factory.mktemp("streamed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data_io, "ROW_GROUP_PLAYS", 4000)
        return write_dataset_pieces(pieces, games, out, name="synthetic-pieces")


def _streamed(data: Path, **overrides: object):
    settings = quick_settings(data, epochs=4, patience=4).model_copy(
        update={"model_name": MODEL_NAME}
    )
    return with_overrides(settings, {"data.stream_buffer_plays": 5000, **overrides})


def test_auto_streams_a_large_data_set_end_to_end(pieces_data: Path):
    result = run(_streamed(pieces_data, **{"data.stream_above_plays": 1000}), progress=False)
    metrics = result.artifacts.metrics
    assert metrics["training"]["streamed"] is True
    assert set(result.table) == {"popularity", "two-tower"}  # no training player in memory
    assert sum(metrics["split"].values()) == 1500  # training, validation and test players
    assert result.table["two-tower"]["recall@10"] > 1.3 * result.table["popularity"]["recall@10"]
    saved = load_model(result.tag)  # whole and consistent, or it raises
    assert saved.games_table["popularity"].sum() > 0


@pytest.mark.slow
def test_two_processes_share_the_stream(pieces_data: Path, tmp_path: Path):
    settings = _streamed(pieces_data, **{"data.streaming": "always"})
    before = len(bentoml.models.list(MODEL_NAME))
    train_in_two_processes(settings, tmp_path)
    versions = bentoml.models.list(MODEL_NAME)
    assert len(versions) == before + 1, "only rank 0 saves"
    newest = max(versions, key=lambda m: m.info.creation_time)
    metrics = load_model(str(newest.tag)).metrics
    assert metrics["training"]["streamed"] is True
    table = metrics["evaluation"]
    assert table["two-tower"]["recall@10"] > 1.3 * table["popularity"]["recall@10"], table
