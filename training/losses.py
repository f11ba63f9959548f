"""The retrieval task's losses, separate from the towers.

Both are softmax cross-entropy over the towers' inner products divided by a temperature:
- `sampled_softmax`: the other targets of the batch (and optionally games sampled uniformly
  from the catalog) are the negatives, for catalogs too large for the full softmax. Popular
  games are over-represented among in-batch negatives, so every candidate's logit is corrected
  by log Q (its expected count among the candidates), and a game that is the target of two rows
  is not a negative for either.
- `catalog_log_probs` + `multinomial_nll`: the full softmax, where every catalog game is a
  negative except the user's own other games.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def sampled_softmax(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy where row i's positive is column i, over sampled candidates.

    The columns are the batch's targets (one per row) followed by any extra sampled games;
    every other column is a negative of row i except copies of its own target (accidental
    hits). `item_ids` are the columns' catalog positions; `log_q` (one per column) is the log
    of a column's expected count among the candidates, already scaled by its strength.
    """
    logits = user_emb @ item_emb.T / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    rows = len(user_emb)
    accidental = item_ids.unsqueeze(0) == item_ids[:rows].unsqueeze(1)
    accidental[:, :rows] &= ~torch.eye(rows, dtype=torch.bool)
    logits = logits.masked_fill(accidental, NEG_INF)
    return F.cross_entropy(logits, torch.arange(rows))


def catalog_log_probs(
    user_emb: torch.Tensor,
    all_item_emb: torch.Tensor,
    temperature: float,
    mask_rows: torch.Tensor | None = None,
    mask_cols: torch.Tensor | None = None,
    outside: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-softmax of each user's scores over the whole catalog (the full-softmax regime).

    `(mask_rows, mask_cols)` pairs (the user's input games) are removed from the softmax: known
    positives, not negatives. So are the games where `outside` (one bool per game) is true, for
    every user.
    """
    logits = user_emb @ all_item_emb.T / temperature
    if mask_rows is not None and mask_cols is not None and len(mask_rows):
        logits = logits.index_put((mask_rows, mask_cols), torch.tensor(NEG_INF))
    if outside is not None:
        logits = logits.masked_fill(outside, NEG_INF)
    return logits.log_softmax(dim=1)


def multinomial_nll(
    log_probs: torch.Tensor,
    target_rows: torch.Tensor,
    target_cols: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multinomial log-likelihood of each user's hidden games: row `target_rows[j]` has target
    game `target_cols[j]`. As in Mult-VAE, a user's targets are summed and the users averaged
    (a player with more hidden games weighs more; measured better than averaging per user,
    see docs/quality.md). `weights`, one per target, scale the targets' terms."""
    picked = log_probs[target_rows, target_cols]
    if weights is not None:
        picked = picked * weights
    return -picked.sum() / len(log_probs)
