"""`gamerec train --nproc 2`: two processes (DistributedDataParallel over gloo) make one valid
model in the store, as good as the one-process run of the same settings."""

from __future__ import annotations

import bentoml
import pytest

from tests.conftest import quick_settings, train_in_two_processes
from training.store import load_model

pytestmark = pytest.mark.slow
MODEL_NAME = "gamerec-ddp"  # not `gamerec`: other tests serve gamerec:latest
# 510 test players: one run's Recall@10 moves by about 0.02 with the seed alone.
TOLERANCE = 0.04


def test_two_processes_make_one_model_as_good_as_one_process(trained, small_data, tmp_path):
    settings = quick_settings(small_data).model_copy(update={"model_name": MODEL_NAME})
    output = train_in_two_processes(settings, tmp_path)
    versions = bentoml.models.list(MODEL_NAME)
    assert len(versions) == 1, "only rank 0 saves"
    assert f"saved model: {versions[0].tag}" in output
    artifacts = load_model(str(versions[0].tag))  # whole and consistent, or it raises
    two_processes = artifacts.metrics["evaluation"]["two-tower"]
    one_process = trained.table["two-tower"]
    assert abs(two_processes["recall@10"] - one_process["recall@10"]) < TOLERANCE, (
        two_processes,
        one_process,
    )
    assert two_processes["recall@10"] > 1.5 * trained.table["popularity"]["recall@10"]
