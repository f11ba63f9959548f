"""The benchmark's scenarios beyond the full-catalog table: long tail, coverage, short
histories, new games."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.evaluate import (
    EvalSet,
    Split,
    catalog_coverage,
    restrict_targets,
    shorten_inputs,
    without_games,
)
from training.features import Vocabulary
from training.histories import Histories

GAMES = pd.DataFrame(
    {"game_id": [f"g_{i}" for i in range(5)], "genres": [[]] * 5, "tags": [[]] * 5}
)
VOCAB = Vocabulary.from_games_table(GAMES)
PLAYS = pd.DataFrame(
    {
        "user_id": ["a", "a", "a", "b", "b", "c", "c", "c"],
        "game_id": ["g_0", "g_1", "g_2", "g_1", "g_3", "g_0", "g_2", "g_4"],
        "minutes_played": 1.0,
        "achievements": 0,
    }
)
HISTORIES = Histories.from_interactions(PLAYS, VOCAB)
# User c (row 2) is held out: input g_0 and g_2 (positions 0, 1 of its history), target g_4.
HELD_OUT = EvalSet(users=np.array([2]), inputs=[np.array([0, 1])], targets=[np.array([4])])


def test_targets_outside_the_allowed_games_are_dropped_with_users_left_without_any():
    allowed = np.array([True, True, True, True, False])
    assert len(restrict_targets(HELD_OUT, allowed)) == 0
    assert restrict_targets(HELD_OUT, ~allowed).targets[0].tolist() == [4]


def test_short_histories_keep_one_or_two_input_games_and_the_targets():
    short = shorten_inputs(HELD_OUT, 1, np.random.default_rng(0))
    assert len(short.inputs[0]) == 1 and short.targets[0].tolist() == [4]


def test_coverage_counts_the_games_in_any_top_list_inputs_excluded():
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]], np.float32)  # inputs g_0, g_2 are excluded
    coverage = catalog_coverage(lambda _, rows: scores[rows], HISTORIES, HELD_OUT, 2, 5)
    assert coverage == 2 / 5  # g_1 and g_3


def test_new_games_lose_their_training_plays_and_held_out_inputs_but_stay_targets():
    split = Split(train_users=np.array([0, 1]), validation=HELD_OUT, test=HELD_OUT)
    cold, cold_split = without_games(HISTORIES, split, np.array([1, 4]))
    assert cold.game_positions[cold.span(0)].tolist() == [0, 2]  # a without g_1
    assert cold.game_positions[cold.span(1)].tolist() == [3]  # b without g_1
    assert cold.game_positions[cold.span(2)].tolist() == [0, 2, 4]  # held out: unchanged
    assert cold_split.test.inputs[0].tolist() == [0, 1] and cold_split.test.targets[0].tolist() == [
        4
    ]
