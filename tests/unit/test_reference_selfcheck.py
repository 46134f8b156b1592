"""Checks tests/reference.py against values worked out by hand from docs/feature_plan.md.

The property tests trust the reference; these cases make sure it cannot silently agree with a
buggy core. Every expected value below is derived in the comment next to it, without running the
reference. Needs neither the C++ core nor mlserve.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

# tests/ holds the shared reference and strategies; it is not a package. tests/conftest.py adds
# it to sys.path too; this keeps the module importable with --noconftest.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference import (
    add_histograms,
    empty_histograms,
    hash_slots,
    onehot_slots,
    output_names,
    reference_histograms,
    reference_transform,
    reference_transform_bounds,
    splitmix64,
)
from specs import doc_spec
from strategies import plans_with_inputs

NAN = np.nan
INF = np.inf


def _splitmix64_python(x: int) -> int:
    """Second, independent splitmix64 on Python ints, straight from the doc's formula."""
    mask = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def _numeric(ops: list[dict[str, object]], name: str = "v") -> dict[str, object]:
    return {"features": [{"name": name, "kind": "numeric", "ops": ops}]}


def _run(spec: dict[str, object], column: list[float]) -> np.ndarray:
    x = np.asarray(column, dtype=np.float32)[:, None]
    out = reference_transform(spec, x)
    assert out.dtype == np.float32
    return out


