"""The selection rule on hand-made grids whose answers were picked by hand (docs/tune.md)."""

from __future__ import annotations

import math

from m2ib.tuning.rule import choose, mean_ranks, pareto_front

DIRECTIONS = {"sanity": "lower", "faithfulness": "higher", "agreement": "higher", "constant": "lower"}


def point(sanity, faithfulness, agreement, constant=0.0, **extra):
    return {"sanity": sanity, "faithfulness": faithfulness, "agreement": agreement, "constant": constant, **extra}


def test_front_drops_dominated_points():
    assert pareto_front([[1, 1], [2, 2], [2, 1], [0, 3]]) == [1, 3]
    assert pareto_front([[1, 1], [1, 1]]) == [0, 1]  # equal points do not dominate each other


def test_mean_ranks_share_ties():
    assert mean_ranks({0: [3.0], 1: [3.0], 2: [1.0]}) == {0: 1.5, 1: 1.5, 2: 3.0}


def test_hand_made_grid():
    points = [
        point(0.9, 0.30, 0.9),  # 0: best faithfulness and agreement, but not sane
        point(0.3, 0.10, 0.5),  # 1: sane; dominated by 2
        point(0.2, 0.20, 0.6),  # 2: sane, right; ranks 1.5 (faith 2nd, agreement 2nd... see below)
        point(0.4, 0.25, 0.4),  # 3: sane, best sane faithfulness, worst agreement
        point(0.1, -0.05, 0.95),  # 4: sanest, but not right (faithfulness <= 0)
    ]
    c = choose(points, DIRECTIONS)
    assert 1 not in c.front  # dominated by 2 on every criterion
    assert set(c.front) == {0, 2, 3, 4}
    assert set(c.qualifying) == {2, 3}
    assert "not sane" in c.reasons[0] and "not right" in c.reasons[4]
    # among 2 and 3: faithfulness ranks (2: 2, 3: 1), agreement (2: 1, 3: 2), constant tie (1.5, 1.5)
    # -> equal mean ranks; the tie goes to the lower sanity: point 2
    assert c.mean_ranks[2] == c.mean_ranks[3] == 1.5
    assert c.index == 2 and "tied" in c.why


def test_tie_in_sanity_goes_to_grid_order():
    points = [point(0.6, 0.2, 0.2), point(0.3, 0.2, 0.5), point(0.3, 0.2, 0.5)]
    assert choose(points, DIRECTIONS).index == 1


def test_no_qualifying_point_recommends_nothing():
    points = [point(0.8, 0.3, 0.9), point(0.6, 0.5, 0.9), point(0.2, 0.0, 0.9), point(0.1, 0.2, 0.9, constant=0.5)]
    c = choose(points, DIRECTIONS)
    assert c.index is None and c.qualifying == ()
    assert "no recommendation" in c.why


def test_ground_truth_must_beat_chance():
    directions = {**DIRECTIONS, "energy": "higher"}
    points = [point(0.2, 0.3, 0.9, energy=0.05), point(0.3, 0.1, 0.5, energy=0.4)]
    c = choose(points, directions, chance={"energy": 0.1})
    assert c.front == (0, 1) and c.index == 1  # 0 is better elsewhere but below chance on energy


def test_nan_is_the_worst_value_and_an_all_nan_criterion_is_left_out():
    points = [point(0.2, 0.3, math.nan), point(0.2, 0.3, 0.1)]
    assert choose(points, DIRECTIONS).index == 1  # NaN agreement loses to 0.1
    directions = {**DIRECTIONS, "pointing": "higher"}
    both = [point(0.2, 0.3, 0.5, pointing=math.nan), point(0.3, 0.2, 0.4, pointing=math.nan)]
    assert choose(both, directions).index == 0
