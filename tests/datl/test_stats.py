"""The paired difference of two arms over seeds: Student's t by hand."""

from __future__ import annotations

import math

import pytest

from datl.stats import paired_difference


def test_interval_and_p_value_match_a_hand_computation():
    arm = {"0": 0.91, "1": 0.93, "2": 0.95}
    base = {"0": 0.90, "1": 0.91, "2": 0.92}  # differences 0.01, 0.02, 0.03
    r = paired_difference(arm, base, "uniform")
    se = 0.01 / math.sqrt(3)
    assert r["diff_mean"] == pytest.approx(0.02) and r["n_pairs"] == 3 and r["baseline"] == "uniform"
    assert r["ci95"] == pytest.approx([0.02 - 4.302653 * se, 0.02 + 4.302653 * se], abs=1e-6)  # t(0.975, 2)
    assert r["p_value"] == pytest.approx(0.07418, abs=1e-4)  # two-sided, t = 3.464, 2 df


def test_only_shared_seeds_pair_and_one_pair_gives_no_interval():
    r = paired_difference({"0": 0.5, "1": 0.7}, {"1": 0.6, "2": 0.1}, "b")
    assert r["n_pairs"] == 1 and r["diff_mean"] == pytest.approx(0.1) and r["ci95"] is None and r["p_value"] is None


def test_pairing_removes_the_seed_effect():
    """Seeds that move both arms alike: unpaired the spread would swamp a 1-point gain; paired
    the interval is tight around it."""
    seed_effect = [0.0, 0.08, -0.06, 0.03, -0.05]
    base = {str(i): 0.8 + e for i, e in enumerate(seed_effect)}
    arm = {str(i): 0.81 + e + (0.001 if i % 2 else -0.001) for i, e in enumerate(seed_effect)}
    r = paired_difference(arm, base, "b")
    assert 0.0 < r["ci95"][0] < 0.01 < r["ci95"][1] < 0.02 and r["p_value"] < 1e-3


def test_the_verdict_line_says_what_the_intervals_establish():
    from datl.compare import verdict_line

    def arm(lo, hi):
        return {"vs_baseline": {"ci95": [lo, hi], "n_pairs": 5}}

    results = {
        "baseline": "uniform",
        "arms": {"adaptive": arm(-0.021, 0.075), "scratch": arm(-0.16, -0.08), "uniform": {}, "subset": arm(0.1, 0.3)},
    }
    line = verdict_line(results)
    assert "at 95% over 5 paired seeds, above uniform: subset; below: scratch" in line
    assert "not told apart from uniform: adaptive" in line
    assert line.endswith(
        "This run does not establish that the adaptive sample (the paper's class weights) beats uniform"
    )
    results["arms"]["adaptive"] = arm(0.01, 0.05)
    assert "does not establish" not in verdict_line(results)
    results["selection"] = {"chosen": "subset"}  # chosen on validation: its test interval is the evidence
    assert verdict_line(results).endswith("The arm chosen on validation, subset, is above uniform")
    results["arms"]["subset"] = arm(-0.01, 0.05)
    assert verdict_line(results).endswith("The arm chosen on validation, subset, is not shown above uniform")
