"""A stored model is checked whole before it serves: each part corrupted in turn is refused
with a message naming the part, nothing in it is unpickled as code, and `bentoml serve` of a
broken model stops instead of restarting workers forever."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import bentoml
import faiss
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.servers import BENTOML, free_port, run_until_exit
from tests.unit.conftest import tiny_artifacts
from training.store import ADDED_SETTINGS, ModelIntegrityError, load_model_dir, save_model


@pytest.fixture
def model_copy(trained, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(bentoml.models.get(trained.tag).path, target)
    return target


def _edit_catalog(path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    edit(pd.read_parquet(path / "catalog.parquet")).to_parquet(path / "catalog.parquet")


def _edit_vocab(path: Path, part: str, edit: Callable[[list], list]) -> None:
    vocab = json.loads((path / "vocab.json").read_text())
    vocab[part] = edit(vocab[part])
    (path / "vocab.json").write_text(json.dumps(vocab))


def test_a_copy_of_the_model_folder_loads(model_copy: Path):
    assert load_model_dir(model_copy, tag="copy").index.ntotal > 0


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: (p / "towers.pt").unlink(), "missing towers.pt"),
        (lambda p: (p / "towers.pt").write_bytes(b"not a checkpoint"), "cannot read towers.pt"),
        (lambda p: (p / "index.faiss").write_bytes(b"\0" * 64), "cannot read index.faiss"),
        (
            lambda p: faiss.write_index(faiss.IndexFlatIP(8), str(p / "index.faiss")),
            "index.faiss has dimension 8",
        ),
        (
            lambda p: np.save(p / "item_embeddings.npy", np.zeros((3, 64), np.float32)),
            "item_embeddings.npy has shape",
        ),
        (
            lambda p: (p / "vocab.json").write_text('{"games": ["x"], "genres": [], "tags": []}'),
            "towers.pt does not fit",
        ),
        (
            lambda p: (p / "catalog.parquet").write_bytes(b"PAR1garbage"),
            "cannot read catalog.parquet",
        ),
        (
            lambda p: (p / "training.yaml").write_text("model: {embedding_dim: -1}"),
            "cannot read training.yaml",
        ),
        (lambda p: _edit_vocab(p, "genres", lambda g: g[::-1]), "genres vocabulary"),
        (lambda p: _edit_vocab(p, "tags", lambda t: [x + "!" for x in t]), "tags vocabulary"),
        (lambda p: _edit_vocab(p, "games", lambda g: g[1:] + g[:1]), "games vocabulary"),
        (lambda p: _edit_catalog(p, lambda c: c.iloc[::-1]), "games vocabulary"),
        (lambda p: _edit_catalog(p, lambda c: c.drop(columns="popularity")), "popularity"),
        (
            lambda p: _edit_catalog(p, lambda c: c.assign(genres=[[1]] * len(c))),
            "cannot read catalog.parquet",
        ),
        (
            lambda p: np.save(
                p / "item_embeddings.npy", np.full_like(np.load(p / "item_embeddings.npy"), np.nan)
            ),
            "non-finite",
        ),
        (
            lambda p: np.save(p / "recall_queries.npy", np.zeros((5, 3), np.float32)),
            "recall_queries.npy has shape",
        ),
        (
            lambda p: np.save(p / "item_embeddings.npy", np.array([object()]), allow_pickle=True),
            "cannot read item_embeddings.npy",
        ),
    ],
    ids=[
        "no-weights",
        "bad-weights",
        "bad-index",
        "index-dim",
        "embeddings",
        "vocab",
        "catalog",
        "config",
        "genres-order",
        "tags",
        "games-order",
        "catalog-order",
        "no-popularity",
        "catalog-types",
        "nan-embeddings",
        "queries-dim",
        "pickled-array",
    ],
)
def test_a_broken_model_is_refused_naming_the_part(model_copy: Path, corrupt, message: str):
    corrupt(model_copy)
    with pytest.raises(ModelIntegrityError, match=message):
        load_model_dir(model_copy, tag="broken")


def test_index_with_a_vector_per_game_missing_is_refused(model_copy: Path):
    artifacts = load_model_dir(model_copy, tag="copy")
    short = faiss.IndexFlatIP(artifacts.item_embeddings.shape[1])
    short.add(artifacts.item_embeddings[:-1])
    faiss.write_index(short, str(model_copy / "index.faiss"))
    with pytest.raises(ModelIntegrityError, match="vectors for"):
        load_model_dir(model_copy, tag="short")


class _Payload:
    """Unpickling this calls `Path.touch(marker)`: code run by merely loading a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # pickle's protocol
        return (Path.touch, (self.marker,))