def test_splitmix64_known_value() -> None:
    # The first output of the reference splitmix64 generator seeded with 0 (Vigna's
    # splitmix64.c) is splitmix64(0) in the doc's form: 0xE220A8397B1DCDAF.
    assert _splitmix64_python(0) == 0xE220A8397B1DCDAF
    assert int(splitmix64(np.array([0], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF


def test_splitmix64_matches_python_ints() -> None:
    values = [0, 1, 2, 3, 2**32, 2**62, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15, 123456789]
    got = splitmix64(np.array(values, dtype=np.uint64))
    assert [int(v) for v in got] == [_splitmix64_python(v) for v in values]


def test_impute_then_standardize_uses_rounded_reciprocal() -> None:
    spec = _numeric(
        [{"op": "impute", "value": 0.0}, {"op": "standardize", "mean": 0.0, "std": 3.0}]
    )
    out = _run(spec, [10.0, NAN, 3.0])
    # float32(1/3) = 0.3333333432674408; 10 * that = 3.333333432674408, whose nearest float32 is
    # 0x40555556 = 3.3333334922790527 (10/3 computed in float32 would be 0x40555555).
    assert out[0, 0].view(np.uint32) == 0x40555556
    assert out[1, 0] == 0.0  # NaN -> 0 -> (0 - 0) * (1/3)
    assert out[2, 0] == np.float32(0.3333333432674408) * 3  # 3 * 0.33333334 rounds to 1.0
    assert out[2, 0] == 1.0


def test_standardize_exact_values() -> None:
    spec = _numeric([{"op": "standardize", "mean": 1.0, "std": 2.0}])
    out = _run(spec, [1.0, 5.0, -3.0, INF, -INF, NAN])
    # (x - 1) * 0.5
    np.testing.assert_array_equal(out[:, 0], [0.0, 2.0, -2.0, INF, -INF, NAN])


def test_minmax_exact_values() -> None:
    spec = _numeric([{"op": "minmax", "lo": -1.0, "hi": 3.0}])
    out = _run(spec, [-1.0, 1.0, 3.0, 7.0, INF, NAN])
    # (x + 1) * 1/4, no clipping
    np.testing.assert_array_equal(out[:, 0], [0.0, 0.5, 1.0, 2.0, INF, NAN])


def test_minmax_inverse_width_in_double() -> None:
    spec = _numeric([{"op": "minmax", "lo": 0.0, "hi": 3.0}])
    out = _run(spec, [10.0])
    # Same rounding as standardize with std 3: 10 * float32(1/3) -> 0x40555556.
    assert out[0, 0].view(np.uint32) == 0x40555556


def test_clip_bounds_infinities_and_keeps_nan() -> None:
    spec = _numeric([{"op": "clip", "lo": 0.0, "hi": 5.0}])
    out = _run(spec, [-INF, -1.0, 2.5, 7.0, INF, NAN])
    np.testing.assert_array_equal(out[:, 0], [0.0, 0.0, 2.5, 5.0, 5.0, NAN])


def test_log1p_special_values() -> None:
    out = _run(_numeric([{"op": "log1p"}]), [0.0, float(np.e - 1), -1.0, -2.0, INF, -INF, NAN])
    # log1p(0) = 0, log1p(e - 1) = 1, log1p(-1) = -inf, below -1 NaN, log1p(inf) = inf,
    # log1p(-inf) = NaN, NaN stays NaN.
    np.testing.assert_allclose(out[:, 0], [0.0, 1.0, -INF, NAN, INF, NAN, NAN], rtol=1e-6)


def test_doc_example_row() -> None:
    spec = doc_spec(histograms=False)
    x = np.array([[NAN, 365.0, 1.0, 0.0], [1e9, 3650.0, NAN, -1.0]], dtype=np.float32)
    out = reference_transform(spec, x)
    assert out.shape == (2, 1 + 1 + 4 + 16)
    # Row 0: amount NaN -> 0 -> 0 -> log1p 0 -> (0 - 3.2) / 1.1 = -2.90909...
    assert out[0, 0] == pytest.approx(-3.2 / 1.1, rel=1e-6)
    # age 365 / 3650 = 0.1
    assert out[0, 1] == pytest.approx(0.1, rel=1e-6)
    # channel code 1 -> slot 1 ("pos")
    np.testing.assert_array_equal(out[0, 2:6], [0, 1, 0, 0])
    # merchant 0 -> splitmix64(0) = 0x...AF, mod 16 = 0xF = 15
    expected_hash = np.zeros(16, dtype=np.float32)
    expected_hash[15] = 1.0
    np.testing.assert_array_equal(out[0, 6:], expected_hash)
    # Row 1: amount 1e9 clipped to 5000 -> log(5001) = 8.51739... -> (8.51739 - 3.2) / 1.1
    assert out[1, 0] == pytest.approx((np.log(5001.0) - 3.2) / 1.1, rel=1e-6)
    assert out[1, 1] == 1.0
    # channel NaN -> impute 0 -> slot 0 ("web")
    np.testing.assert_array_equal(out[1, 2:6], [1, 0, 0, 0])
    # merchant -1 -> uint64 2**64 - 1
    expected_hash[:] = 0.0
    expected_hash[_splitmix64_python(2**64 - 1) % 16] = 1.0
    np.testing.assert_array_equal(out[1, 6:], expected_hash)
    assert output_names(spec) == [
        "amount",
        "age_days",
        "channel=web",
        "channel=pos",
        "channel=app",
        "channel=<oov>",
        *[f"merchant_id#{i}" for i in range(16)],
    ]


def test_onehot_slots_by_hand() -> None:
    codes = np.array([0, 1, 2, 3, -1, 0.5, NAN, INF, -INF, -0.0, 1e30], dtype=np.float32)
    # size 3: integral codes 0..2 keep their slot, everything else goes to slot 3 (OOV).
    assert onehot_slots(codes, 3).tolist() == [0, 1, 2, 3, 3, 3, 3, 3, 3, 0, 3]


def test_onehot_with_impute_and_size_names() -> None:
    spec = {
        "features": [
            {
                "name": "c",
                "kind": "categorical",
                "ops": [{"op": "impute", "value": 1.0}, {"op": "onehot", "size": 2}],
            }
        ]
    }
    out = _run(spec, [NAN, 0.0, 2.0, 1.5])
    np.testing.assert_array_equal(out, [[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1]])
    assert output_names(spec) == ["c=0", "c=1", "c=<oov>"]


def test_hash_slots_by_hand() -> None:
    codes = np.array([0, -1, 2**40, 0.5, NAN, INF, -INF, 2**63, -(2**63), 2**62], dtype=np.float32)
    n = 7
    expected = [
        _splitmix64_python(0) % n,
        _splitmix64_python(2**64 - 1) % n,  # int64 -1 viewed as uint64
        _splitmix64_python(2**40) % n,
        -1,
        -1,
        -1,
        -1,  # fractional, NaN, +inf, -inf: no slot
        -1,
        -1,  # abs(code) == 2**63 is not < 2**63
        _splitmix64_python(2**62) % n,
    ]
    assert hash_slots(codes, n).tolist() == expected


def test_hash_output_rows() -> None:
    spec = {
        "features": [{"name": "m", "kind": "categorical", "ops": [{"op": "hash_bucket", "n": 16}]}]
    }
    out = _run(spec, [0.0, NAN, 2.5])
    assert out[0].tolist() == [0.0] * 15 + [1.0]
    assert out[1].tolist() == [0.0] * 16
    assert out[2].tolist() == [0.0] * 16
    assert output_names(spec) == [f"m#{i}" for i in range(16)]


def test_numeric_histogram_with_infinite_outer_edges() -> None:
    spec = {
        "features": [
            {
                "name": "a",
                "kind": "numeric",
                "ops": [],
                "histogram": {"edges": [-INF, 1.0, 10.0, 100.0, INF]},
            }
        ]
    }
    x = np.array(
        [[NAN], [-INF], [0.0], [1.0], [9.99], [10.0], [100.0], [1e30], [INF]], dtype=np.float32
    )
    hist = reference_histograms(spec, x)
    assert hist["rows"] == 9
    a = hist["features"]["a"]
    assert a["kind"] == "numeric"
    # [-inf, 1): -inf, 0; [1, 10): 1, 9.99; [10, 100): 10; [100, inf): 100, 1e30; inf >= inf.
    assert a["counts"].tolist() == [2, 2, 1, 2]
    assert a["counts"].dtype == np.int64
    assert (a["underflow"], a["overflow"], a["nan"]) == (0, 1, 1)
    np.testing.assert_array_equal(a["edges"], np.array([-INF, 1, 10, 100, INF], np.float32))
    assert a["edges"].dtype == np.float32


def test_numeric_histogram_finite_edges() -> None:
    spec = {
        "features": [
            {
                "name": "a",
                "kind": "numeric",
                "ops": [{"op": "log1p"}],
                "histogram": {"edges": [0.0, 1.0, 2.0]},
            }
        ]
    }
    x = np.array([[-1.0], [0.0], [0.5], [1.0], [2.0], [3.0], [NAN], [-INF]], dtype=np.float32)
    a = reference_histograms(spec, x)["features"]["a"]
    # Raw values (log1p is ignored): -1, -inf under; 0, 0.5 in [0, 1); 1 in [1, 2); 2, 3 over.
    assert a["counts"].tolist() == [2, 1]
    assert (a["underflow"], a["overflow"], a["nan"]) == (2, 2, 1)


def test_numeric_histogram_edges_rounded_to_float32() -> None:
    # float32(0.7) = 0.699999988 < 0.7: with the edge rounded to float32 the value lands in the
    # upper bin; a float64 edge would have put it in the lower one.
    assert np.float32(0.7) < np.float64(0.7)
    spec = {
        "features": [
            {"name": "a", "kind": "numeric", "ops": [], "histogram": {"edges": [0.0, 0.7, 1.0]}}
        ]
    }
    a = reference_histograms(spec, np.array([[0.7]], dtype=np.float32))["features"]["a"]
    assert a["counts"].tolist() == [0, 1]


def test_categorical_histograms_use_raw_values() -> None:
    spec = {
        "features": [
            {
                "name": "c",
                "kind": "categorical",
                "ops": [{"op": "impute", "value": 0.0}, {"op": "onehot", "vocabulary": ["a", "b"]}],
                "histogram": True,
            },
            {
                "name": "h",
                "kind": "categorical",
                "ops": [{"op": "hash_bucket", "n": 4}],
                "histogram": True,
            },
            {"name": "plain", "kind": "numeric", "ops": []},
        ]
    }
    x = np.array(
        [[NAN, NAN, 0], [0, INF, 0], [1, 0.5, 0], [5, 3, 0], [-INF, 3, 0], [0.5, -1, 0]],
        dtype=np.float32,
    )
    hist = reference_histograms(spec, x)
    assert set(hist["features"]) == {"c", "h"}
    c = hist["features"]["c"]
    # NaN is missing (not the imputed 0); 0 -> slot 0; 1 -> slot 1; 5, -inf, 0.5 -> OOV slot 2.
    assert (c["kind"], c["encoding"]) == ("categorical", "onehot")
    assert c["counts"].tolist() == [1, 1, 3]
    assert c["missing"] == 1
    h = hist["features"]["h"]
    # NaN, inf, 0.5 are missing; 3 twice and -1 once get buckets.
    expected = [0, 0, 0, 0]
    expected[_splitmix64_python(3) % 4] += 2
    expected[_splitmix64_python(2**64 - 1) % 4] += 1
    assert h["encoding"] == "hash_bucket"
    assert h["counts"].tolist() == expected
    assert h["missing"] == 3


def test_output_order_subset_and_permutation() -> None:
    spec = {
        "features": [
            {
                "name": "a",
                "kind": "numeric",
                "ops": [{"op": "standardize", "mean": 1.0, "std": 1.0}],
            },
            {"name": "b", "kind": "categorical", "ops": [{"op": "onehot", "size": 2}]},
            {"name": "c", "kind": "numeric", "ops": [], "histogram": {"edges": [0.0, 1.0]}},
        ],
        "output_order": ["b", "a"],
    }
    out = reference_transform(spec, np.array([[3.0, 1.0, 0.5]], dtype=np.float32))
    # b's onehot block first, then a = 3 - 1; c is read (and histogrammed) but not output.
    np.testing.assert_array_equal(out, [[0.0, 1.0, 0.0, 2.0]])
    assert output_names(spec) == ["b=0", "b=1", "b=<oov>", "a"]
    assert reference_histograms(spec, np.array([[3.0, 1.0, 0.5]], np.float32))["features"]["c"][
        "counts"
    ].tolist() == [1]


def test_empty_batch() -> None:
    spec = {
        "features": [
            {"name": "a", "kind": "numeric", "ops": [], "histogram": {"edges": [0, 1]}},
            {"name": "b", "kind": "categorical", "ops": [{"op": "hash_bucket", "n": 3}]},
        ]
    }
    out = reference_transform(spec, np.zeros((0, 2), dtype=np.float32))
    assert out.shape == (0, 4) and out.dtype == np.float32
    empty = empty_histograms(spec)
    assert empty["rows"] == 0 and empty["features"]["a"]["counts"].tolist() == [0]


def test_add_histograms_sums_counters() -> None:
    spec = {
        "features": [
            {"name": "a", "kind": "numeric", "ops": [], "histogram": {"edges": [0.0, 1.0]}}
        ]
    }
    one = reference_histograms(spec, np.array([[0.5], [NAN]], np.float32))
    two = add_histograms(one, reference_histograms(spec, np.array([[2.0]], np.float32)))
    a = two["features"]["a"]
    assert two["rows"] == 3
    assert (a["counts"].tolist(), a["underflow"], a["overflow"], a["nan"]) == ([1], 0, 1, 1)


def test_bounds_bracket_log1p_only() -> None:
    spec = {
        "features": [
            {"name": "a", "kind": "numeric", "ops": [{"op": "log1p"}]},
            {
                "name": "b",
                "kind": "numeric",
                "ops": [{"op": "standardize", "mean": 0.5, "std": 3.0}],
            },
        ]
    }
    x = np.array([[1.0, 1.0], [10.0, 7.0]], dtype=np.float32)
    lo, hi = reference_transform_bounds(spec, x, ulps=2)
    ref = reference_transform(spec, x)
    assert np.all(lo[:, 0] < ref[:, 0]) and np.all(ref[:, 0] < hi[:, 0])
    np.testing.assert_array_equal(lo[:, 1], ref[:, 1])
    np.testing.assert_array_equal(hi[:, 1], ref[:, 1])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(plans_with_inputs())
def test_reference_invariants(case: tuple[dict[str, Any], np.ndarray]) -> None:
    # Whatever the plan, every raw value is counted exactly once, every onehot block holds
    # exactly one 1.0 per row, every hash block at most one, and the shapes add up.
    spec, x = case
    out = reference_transform(spec, x)
    assert out.shape == (x.shape[0], len(output_names(spec)))
    hist = reference_histograms(spec, x)
    assert hist["rows"] == x.shape[0]
    for feature in spec["features"]:
        h = hist["features"].get(feature["name"])
        if h is None:
            continue
        if h["kind"] == "numeric":
            total = h["counts"].sum() + h["underflow"] + h["overflow"] + h["nan"]
        else:
            total = h["counts"].sum() + h["missing"]
        assert total == x.shape[0]
    names = output_names(spec)
    for name in {n.split("=")[0] for n in names if "=" in n}:
        block = out[:, [i for i, n in enumerate(names) if n.split("=")[0] == name]]
        np.testing.assert_array_equal(block.sum(axis=1), 1.0)
    for name in {n.split("#")[0] for n in names if "#" in n}:
        block = out[:, [i for i, n in enumerate(names) if n.split("#")[0] == name]]
        assert np.all(block.sum(axis=1) <= 1.0)
    lo, hi = reference_transform_bounds(spec, x)
    assert lo.shape == hi.shape == out.shape
