"""Shared fixtures. Tests use a private BentoML model store, never the user's ~/bentoml."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="gamerec-test-bentoml-")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import pytest
import yaml
from pydantic import BaseModel

from training.config import TrainingSettings, load_training_config, validate

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
STEAM_PLAYS = SHARED_DATA / "steam-200k-play.csv"
STEAM_GAMES = SHARED_DATA / "steam-games.parquet"


def requires_steam_data() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not (STEAM_PLAYS.is_file() and STEAM_GAMES.is_file()),
        reason=f"real Steam data not found in {SHARED_DATA} (it is there in CI)",
    )


def config_section(name: str, **overrides: object) -> BaseModel:
    """A section of configs/training.yaml (e.g. "index", "features"), with overrides, validated."""
    section = getattr(load_training_config(), name)
    return validate(type(section), {**section.model_dump(), **overrides}, f"{name} overrides")


def quick_settings(processed_dir: Path, **train: object) -> TrainingSettings:
    """The project's config with a short training run (a higher learning rate makes up for it)."""
    settings = load_training_config(PROJECT_ROOT / "configs" / "training.yaml")
    return settings.model_copy(
        update={
            "data": settings.data.model_copy(update={"processed_dir": processed_dir}),
            "train": settings.train.model_copy(
                update={"epochs": 6, "patience": 3, "learning_rate": 5e-3, **train}
            ),
            "eval": settings.eval.model_copy(update={"ease_lambdas": [50.0, 200.0]}),
        }
    )


def train_in_two_processes(settings: TrainingSettings, directory: Path) -> str:
    """`gamerec train --nproc 2` with these settings (written to `directory`); its output."""
    config = directory / "training.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    gamerec = str(Path(sys.executable).with_name("gamerec"))
    done = subprocess.run(
        [gamerec, "train", "--config", str(config), "--nproc", "2", "--quiet"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic data set on disk (3,000 users x 400 games)."""
    from training.data.io import write_dataset
    from training.data.synthetic import generate

    out = tmp_path_factory.mktemp("processed")
    interactions, games = generate(n_users=3000, n_games=400, seed=7)
    write_dataset(interactions, games, out, name="synthetic-small")
    return out


@pytest.fixture(scope="session")
def trained(small_data: Path):
    """One short training run on the small data set, saved to the (private) model store."""
    from training.pipeline import run

    return run(quick_settings(small_data), progress=False, save=True)


ADMIN_TOKEN = "test-admin-token-" + "x" * 24


@pytest.fixture(scope="session")
def served(trained) -> Iterator[str]:
    """One `bentoml serve` of the trained model, shared by every test that only reads from it;
    its URL. The admin token is set, so admin requests are checked, and no test sends it."""
    from tests.servers import running_server

    env = {"GAMEREC_MODEL_TAG": trained.tag, "GAMEREC_ADMIN_TOKEN": ADMIN_TOKEN}
    with running_server(["service:GameRec"], env=env) as server:
        yield server.url
