"""The drift statistics: pure numpy functions of reference and current distributions.

Conventions (docs/monitoring.md):

- **Binned distributions** (PSI, Jensen–Shannon) are vectors of bin counts or shares over the
  same bins. Numeric features use the reference's quantile bins (−inf/+inf outer edges) plus one
  bin for missing values (NaN); categorical features use the plan's slots (vocabulary order,
  out-of-vocabulary last) plus one bin for missing values.
- **PSI** = Σ (q − p) · ln(q / p) over the shares p (reference) and q (current), where a share
  of exactly 0 is replaced by ``PSI_FLOOR`` = 1e-4 (no renormalization; Evidently's convention),
  so empty bins contribute a finite amount.
- **Jensen–Shannon distance** = sqrt(JSD) with natural logarithms, both vectors normalized to sum
  1 first: exactly ``scipy.spatial.distance.jensenshannon(p, q)``. 0 for identical
  distributions, at most sqrt(ln 2).
- **Kolmogorov–Smirnov**: the two-sample statistic D = max |F_ref − F_cur| over the pooled
  values (right-continuous empirical CDFs, ties handled as scipy does) and its two-sided p-value
  from Smirnov's limiting distribution, ``kstwo.sf(D, round(n·m / (n + m)))``: what
  ``scipy.stats.ks_2samp(..., method="asymp")`` returns.
- **Wasserstein-1** = ∫ |F_ref − F_cur| dx (``scipy.stats.wasserstein_distance``); the
  *normalized* distance divides it by the reference sample's standard deviation (ddof 0), at
  least ``WASSERSTEIN_MIN_SCALE`` (Evidently's ``wasserstein`` test).
- **Chi-squared** (categorical): observed = current counts per category, expected = reference
  share × current total, over the union of categories present in either (a category with share 0
  in the reference and no current value is left out; one with share 0 and current values makes
  the statistic +inf and the p-value 0), k − 1 degrees of freedom: ``scipy.stats.chisquare``.

Only the two p-values need scipy (imported on first use: ``pip install 'mlserve[monitoring]'``);
every statistic is a plain function of its arguments, safe from any thread.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Share that replaces an empty bin in PSI.
PSI_FLOOR = 1e-4
#: Smallest reference standard deviation the Wasserstein distance is divided by.
WASSERSTEIN_MIN_SCALE = 1e-3


def _scipy_stats() -> Any:
    try:
        from scipy import stats
    except ImportError as exc:  # pragma: no cover - the monitoring extra is installed in dev
        raise ImportError(
            "drift p-values need scipy: pip install 'mlserve[monitoring]'"
        ) from exc
    return stats


def shares(counts: np.ndarray) -> np.ndarray:
    """Counts (or weights) as shares summing to 1 (all zeros stay zeros)."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return c / total if total > 0 else np.zeros_like(c)


