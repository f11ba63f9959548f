"""Held-out-users evaluation: the split, full-catalog ranking metrics, and the baselines.

Protocol: users with at least `split.min_games` games are eligible to be held out; a seeded
share becomes validation users and another test users. Each held-out user's games are split
(seeded) into inputs (80%) and targets (20%). Every method ranks the whole catalog from the
inputs alone, inputs are excluded from the ranking, and we report Recall@K (hits over
min(K, #targets)) and NDCG@K. Training sees only the training users.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from training.config import EvalConfig, SplitConfig
from training.histories import Histories

# Scores every catalog game for a chunk of evaluation users: (users, n_games) float32.
Scorer = Callable[["EvalSet", slice], np.ndarray]
Param = TypeVar("Param")
Weigh = Callable[[np.ndarray], np.ndarray]  # play minutes -> a played game's input weight
EVAL_CHUNK = 1024  # users scored at once, at most
# ... and at most about this many scores at once: a 1,000,000-game catalog scores 20 users at a
# time (80 MB of scores, 160 MB of ranks), where 1,024 users took over 20 GB.
EVAL_CELLS = 20_000_000


@dataclass(frozen=True)
class EvalSet:
    """Held-out users with the positions (within their history) of inputs and the target games."""

    users: np.ndarray
    inputs: list[np.ndarray]  # positions within each user's history
    targets: list[np.ndarray]  # catalog positions

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class Split:
    train_users: np.ndarray
    validation: EvalSet
    test: EvalSet


def split_users(histories: Histories, cfg: SplitConfig) -> Split:
    rng = np.random.default_rng(cfg.seed)
    lengths = histories.lengths()
    eligible = rng.permutation(np.flatnonzero(lengths >= cfg.min_games))
    n_val = min(int(len(eligible) * cfg.val_users), cfg.max_eval_users)
    n_test = min(int(len(eligible) * cfg.test_users), cfg.max_eval_users)
    val_users, test_users = np.sort(eligible[:n_val]), np.sort(eligible[n_val : n_val + n_test])
    held_out = np.zeros(len(histories), dtype=bool)
    held_out[val_users] = held_out[test_users] = True
    return Split(
        train_users=np.flatnonzero(~held_out),
        validation=_hold_out(histories, val_users, cfg.holdout_fraction, rng),
        test=_hold_out(histories, test_users, cfg.holdout_fraction, rng),
    )


def kfold_splits(histories: Histories, cfg: SplitConfig, folds: int) -> list[Split]:
    """Every eligible player a test player once: the eligible players, in a seeded order, cut
    into `folds` parts. In fold i, part i is the test players, the first `val_users` share of
    the others (at most `max_eval_users`) the validation players, and everyone else trains."""
    rng = np.random.default_rng(cfg.seed)
    eligible = rng.permutation(np.flatnonzero(histories.lengths() >= cfg.min_games))
    parts = np.array_split(eligible, folds)
    n_val = min(int(len(eligible) * cfg.val_users), cfg.max_eval_users)
    splits = []
    for i, test_users in enumerate(parts):
        others = np.concatenate([p for j, p in enumerate(parts) if j != i])
        val_users = others[:n_val]
        held_out = np.zeros(len(histories), dtype=bool)
        held_out[val_users] = held_out[test_users] = True
        splits.append(
            Split(
                train_users=np.flatnonzero(~held_out),
                validation=_hold_out(histories, np.sort(val_users), cfg.holdout_fraction, rng),
                test=_hold_out(histories, np.sort(test_users), cfg.holdout_fraction, rng),
            )
        )
    return splits


def _hold_out(
    histories: Histories, users: np.ndarray, fraction: float, rng: np.random.Generator
) -> EvalSet:
    inputs, targets = [], []
    for user in users:
        n = histories.indptr[user + 1] - histories.indptr[user]
        order = rng.permutation(n)
        n_targets = max(1, int(round(fraction * n)))
        inputs.append(np.sort(order[n_targets:]))
        targets.append(histories.game_positions[histories.span(user)][np.sort(order[:n_targets])])
    return EvalSet(users=users, inputs=inputs, targets=targets)


def ranking_metrics(
    scorer: Scorer, histories: Histories, eval_set: EvalSet, ks: list[int]
) -> dict[str, float]:
    """Recall@K and NDCG@K of a scorer over the whole catalog, inputs excluded."""
    max_k = max(ks)
    totals = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    discounts = 1.0 / np.log2(np.arange(2, max_k + 2))
    for start, top in top_lists(scorer, histories, eval_set, max_k):
        for i, ranked in enumerate(top):
            targets = eval_set.targets[start + i]
            hits = np.isin(ranked, targets)
            for k in ks:
                ideal = min(k, len(targets))
                totals[f"recall@{k}"] += hits[:k].sum() / ideal
                totals[f"ndcg@{k}"] += (hits[:k] * discounts[:k]).sum() / discounts[:ideal].sum()
    return {name: total / max(len(eval_set), 1) for name, total in totals.items()}


def top_lists(
    scorer: Scorer, histories: Histories, eval_set: EvalSet, k: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Each chunk's first row and its users' top-k games over the whole catalog, inputs
    excluded."""
    chunk = _chunk_rows(scorer, eval_set)
    for start in range(0, len(eval_set), chunk):
        rows = slice(start, min(start + chunk, len(eval_set)))
        scores = np.asarray(scorer(eval_set, rows), dtype=np.float32).copy()
        for i, user in enumerate(eval_set.users[rows]):
            scores[
                i, histories.game_positions[histories.span(user)][eval_set.inputs[start + i]]
            ] = -np.inf
        yield start, _top_k(scores, k)