def test_weights_with_a_pickled_payload_are_refused_unrun(model_copy: Path, tmp_path: Path):
    marker = tmp_path / "payload-ran"
    state = torch.load(model_copy / "towers.pt", weights_only=True)
    torch.save({**state, "extra": _Payload(marker)}, model_copy / "towers.pt")
    with pytest.raises(ModelIntegrityError, match="cannot read towers.pt"):
        load_model_dir(model_copy, tag="poisoned")
    assert not marker.exists()


@pytest.mark.slow
def test_bentoml_serve_refuses_to_start_naming_the_part(trained, tmp_path: Path):
    """A real `bentoml serve` of a model whose index does not fit exits with the reason."""
    source = Path(bentoml.models.get(trained.tag).path)
    home = tmp_path / "bentoml"  # a private store: the broken model never becomes anyone's latest
    target = home / "models" / "gamerec" / source.name
    shutil.copytree(source, target)
    (target.parent / "latest").write_text(source.name)
    faiss.write_index(faiss.IndexFlatIP(8), str(target / "index.faiss"))
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("GAMEREC_MODEL_TAG", None)
    command = [BENTOML, "serve", "service:GameRec", "--port", str(free_port())]
    code, output = run_until_exit(command, env, timeout=120)
    assert code != 0, output[-2000:]
    assert "index.faiss has dimension 8, the user tower outputs" in output, output[-2000:]


def test_a_model_saved_before_the_tower_settings_existed_loads_as_it_was(tmp_path: Path):
    """A model of the first design (MLP towers, cosine scoring), saved before these settings
    were written down: it loads with the values it was trained with."""
    legacy = {f"{section}.{name}": value for (section, name), value in ADDED_SETTINGS.items()} | {
        "model_name": "gamerec-legacy",
        "loss.temperature": 0.05,
    }
    tag = save_model(tiny_artifacts(overrides=legacy))
    path = tmp_path / "model"
    shutil.copytree(bentoml.models.get(tag).path, path)
    config = yaml.safe_load((path / "training.yaml").read_text())
    for section, name in ADDED_SETTINGS:
        del config[section][name]
    (path / "training.yaml").write_text(yaml.safe_dump(config))
    loaded = load_model_dir(path, tag="older")
    assert (loaded.settings.model.tower, loaded.settings.model.scoring) == ("mlp", "cosine")
    assert loaded.settings.loss.kept_weight == 0.0


def test_a_model_with_a_removed_part_is_refused_by_name_and_without_it_loads(tmp_path: Path):
    """A model stored with the frozen EASE part (removed, `REMOVED_SETTINGS`) cannot be served
    by this code, and says so; one stored with the part off reads as today's."""
    tag = save_model(tiny_artifacts())
    path = tmp_path / "model"
    shutil.copytree(bentoml.models.get(tag).path, path)
    config = yaml.safe_load((path / "training.yaml").read_text())
    config["model"]["linear_rank"], config["train"]["linear_mixes"] = 0, [0.0]
    (path / "training.yaml").write_text(yaml.safe_dump(config))
    assert load_model_dir(path, tag="older").settings.model.embedding_dim == 8
    config["model"]["linear_rank"] = 256
    (path / "training.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ModelIntegrityError, match="model.linear_rank is set.*gamerec train"):
        load_model_dir(path, tag="older")
