"""Statistics over seeds: mean ± sample std, and paired t-tests with Cohen's d.

Runs of two models with the same seed share the data subset, the initialisation seed and the
batch order, so their scores are compared pairwise (seed by seed), not as independent groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def summary(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1, n); the std is NaN for a single value (it is undefined)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("summary of no values")
    std = float(x.std(ddof=1)) if x.size > 1 else math.nan
    return float(x.mean()), std, int(x.size)


def paired_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Paired t-test of a against b: (t, two-sided p, Cohen's d for paired samples).

    d = mean(a_i - b_i) / std(a_i - b_i, ddof=1), the mean difference in units of the
    differences' own spread (often written d_z); it equals t / sqrt(n). Needs n >= 2 pairs;
    when every difference is the same, t and d are infinite (or NaN if all are 0).
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} and {y.size}")
    if x.size < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs (seeds), got {x.size}")
    diff = x - y
    mean, sd = float(diff.mean()), float(diff.std(ddof=1))
    if sd == 0:
        t = math.copysign(math.inf, mean) if mean else math.nan
        return t, (0.0 if mean else math.nan), t
    result = stats.ttest_rel(x, y)
    return float(result.statistic), float(result.pvalue), mean / sd
