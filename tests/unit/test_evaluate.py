"""The held-out protocols: one seeded split, and k folds over players."""

from __future__ import annotations

import numpy as np

from tests.conftest import config_section
from training.data.synthetic import generate
from training.evaluate import kfold_splits
from training.features import Vocabulary
from training.histories import Histories


def test_every_eligible_player_is_a_test_player_exactly_once():
    interactions, games = generate(n_users=400, n_games=60, seed=3)
    histories = Histories.from_interactions(interactions, Vocabulary.from_games_table(games))
    cfg = config_section("split")
    folds = kfold_splits(histories, cfg, 5)
    eligible = np.flatnonzero(histories.lengths() >= cfg.min_games)
    tested = np.concatenate([f.test.users for f in folds])
    assert sorted(tested.tolist()) == eligible.tolist()
    for fold in folds:
        test, val = set(fold.test.users.tolist()), set(fold.validation.users.tolist())
        train = set(fold.train_users.tolist())
        assert not test & val and not train & (test | val)
        assert len(train | test | val) == len(histories)
        assert len(val) == min(int(len(eligible) * cfg.val_users), cfg.max_eval_users)
