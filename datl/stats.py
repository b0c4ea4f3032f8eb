"""Paired comparisons of arms over seeds.

Seeds pair the arms: with the same seed, two arms fine-tune with the same initialisation
of the new head and see the same batches in the same order, so the per-seed difference
removes the seed's own luck. The interval is Student's t on the paired differences (95%,
n - 1 degrees of freedom) and the p-value the two-sided paired t-test. With few seeds the
interval is wide: with 5 seeds, t = 2.78 times the standard error.
"""

from __future__ import annotations

import math
import statistics


def paired_difference(arm: dict[str, float], baseline: dict[str, float], name: str) -> dict:
    """{"baseline", "diff_mean", "ci95": [lo, hi], "p_value", "n_pairs"} of arm - baseline over the
    seeds both have (accuracy as 0..1); the interval and p-value are None below 2 pairs."""
    from scipy import stats

    seeds = sorted(set(arm) & set(baseline), key=str)
    diffs = [arm[s] - baseline[s] for s in seeds]
    n = len(diffs)
    out = {
        "baseline": name,
        "diff_mean": statistics.fmean(diffs) if diffs else None,
        "ci95": None,
        "p_value": None,
        "n_pairs": n,
    }
    if n < 2:
        return out
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * se
    out["ci95"] = [mean - half, mean + half]
    out["p_value"] = (
        1.0 if se == 0 and mean == 0 else (0.0 if se == 0 else float(2 * stats.t.sf(abs(mean / se), n - 1)))
    )
    return out


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, lo, hi): the 95% Student t interval of the mean over seeds (lo = hi = mean below 2)."""
    from scipy import stats

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half
