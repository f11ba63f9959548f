import math

import torch

from training.losses import catalog_log_probs, multinomial_nll, sampled_softmax


def full_softmax(users, items, rows, cols, temperature, mask_rows=None, mask_cols=None):
    return multinomial_nll(
        catalog_log_probs(users, items, temperature, mask_rows, mask_cols), rows, cols
    )


EYE = torch.eye(2)


def _ce(row: list[float], target: int) -> float:
    return -row[target] + math.log(sum(math.exp(v) for v in row))


def test_sampled_softmax_matches_hand_computation():
    users = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    loss = sampled_softmax(users, EYE, torch.tensor([0, 1]), temperature=0.5)
    # logits = users @ EYE.T / 0.5 = [[2, 0], [1.2, 1.6]]; positives on the diagonal.
    expected = (_ce([2.0, 0.0], 0) + _ce([1.2, 1.6], 1)) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def test_log_q_correction_subtracts_per_column():
    log_q = torch.log(torch.tensor([0.5, 0.25]))
    loss = sampled_softmax(EYE, EYE, torch.tensor([0, 1]), temperature=1.0, log_q=log_q)
    row0 = [1 - math.log(0.5), 0 - math.log(0.25)]
    row1 = [0 - math.log(0.5), 1 - math.log(0.25)]
    assert math.isclose(loss.item(), (_ce(row0, 0) + _ce(row1, 1)) / 2, rel_tol=1e-6)


def test_accidental_hits_are_not_negatives():
    # Both rows target game 3: each row's other column is the same game, so it is masked.
    loss = sampled_softmax(EYE, EYE, torch.tensor([3, 3]), temperature=1.0)
    assert math.isclose(loss.item(), 0.0, abs_tol=1e-7)


def test_full_softmax_masks_the_users_inputs():
    items = torch.eye(3)
    user = torch.tensor([[1.0, 0.0, 0.0]])
    one = torch.tensor([0])
    plain = full_softmax(user, items, one, torch.tensor([0]), temperature=1.0)
    assert math.isclose(plain.item(), _ce([1.0, 0.0, 0.0], 0), rel_tol=1e-6)
    masked = full_softmax(
        user, items, one, torch.tensor([0]), 1.0, torch.tensor([0]), torch.tensor([2])
    )
    assert math.isclose(masked.item(), _ce([1.0, 0.0], 0), rel_tol=1e-6)


def test_full_softmax_sums_targets_per_user_and_averages_users():
    items = torch.eye(3)
    users = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # user 0 has targets 0 and 1, user 1 has target 2.
    loss = full_softmax(users, items, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2]), 1.0)
    row0, row1 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    expected = (_ce(row0, 0) + _ce(row0, 1) + _ce(row1, 2)) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def test_sampled_negatives_extend_the_columns_and_mask_accidental_hits():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Columns: the two targets (games 5, 6), then sampled games 7 and 5 (a copy of row 0's
    # target: masked for row 0, a plain negative for row 1).
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    loss = sampled_softmax(users, items, torch.tensor([5, 6, 7, 5]), temperature=1.0)
    row0 = [1.0, 0.0, 0.6]
    row1 = [0.0, 1.0, 0.8, 0.0]
    assert math.isclose(loss.item(), (_ce(row0, 0) + _ce(row1, 1)) / 2, rel_tol=1e-6)
