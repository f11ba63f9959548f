"""On the real Steam data: import, train, and beat popularity on held-out players."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import (
    PROJECT_ROOT,
    STEAM_GAMES,
    STEAM_PLAYS,
    quick_settings,
    requires_steam_data,
)
from training.config import load_training_config
from training.data.io import write_dataset
from training.data.steam import import_steam200k
from training.pipeline import run

pytestmark = [pytest.mark.slow, requires_steam_data()]


@pytest.fixture(scope="module")
def steam_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    interactions, games, report = import_steam200k(STEAM_PLAYS, STEAM_GAMES)
    out = tmp_path_factory.mktemp("steam")
    write_dataset(interactions, games, out, name="steam200k", report=report)
    return out


def test_default_config_beats_popularity_on_held_out_players(steam_data: Path):
    train = load_training_config(PROJECT_ROOT / "configs" / "training.yaml").train
    settings = quick_settings(steam_data, **train.model_dump())  # the default training run
    result = run(settings, progress=False, save=False)
    table = result.table
    assert table["two-tower"]["recall@10"] > 1.2 * table["popularity"]["recall@10"], table
    assert table["two-tower"]["ndcg@10"] > 1.15 * table["popularity"]["ndcg@10"], table
