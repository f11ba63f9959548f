"""The held-out protocols: one seeded split, and k folds over players."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tests.conftest import config_section
from training import evaluate
from training.data.synthetic import generate
from training.evaluate import kfold_splits, ranking_metrics
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


def test_a_wide_catalog_is_scored_a_few_users_at_a_time(monkeypatch):
    """The scores of a chunk stay under EVAL_CELLS (a 1,000,000-game catalog scored 1,024 users
    at once took over 20 GB), and the metrics do not depend on the chunking."""
    interactions, games = generate(n_users=400, n_games=60, seed=3)
    histories = Histories.from_interactions(interactions, Vocabulary.from_games_table(games))
    split = kfold_splits(histories, config_section("split"), 5)[0]
    scores = np.random.default_rng(0).standard_normal((len(histories), 60)).astype(np.float32)
    widths = []

    def scorer(eval_set, rows: slice) -> np.ndarray:
        widths.append(rows.stop - rows.start)
        return scores[eval_set.users[rows]]

    whole = ranking_metrics(scorer, histories, split.test, [10])
    monkeypatch.setattr(evaluate, "EVAL_CELLS", 60 * 7)  # 7 users of 60 games at once
    widths.clear()
    chunked = ranking_metrics(scorer, histories, split.test, [10])
    assert widths[0] == 1 and max(widths[1:]) == 7  # the first call measures the catalog
    assert chunked == whole


def test_ease_weights_are_the_closed_form_and_zero_for_unplayed_games():
    """Fitted over the played games only, through a Cholesky inverse: the same weights as
    Steck's closed form over the whole catalog, B = I - P / diag(P), P = (XᵀX + λI)⁻¹."""
    rng = np.random.default_rng(0)
    plays = (rng.random((300, 40)) < 0.15).astype(np.float32)
    plays[:, [5, 31]] = 0.0  # two games nobody played
    lam = 20.0
    precision = np.linalg.inv(plays.T.astype(np.float64) @ plays + lam * np.eye(40))
    expected = np.eye(40) - precision / np.diag(precision)
    weights = evaluate.ease_weights(sp.csr_matrix(plays), lam)
    np.testing.assert_allclose(weights, expected, atol=1e-6)
    assert not weights[[5, 31]].any() and not weights[:, [5, 31]].any()


def test_dlae_weights_match_the_closed_form_with_a_zero_diagonal():
    """Steck's DLAE (2020): B = I - (G + Λ)⁻¹Λ, Λ = p/(1-p)·diag(G) + λI, G = XᵀX; its
    diagonal zeroed; the games nobody played get zero weights."""
    rng = np.random.default_rng(0)
    plays = (rng.random((300, 40)) < 0.15).astype(np.float32)
    plays[:, [5, 31]] = 0.0
    lam, dropout = 20.0, 0.5
    played = np.setdiff1d(np.arange(40), [5, 31])
    gram = plays[:, played].T.astype(np.float64) @ plays[:, played]
    penalty = np.diag(dropout / (1 - dropout) * np.diag(gram) + lam)
    fitted = np.eye(len(played)) - np.linalg.inv(gram + penalty) @ penalty
    np.fill_diagonal(fitted, 0.0)
    expected = np.zeros((40, 40))
    expected[np.ix_(played, played)] = fitted
    weights = evaluate.dlae_weights(sp.csr_matrix(plays), lam, dropout)
    np.testing.assert_allclose(weights, expected, atol=1e-6)
