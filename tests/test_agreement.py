"""M against an evaluation metric: Spearman's rho within a run and across a sweep's trials."""

import math

from began_dist.eval.reports import agreement


def test_spearman_of_known_orders_and_ties():
    assert agreement.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert agreement.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert agreement.ranks([5.0, 1.0, 5.0]) == [2.5, 1.0, 2.5]
    # scipy.stats.spearmanr([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) = 0.8
    assert math.isclose(agreement.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]), 0.8)
    assert math.isnan(agreement.spearman([1, 2], [2, 1]))


def test_within_run_averages_m_up_to_each_checkpoint():
    # M logged every 50 steps; checkpoints at 100, 200, 300; KID rises while M falls: rho = -1
    stats = [{"step": s, "M": 1.0 - s / 1000} for s in range(50, 301, 50)]
    kid = [{"step": 0, "kid": 9.0}] + [{"step": s, "kid": float(s)} for s in (100, 200, 300)]
    assert agreement.m_at_checkpoints(stats, [100]) == [(0.95 + 0.9) / 2]
    count, rho = agreement.within_run(stats, kid, "kid")
    assert count == 3 and rho == -1.0  # the initial weights (step 0) have no M and are left out
    assert "Spearman(M, kid) over 3 checkpoints: -1.00" in agreement.run_note(stats, {"kid": kid})


def test_sweep_note_names_the_trial_each_ranking_picks():
    rows = [
        {"trial": "a", "M": "0.30", "kid": "9e6"},
        {"trial": "b", "M": "0.40", "kid": "3e6"},
        {"trial": "c", "M": "0.50", "kid": "5e6"},
    ]
    note = agreement.sweep_note(rows, "kid", "min")
    assert "over 3 trials: -0.50" in note and "lowest M picks a, where kid picks b" in note
    assert agreement.sweep_note(rows, "M", "min") == ""
