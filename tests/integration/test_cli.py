"""The `gamerec` command as a user runs it: a real process, real files, real model store."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, quick_settings

GAMEREC = [sys.executable, "-m", "training.cli"]


def gamerec(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GAMEREC, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "processed"
    result = gamerec(
        "data", "synth", "--users", "1500", "--games", "200", "--seed", "3", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    return out


def test_synth_writes_the_three_files(processed: Path):
    assert sorted(p.name for p in processed.iterdir()) == [
        "dataset.json",
        "games.parquet",
        "interactions.parquet",
    ]


def test_bad_csv_names_file_row_and_column_and_keeps_earlier_outputs(
    processed: Path, tmp_path: Path
):
    before = _digest(processed)
    bad = tmp_path / "plays.csv"
    bad.write_text("user_id,game_title,hours\n1,Dota 2,1.5\n2,Portal,abc\n", encoding="utf-8")
    result = gamerec("data", "steam200k", "--plays", str(bad), "--out", str(processed))
    assert result.returncode == 2
    assert str(bad) in result.stderr and "row 3" in result.stderr and "hours" in result.stderr
    assert "Traceback" not in result.stderr
    assert _digest(processed) == before


def test_bad_config_names_the_field(tmp_path: Path):
    config = tmp_path / "training.yaml"
    config.write_text("train: {epochs: 0}\nmodel: {colour: blue}\n", encoding="utf-8")
    result = gamerec("train", "--config", str(config))
    assert result.returncode == 2
    assert "train.epochs" in result.stderr and "model.colour" in result.stderr


@pytest.mark.slow
def test_train_then_index_then_evaluate(processed: Path, tmp_path: Path):
    config = tmp_path / "training.yaml"
    settings = quick_settings(processed, epochs=3)
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")), encoding="utf-8")

    trained = gamerec("train", "--config", str(config), "--quiet")
    assert trained.returncode == 0, trained.stderr
    assert "| two-tower |" in trained.stdout and "| ease |" in trained.stdout
    tag = trained.stdout.split("saved model: ")[1].split()[0]

    rebuilt = gamerec("index", "--type", "ivf", "--model", tag)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "index ivf: recall@10 vs exact" in rebuilt.stdout
    new_tag = rebuilt.stdout.split("saved model: ")[1].split()[0]
    assert new_tag != tag

    shown = gamerec("evaluate", "--model", new_tag)
    assert shown.returncode == 0, shown.stderr
    assert "| popularity |" in shown.stdout and "index: ivf" in shown.stdout


def test_unknown_model_is_a_clear_error():
    result = gamerec("evaluate", "--model", "gamerec:nope")
    assert result.returncode == 2
    assert "not in the BentoML model store" in result.stderr
