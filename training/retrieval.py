"""The retrieval task: which games each training example is scored against, and its loss.

Two regimes, chosen by catalog size (`loss.kind: auto`, up to `loss.full_softmax_max_items`):
- full softmax: every catalog game that a training player played is a candidate (with
  `loss.unplayed_negatives: false`); a player's hidden games are the positives
  (summed, as in Mult-VAE). The games left in the input are masked out (`loss.kept_weight` 0)
  or are positives too with that small weight (the emphasized denoising of Steck, 2020);
- sampled softmax: one hidden game per example is its positive; the batch's other positives
  plus `loss.uniform_negatives` played games drawn uniformly are the candidates, each
  corrected by the log of its expected count among them (logQ), since popular games are drawn
  more often.
The losses themselves are `training/losses.py`; the towers are `training/towers.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.config import TrainingSettings
from training.features import ItemBatch, UserBatch, item_batch, with_known
from training.losses import catalog_log_probs, multinomial_nll, sampled_softmax


@dataclass(frozen=True)
class TrainingBatch:
    """Training examples: the users' input features, and the hidden games to find, as
    (row, catalog position) pairs sorted by row. Every row has at least one target."""

    users: UserBatch
    input_rows: torch.Tensor
    input_cols: torch.Tensor
    target_rows: torch.Tensor
    target_cols: torch.Tensor
    target_minutes: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class Candidates:
    """The games a batch is scored against. Sampled softmax: the catalog positions of the
    columns (the batch's targets first) and their log Q correction."""

    items: ItemBatch
    positions: torch.Tensor | None = None
    log_q: torch.Tensor | None = None


def loss_kind(settings: TrainingSettings, n_games: int) -> str:
    kind = settings.loss.kind
    if kind == "auto":
        return "full" if n_games <= settings.loss.full_softmax_max_items else "sampled"
    return kind


class RetrievalTask:
    """The loss of a batch of examples, full or sampled softmax over the catalog's games."""

    def __init__(
        self,
        settings: TrainingSettings,
        items: ItemBatch,
        train_counts: np.ndarray | None,
        rng: np.random.Generator,
    ) -> None:
        """`train_counts`: how many training players played each game (sampled softmax's
        logQ reads it; None when it is not needed)."""
        self.cfg, self.items, self.rng = settings.loss, items, rng
        self.id_dropout = settings.train.item_id_dropout
        self.n_games = len(items.positions)
        self.kind = loss_kind(settings, self.n_games)
        # `items.known`: a training player played the game. A game nobody did is a new game
        # (or one only held-out players played): as a negative of every example, it and every
        # game that shares its genres and tags would be pushed below all played games.
        played = items.known.numpy()
        if settings.loss.unplayed_negatives or not played.any():
            played = np.ones(self.n_games, dtype=bool)
        # Decided once here: the full softmax masks the unplayed games only if there are any.
        self.unplayed = None if played.all() else torch.from_numpy(~played)
        self.negatives = np.flatnonzero(played)
        self.target_share = None
        if self.kind == "sampled" and self.cfg.logq_correction > 0:
            self.target_share = target_share(train_counts)

    def candidates(self, batch: TrainingBatch) -> Candidates:
        """The games a batch is scored against: the whole catalog (full softmax), or its
        targets plus uniform draws (sampled softmax), a share of them without their ids."""
        if self.kind == "full":
            return Candidates(self._dropped_ids(self.items))
        picked = batch.target_cols[_one_per_row(batch.target_rows, len(batch), self.rng)].numpy()
        drawn = self.rng.integers(len(self.negatives), size=self.cfg.uniform_negatives)
        uniform = self.negatives[drawn]
        positions = torch.from_numpy(np.concatenate([picked, uniform]))
        log_q = None
        if self.target_share is not None:
            drawn_share = self.cfg.uniform_negatives / len(self.negatives)
            expected = len(picked) * self.target_share[positions] + drawn_share
            log_q = self.cfg.logq_correction * torch.log(expected)
        return Candidates(self._dropped_ids(select_items(self.items, positions)), positions, log_q)

    def loss(
        self,
        user_emb: torch.Tensor,
        item_emb: torch.Tensor,
        batch: TrainingBatch,
        candidates: Candidates,
    ) -> torch.Tensor:
        """The batch's loss from the towers' outputs for it and for `candidates`."""
        if candidates.positions is not None:
            return sampled_softmax(
                user_emb, item_emb, candidates.positions, self.cfg.temperature, candidates.log_q
            )
        return self._full_loss(user_emb, item_emb, batch)

    def _full_loss(
        self, user_emb: torch.Tensor, item_emb: torch.Tensor, batch: TrainingBatch
    ) -> torch.Tensor:
        target_rows, target_cols = batch.target_rows, batch.target_cols
        input_rows, input_cols = batch.input_rows, batch.input_cols
        kept = self.cfg.kept_weight
        if kept == 0:  # the input's games are neither positives nor negatives
            log_probs = catalog_log_probs(
                user_emb, item_emb, self.cfg.temperature, input_rows, input_cols, self.unplayed
            )
        else:
            log_probs = catalog_log_probs(
                user_emb, item_emb, self.cfg.temperature, outside=self.unplayed
            )
        weights = None  # every hidden game counts 1
        if self.cfg.target_weight == "log1p":  # longer-played hidden games count more
            weights = torch.from_numpy(1.0 + np.log1p(batch.target_minutes)).float()
            weights = weights / weights.mean()
        if kept > 0:
            hidden = weights if weights is not None else torch.ones(len(target_rows))
            target_rows = torch.cat([target_rows, input_rows])
            target_cols = torch.cat([target_cols, input_cols])
            weights = torch.cat([hidden, torch.full((len(input_rows),), kept)])
        return multinomial_nll(log_probs, target_rows, target_cols, weights)

    def _dropped_ids(self, items: ItemBatch) -> ItemBatch:
        """The batch's games with a random `train.item_id_dropout` share placed from metadata
        alone, as a new game is: the item tower learns to place games without their id."""
        if self.id_dropout == 0:
            return items
        kept = self.rng.random(len(items.positions)) >= self.id_dropout
        return with_known(items, items.known.numpy() & kept)


def target_share(train_counts: np.ndarray) -> torch.Tensor:
    """Each game's share of the training targets (smoothed), the in-batch sampling odds."""
    counts = train_counts.astype(np.float64) + 1.0
    return torch.from_numpy(counts / counts.sum()).float()


def select_items(items: ItemBatch, positions: torch.Tensor) -> ItemBatch:
    """The sub-batch of `items` at the given catalog positions (the sampled candidates)."""
    pos = positions.numpy()
    genres, genre_lengths = _gather_bags(items.genres.numpy(), items.genre_offsets.numpy(), pos)
    tags, tag_lengths = _gather_bags(items.tags.numpy(), items.tag_offsets.numpy(), pos)
    return with_known(
        item_batch(pos, genres, genre_lengths, tags, tag_lengths), items.known.numpy()[pos]
    )


def _gather_bags(
    values: np.ndarray, offsets: np.ndarray, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The bags at `positions` of a flat (values, offsets) bag list, flat, with their lengths."""
    ends = np.append(offsets[1:], len(values))
    starts, lengths = offsets[positions], ends[positions] - offsets[positions]
    # Index of each output value: its bag's start plus its place within the bag.
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return values[np.repeat(starts, lengths) + within], lengths


def _one_per_row(rows: torch.Tensor, n_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Index of one pair drawn uniformly per row, from pairs sorted by row (each row has one)."""
    counts = np.bincount(rows.numpy(), minlength=n_rows)
    starts = np.cumsum(counts) - counts
    return starts + (rng.random(n_rows) * counts).astype(np.int64)