def _chunk_rows(scorer: Scorer, eval_set: EvalSet) -> int:
    """Users to score at once: EVAL_CHUNK, fewer where the catalog is wide (one user's scores,
    scored first, tell its width)."""
    if len(eval_set) == 0:
        return EVAL_CHUNK
    width = np.shape(scorer(eval_set, slice(0, 1)))[1]
    return max(1, min(EVAL_CHUNK, EVAL_CELLS // max(width, 1)))


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def input_matrix(
    histories: Histories,
    eval_set: EvalSet,
    rows: slice,
    n_games: int,
    weigh: Weigh | None = None,
) -> sp.csr_matrix:
    """User x game matrix of the evaluation users' inputs: 1 per played game, or
    `weigh(minutes)`."""
    spans = [histories.span(u) for u in eval_set.users[rows]]
    picks = eval_set.inputs[rows]
    cols = [histories.game_positions[s][i] for s, i in zip(spans, picks, strict=True)]
    if weigh is None:
        return _user_matrix(cols, None, n_games)
    minutes = [histories.minutes[s][i] for s, i in zip(spans, picks, strict=True)]
    return _user_matrix(cols, weigh(np.concatenate(minutes)) if cols else None, n_games)


def train_matrix(
    histories: Histories, users: np.ndarray, n_games: int, weigh: Weigh | None = None
) -> sp.csr_matrix:
    """User x game matrix of the training users: 1 per played game, or `weigh(minutes)`."""
    spans = [histories.span(u) for u in users]
    cols = [histories.game_positions[s] for s in spans]
    if weigh is None or not spans:
        return _user_matrix(cols, None, n_games)
    return _user_matrix(cols, weigh(np.concatenate([histories.minutes[s] for s in spans])), n_games)


def _user_matrix(cols: list[np.ndarray], data: np.ndarray | None, n_games: int) -> sp.csr_matrix:
    """Rows of the games in `cols`, with the values `data` (flat, in that order) or 1."""
    indptr = np.concatenate([[0], np.cumsum([len(c) for c in cols])])
    indices = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    values = np.ones(indptr[-1]) if data is None else data
    return sp.csr_matrix((values.astype(np.float32), indices, indptr), shape=(len(cols), n_games))


def popularity_scorer(train: sp.csr_matrix) -> Scorer:
    counts = np.asarray(train.sum(axis=0)).ravel().astype(np.float32)

    def score(eval_set: EvalSet, rows: slice) -> np.ndarray:
        return np.broadcast_to(counts, (rows.stop - rows.start, len(counts)))

    return score


def item_knn_scorer(histories: Histories, train: sp.csr_matrix) -> Scorer:
    """Item-kNN: cosine similarity of games' player vectors, summed over the user's inputs."""
    gram = (train.T @ train).toarray().astype(np.float32)
    norms = np.sqrt(np.diag(gram)) + 1e-9
    similarity = gram / norms[:, None] / norms[None, :]
    np.fill_diagonal(similarity, 0.0)

    def score(eval_set: EvalSet, rows: slice) -> np.ndarray:
        return np.asarray(input_matrix(histories, eval_set, rows, len(similarity)) @ similarity)

    return score


def _played_inverse(
    train: sp.csr_matrix, penalty: Callable[[np.ndarray], np.ndarray], name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(played games, (G + diag(penalty))⁻¹, penalty) over the games with a training play: a
    game without one has a zero row and column in the Gram matrix G, so its weights are zero
    either way, and the inverse costs the cube of the games fitted. G plus a positive diagonal
    is positive definite: inverted through its Cholesky factor, in half the time of a general
    inverse. `penalty` maps G's diagonal to the diagonal added."""
    played = np.flatnonzero(train.getnnz(axis=0))
    fitted = train[:, played]
    gram = (fitted.T @ fitted).toarray().astype(np.float64)
    added = penalty(np.diag(gram).copy())
    gram[np.diag_indices_from(gram)] += added
    factor, info = scipy.linalg.lapack.dpotrf(gram, lower=False, overwrite_a=True)
    if info == 0:
        precision, info = scipy.linalg.lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"{name}'s Gram matrix + penalty is not positive definite (LAPACK {info})")
    precision = np.triu(precision) + np.triu(precision, 1).T  # dpotri fills the upper half
    return played, precision, added


def _full_weights(n_games: int, played: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    fitted[np.diag_indices_from(fitted)] = 0.0
    weights = np.zeros((n_games, n_games), np.float32)
    weights[np.ix_(played, played)] = fitted
    return weights


def ease_weights(train: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE (Steck, 2019): closed-form item-item weights with a zero diagonal."""
    played, precision, _ = _played_inverse(train, lambda d: np.full_like(d, lam), f"EASE (λ={lam})")
    return _full_weights(train.shape[1], played, -precision / np.diag(precision))


def dlae_weights(train: sp.csr_matrix, lam: float, dropout: float) -> np.ndarray:
    """DLAE (Steck, 2020): the linear autoencoder trained with input dropout `dropout`, in
    closed form, B = I - (G + Λ)⁻¹Λ with Λ = dropout/(1 - dropout)·diag(G) + λI; its diagonal
    is zeroed, as a player's own games are never ranked. Popular games get the larger
    penalty, where EASE's λ is the same for every game."""
    played, precision, added = _played_inverse(
        train, lambda d: dropout / (1 - dropout) * d + lam, f"DLAE (λ={lam}, p={dropout})"
    )
    return _full_weights(train.shape[1], played, -precision * added[None, :])


def ease_scorer(histories: Histories, weights: np.ndarray, weigh: Weigh | None = None) -> Scorer:
    """x·B, x the inputs (binary, or weighted by `weigh(minutes)`)."""

    def score(eval_set: EvalSet, rows: slice) -> np.ndarray:
        inputs = input_matrix(histories, eval_set, rows, len(weights), weigh)
        return np.asarray(inputs @ weights)

    return score


def tune_ease(
    histories: Histories,
    train: sp.csr_matrix,
    validation: EvalSet,
    lambdas: Sequence[Param],
    fit: Callable[[sp.csr_matrix, Param], np.ndarray] = ease_weights,
    weigh: Weigh | None = None,
) -> tuple[Param, np.ndarray]:
    """EASE with λ chosen by Recall@10 on validation users (or another item-item model `fit`
    with its parameters chosen so, queried with inputs weighted by `weigh`)."""
    best: tuple[float, Param, np.ndarray] | None = None
    for lam in lambdas:
        weights = fit(train, lam)
        scorer = ease_scorer(histories, weights, weigh)
        recall = ranking_metrics(scorer, histories, validation, [10])
        if best is None or recall["recall@10"] > best[0]:
            best = (recall["recall@10"], lam, weights)
    assert best is not None, "eval.ease_lambdas is empty"
    return best[1], best[2]


def baseline_table(
    histories: Histories,
    split: Split,
    n_games: int,
    cfg: EvalConfig,
    ease_lambda: float | None = None,
) -> dict[str, dict[str, float]]:
    """Popularity and EASE on the test users (EASE only up to `cfg.ease_max_games`), its λ
    tuned on the validation users unless already tuned there (`ease_lambda`)."""
    train = train_matrix(histories, split.train_users, n_games)
    table = {"popularity": ranking_metrics(popularity_scorer(train), histories, split.test, cfg.ks)}
    if n_games <= cfg.ease_max_games:
        lambdas = cfg.ease_lambdas if ease_lambda is None else [ease_lambda]
        lam, weights = tune_ease(histories, train, split.validation, lambdas)
        table["ease"] = {
            **ranking_metrics(ease_scorer(histories, weights), histories, split.test, cfg.ks),
            "lambda": lam,
        }
    return table


# ------------------------------------------------------------ what the baselines cannot do


def restrict_targets(eval_set: EvalSet, allowed: np.ndarray) -> EvalSet:
    """The same users and inputs, only the targets where `allowed` (per catalog game) is
    true; users left without a target are dropped."""
    kept = [t[allowed[t]] for t in eval_set.targets]
    rows = [i for i, t in enumerate(kept) if len(t)]
    return EvalSet(
        users=eval_set.users[rows],
        inputs=[eval_set.inputs[i] for i in rows],
        targets=[kept[i] for i in rows],
    )


def shorten_inputs(eval_set: EvalSet, longest: int, rng: np.random.Generator) -> EvalSet:
    """Each user with 1 to `longest` of their input games (drawn at random): a player who has
    played almost nothing yet. Targets unchanged."""
    inputs = [
        np.sort(rng.choice(keep, size=min(len(keep), rng.integers(1, longest + 1)), replace=False))
        for keep in eval_set.inputs
    ]
    return EvalSet(users=eval_set.users, inputs=inputs, targets=eval_set.targets)


def catalog_coverage(
    scorer: Scorer, histories: Histories, eval_set: EvalSet, k: int, n_games: int
) -> float:
    """Share of the catalog that appears in at least one user's top-k list."""
    shown = np.zeros(n_games, dtype=bool)
    for _, top in top_lists(scorer, histories, eval_set, k):
        shown[top.ravel()] = True
    return float(shown.mean())


def pick_new_games(
    games_with_metadata: np.ndarray, share: float, rng: np.random.Generator
) -> np.ndarray:
    """A random `share` of the games that have metadata: the games to treat as new."""
    candidates = np.flatnonzero(games_with_metadata)
    return np.sort(rng.choice(candidates, size=int(round(share * len(candidates))), replace=False))


def without_games(histories: Histories, split: Split, games: np.ndarray) -> tuple[Histories, Split]:
    """The split as if `games` were new: nobody who trains has played them, and held-out users'
    inputs do not contain them; held-out users' targets keep them (what a new game must win)."""
    new = np.zeros(int(histories.game_positions.max(initial=-1)) + 1, dtype=bool)
    new[games] = True
    trains = np.zeros(len(histories), dtype=bool)
    trains[split.train_users] = True
    row_of_play = np.repeat(np.arange(len(histories)), histories.lengths())
    keep = ~(new[histories.game_positions] & trains[row_of_play])
    counts = np.bincount(row_of_play[keep], minlength=len(histories))
    cold = Histories(
        user_ids=histories.user_ids,
        indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        game_positions=histories.game_positions[keep],
        minutes=histories.minutes[keep],
        achievements=histories.achievements[keep],
    )

    def without_new_inputs(eval_set: EvalSet) -> EvalSet:
        inputs = [
            keep_at[~new[histories.game_positions[histories.span(u)][keep_at]]]
            for u, keep_at in zip(eval_set.users, eval_set.inputs, strict=True)
        ]
        return EvalSet(users=eval_set.users, inputs=inputs, targets=eval_set.targets)

    return cold, Split(
        train_users=split.train_users,
        validation=without_new_inputs(split.validation),
        test=without_new_inputs(split.test),
    )
