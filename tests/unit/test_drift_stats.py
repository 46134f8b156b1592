"""The drift statistics against independent references, on random data (hypothesis).

Exact cases (1e-9): Jensen–Shannon vs ``scipy.spatial.distance.jensenshannon``, the KS statistic
and its p-value vs ``ks_2samp(method="asymp")``,
Wasserstein vs ``scipy.stats.wasserstein_distance``, chi-squared vs ``scipy.stats.chisquare``,
and PSI vs a direct numpy/loop implementation of the documented convention (shares, empty bins
replaced by 1e-4, no renormalization). Ties, tiny samples and zero bins are in the draws.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlserve.drift import stats
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

EXACT = 1e-9

counts_pairs = st.integers(2, 30).flatmap(
    lambda k: st.tuples(
        st.lists(st.integers(0, 1000), min_size=k, max_size=k).filter(lambda v: sum(v) > 0),
        st.lists(st.integers(0, 1000), min_size=k, max_size=k).filter(lambda v: sum(v) > 0),
    )
)


def _samples(draw_ties: bool) -> st.SearchStrategy[list[float]]:
    if draw_ties:
        return st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=300)
    return st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=300)


sample_pairs = st.booleans().flatmap(lambda ties: st.tuples(_samples(ties), _samples(ties)))


def direct_psi(reference: list[int], current: list[int]) -> float:
    """PSI written out term by term: shares, a share of 0 becomes 1e-4, sum (q - p) ln(q / p)."""
    total_p, total_q = sum(reference), sum(current)
    value = 0.0
    for r, c in zip(reference, current, strict=True):
        p = r / total_p if r else 1e-4
        q = c / total_q if c else 1e-4
        value += (q - p) * math.log(q / p)
    return value


@given(counts_pairs)
@settings(max_examples=300, deadline=None)
def test_psi_matches_the_documented_convention(pair: tuple[list[int], list[int]]) -> None:
    ref, cur = pair
    assert stats.psi(np.array(ref), np.array(cur)) == pytest.approx(direct_psi(ref, cur),
                                                                     rel=EXACT, abs=EXACT)


def test_psi_known_values() -> None:
    assert stats.psi(np.array([1, 1]), np.array([1, 1])) == 0.0
    # one empty current bin: (1e-4 - .5) ln(1e-4 / .5) + (.9999... ) with the floor, no renorm
    expected = (1e-4 - 0.5) * math.log(1e-4 / 0.5) + (1.0 - 0.5) * math.log(1.0 / 0.5)
    assert stats.psi(np.array([5, 5]), np.array([0, 7])) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="bins"):
        stats.psi(np.array([1, 2]), np.array([1, 2, 3]))


@given(counts_pairs)
@settings(max_examples=300, deadline=None)
def test_js_distance_matches_scipy(pair: tuple[list[int], list[int]]) -> None:
    ref, cur = (np.array(v, dtype=np.float64) for v in pair)
    assert stats.js_distance(ref, cur) == pytest.approx(float(jensenshannon(ref, cur)),
                                                        rel=EXACT, abs=EXACT)


def test_js_distance_bounds() -> None:
    assert stats.js_distance(np.array([3, 0]), np.array([6, 0])) == 0.0
    assert stats.js_distance(np.array([1, 0]), np.array([0, 1])) == pytest.approx(
        math.sqrt(math.log(2)), rel=1e-12)


@given(sample_pairs)
@settings(max_examples=300, deadline=None)
def test_ks_matches_scipy(pair: tuple[list[float], list[float]]) -> None:
    a, b = np.array(pair[0]), np.array(pair[1])
    d, p = stats.ks_test(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's n = m = 1 corner
        asymp = sps.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(float(asymp.statistic), rel=EXACT, abs=EXACT)
    if len(a) == len(b) == 1:
        return  # scipy's asymptotic p-value is undefined there (n*m/(n+m) rounds to 0)
    assert p == pytest.approx(float(asymp.pvalue), rel=EXACT, abs=EXACT)


def test_ks_pvalue_close_to_exact_for_window_sized_samples() -> None:
    """Stated tolerance: for samples of a few hundred rows and more, the asymptotic p-value is
    within 0.01 of scipy's exact one (the monitor's samples are thousands of rows)."""
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.05, 0.1, 0.2):
        a, b = rng.normal(size=2000), rng.normal(shift, size=500)
        _, p = stats.ks_test(a, b)
        assert p == pytest.approx(float(sps.ks_2samp(a, b, method="exact").pvalue), abs=0.01)


@given(sample_pairs)
@settings(max_examples=300, deadline=None)
def test_wasserstein_matches_scipy(pair: tuple[list[float], list[float]]) -> None:
    a, b = np.array(pair[0]), np.array(pair[1])
    want = float(sps.wasserstein_distance(a, b))
    assert stats.wasserstein(a, b) == pytest.approx(want, rel=EXACT, abs=EXACT * max(1, want))
    scale = max(float(np.std(a)), stats.WASSERSTEIN_MIN_SCALE)
    assert stats.wasserstein_normalized(a, b) == pytest.approx(want / scale, rel=EXACT,
                                                               abs=EXACT)


@given(sample_pairs)
@settings(max_examples=300, deadline=None)
def test_ks_and_wasserstein_in_one_pass(pair: tuple[list[float], list[float]]) -> None:
    """The monitor's combined pass gives exactly the separate functions' values, and scipy's."""
    a, b = np.array(pair[0]), np.array(pair[1])
    d, p, w = stats.ks_and_wasserstein(a, b)
    assert (d, p) == stats.ks_test(a, b)
    assert w == stats.wasserstein_normalized(a, b)
    scale = max(float(np.std(a)), stats.WASSERSTEIN_MIN_SCALE)
    want = float(sps.wasserstein_distance(a, b)) / scale
    assert w == pytest.approx(want, rel=EXACT, abs=EXACT * max(1, want))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's n = m = 1 corner
        assert d == pytest.approx(float(sps.ks_2samp(a, b, method="asymp").statistic),
                                  rel=EXACT, abs=EXACT)


@given(counts_pairs)
@settings(max_examples=300, deadline=None)
def test_chi_squared_matches_scipy(pair: tuple[list[int], list[int]]) -> None:
    ref, cur = np.array(pair[0], dtype=np.float64), np.array(pair[1], dtype=np.float64)
    stat, p = stats.chi_squared(ref, cur)
    keep = (ref > 0) | (cur > 0)
    if np.any((ref == 0) & (cur > 0)):
        assert (stat, p) == (math.inf, 0.0)
        return
    if keep.sum() < 2:
        assert (stat, p) == (0.0, 1.0)
        return
    expected = ref[keep] / ref.sum() * cur.sum()
    want = sps.chisquare(cur[keep], expected)
    assert stat == pytest.approx(float(want.statistic), rel=EXACT, abs=EXACT)
    assert p == pytest.approx(float(want.pvalue), rel=EXACT, abs=EXACT)


def test_empty_inputs_are_errors() -> None:
    with pytest.raises(ValueError):
        stats.ks_test(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError):
        stats.wasserstein(np.array([1.0]), np.array([]))
    with pytest.raises(ValueError, match="both samples"):
        stats.ks_and_wasserstein(np.array([1.0]), np.array([]))
    with pytest.raises(ValueError, match="no current values"):
        stats.chi_squared(np.array([0.5, 0.5]), np.array([0, 0]))
