"""The retrieval task's losses, separate from the towers.

Both are softmax cross-entropy over cosine scores divided by a temperature:
- `in_batch_softmax`: the other targets of the batch are the negatives. Popular games are
  over-represented as negatives, so their logits are corrected by log Q (their sampling
  probability), and a game that is the target of two rows is not a negative for either.
- `full_softmax`: every catalog game is a negative, except the user's own other games.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def in_batch_softmax(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy where row i's positive is column i.

    `item_ids` are the catalog positions of the batch's targets; `log_q` (catalog-sized) is the
    log probability of a game being drawn as a target, already scaled by its strength.
    """
    logits = user_emb @ item_emb.T / temperature
    if log_q is not None:
        logits = logits - log_q[item_ids].unsqueeze(0)
    same_item = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)
    accidental = same_item & ~torch.eye(len(item_ids), dtype=torch.bool)
    logits = logits.masked_fill(accidental, NEG_INF)
    return F.cross_entropy(logits, torch.arange(len(item_ids)))


def full_softmax(
    user_emb: torch.Tensor,
    all_item_emb: torch.Tensor,
    target_rows: torch.Tensor,
    target_cols: torch.Tensor,
    temperature: float,
    mask_rows: torch.Tensor | None = None,
    mask_cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multinomial log-likelihood of each user's hidden games over the whole catalog.

    Row `target_rows[j]` has target game `target_cols[j]`. As in Mult-VAE, a user's targets are
    summed and the users averaged (so a player with more hidden games weighs more; measured
    better than averaging per user, see docs/quality.md). `(mask_rows, mask_cols)` pairs (the
    user's input games) are removed from the softmax: known positives, not negatives.
    """
    logits = user_emb @ all_item_emb.T / temperature
    if mask_rows is not None and mask_cols is not None and len(mask_rows):
        logits = logits.index_put((mask_rows, mask_cols), torch.tensor(NEG_INF))
    log_probs = logits.log_softmax(dim=1)[target_rows, target_cols]
    return -log_probs.sum() / len(user_emb)