def psi(reference: np.ndarray, current: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index of ``current`` against ``reference`` (counts or shares over
    the same bins; each is normalized to shares first)."""
    p = shares(reference)
    q = shares(current)
    if p.shape != q.shape:
        raise ValueError(f"psi: {p.shape[0]} reference bins but {q.shape[0]} current bins")
    p = np.where(p == 0.0, floor, p)
    q = np.where(q == 0.0, floor, q)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen–Shannon distance (natural log) between two binned distributions."""
    p = shares(reference)
    q = shares(current)
    if p.shape != q.shape:
        raise ValueError(f"js_distance: {p.shape[0]} reference bins but {q.shape[0]} current bins")
    m = (p + q) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(p > 0, p * np.log(p / m), 0.0)
        right = np.where(q > 0, q * np.log(q / m), 0.0)
    return float(math.sqrt(max(float(np.sum(left) + np.sum(right)) / 2.0, 0.0)))


def _ecdfs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled sorted values and both right-continuous empirical CDFs at each of them."""
    a = np.sort(np.asarray(a, dtype=np.float64))
    b = np.sort(np.asarray(b, dtype=np.float64))
    pooled = np.concatenate([a, b])
    pooled.sort(kind="mergesort")
    fa = np.searchsorted(a, pooled, side="right") / a.size
    fb = np.searchsorted(b, pooled, side="right") / b.size
    return pooled, fa, fb


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov statistic (both samples non-empty, no NaN)."""
    _, fa, fb = _ecdfs(reference, current)
    return float(np.max(np.abs(fa - fb)))


def _ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value of KS statistic ``d`` for samples of ``n`` and ``m``
    values (scipy's ``ks_2samp(method="asymp")``)."""
    big, small = max(n, m), min(n, m)
    # scipy rounds n*m/(n+m) to 0 for two single values; the distribution needs n >= 1
    effective = max(float(np.round(big * small / (big + small))), 1.0)
    p = float(_scipy_stats().kstwo.sf(d, effective))
    return min(max(p, 0.0), 1.0)


def _wasserstein_from_ecdfs(pooled: np.ndarray, fa: np.ndarray, fb: np.ndarray) -> float:
    """W1 from ``_ecdfs``: the area between the two CDFs, step by step over the pooled values."""
    return float(np.sum(np.abs(fa[:-1] - fb[:-1]) * np.diff(pooled)))


def _wasserstein_scale(reference: np.ndarray) -> float:
    return max(float(np.std(np.asarray(reference, dtype=np.float64))), WASSERSTEIN_MIN_SCALE)


def _sizes(reference: np.ndarray, current: np.ndarray, what: str) -> tuple[int, int]:
    n, m = np.asarray(reference).size, np.asarray(current).size
    if n == 0 or m == 0:
        raise ValueError(f"{what}: both samples need at least one value")
    return n, m


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """(statistic, two-sided p-value) of the two-sample KS test, asymptotic p-value."""
    n, m = _sizes(reference, current, "ks_test")
    d = ks_statistic(reference, current)
    return d, _ks_pvalue(d, n, m)


def wasserstein(reference: np.ndarray, current: np.ndarray) -> float:
    """Wasserstein-1 distance between two samples (both non-empty, no NaN)."""
    _sizes(reference, current, "wasserstein")
    return _wasserstein_from_ecdfs(*_ecdfs(reference, current))


def ks_and_wasserstein(reference: np.ndarray, current: np.ndarray
                       ) -> tuple[float, float, float]:
    """``(*ks_test(reference, current), wasserstein_normalized(reference, current))`` with the
    same values, from one pooled sort and one pair of empirical CDFs (the monitor's per-feature
    work every interval; the separate functions sort the samples twice)."""
    n, m = _sizes(reference, current, "ks_and_wasserstein")
    pooled, fa, fb = _ecdfs(reference, current)
    d = float(np.max(np.abs(fa - fb)))
    return (d, _ks_pvalue(d, n, m),
            _wasserstein_from_ecdfs(pooled, fa, fb) / _wasserstein_scale(reference))


def wasserstein_normalized(reference: np.ndarray, current: np.ndarray) -> float:
    """Wasserstein-1 distance divided by the reference's standard deviation (at least
    ``WASSERSTEIN_MIN_SCALE``)."""
    return wasserstein(reference, current) / _wasserstein_scale(reference)


def chi_squared(reference_shares: np.ndarray, current_counts: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of the chi-squared goodness-of-fit test of current category counts
    against the reference shares (same categories, in the same order)."""
    p = shares(reference_shares)
    obs = np.asarray(current_counts, dtype=np.float64)
    if p.shape != obs.shape:
        raise ValueError(
            f"chi_squared: {p.shape[0]} reference categories but {obs.shape[0]} current ones"
        )
    total = obs.sum()
    if total <= 0:
        raise ValueError("chi_squared: no current values")
    keep = (p > 0) | (obs > 0)
    p, obs = p[keep], obs[keep]
    if np.any((p == 0) & (obs > 0)):
        return math.inf, 0.0
    if p.size < 2:
        return 0.0, 1.0
    expected = p * total
    statistic = float(np.sum((obs - expected) ** 2 / expected))
    pvalue = float(_scipy_stats().chi2.sf(statistic, p.size - 1))
    return statistic, pvalue
