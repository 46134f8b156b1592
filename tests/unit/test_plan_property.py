"""Property tests: mlserve.FeaturePlan against the numpy reference (tests/reference.py).

Random valid plans and nasty inputs (tests/strategies.py) must give the reference's output
(numeric columns within float32 rounding of log1p, onehot/hash columns exactly) and exactly the
reference's histogram counters; counters accumulate across transforms until read with
reset=True; multi-threaded transforms equal single-threaded ones.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlserve import FeaturePlan

# tests/ holds the shared reference and strategies; it is not a package. tests/conftest.py adds
# it to sys.path too; this keeps the module importable with --noconftest.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference import (
    add_histograms,
    empty_histograms,
    encoded_column_mask,
    f_out,
    has_histogram,
    log1p_column_mask,
    output_names,
    reference_histograms,
    reference_transform,
    reference_transform_bounds,
)
from specs import doc_spec
from strategies import plan_inputs, plan_specs, plans_with_inputs, random_input

RTOL = 1e-5
ATOL = 1e-5
#: How far (in float32 ulps) the core's log1p may be from the correctly rounded value.
LOG1P_ULPS = 4

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DOC_SPEC: dict[str, Any] = doc_spec(histograms=True)

#: Every op and encoding, a feature left out of the output, a finite-edged histogram.
WIDE_SPEC: dict[str, Any] = {
    "features": [
        *DOC_SPEC["features"],
        {
            "name": "score",
            "kind": "numeric",
            "ops": [
                {"op": "log1p"},
                {"op": "impute", "value": -1.0},
                {"op": "minmax", "lo": -1.0, "hi": 4.0},
                {"op": "clip", "lo": 0.0, "hi": 1.0},
            ],
            "histogram": {"edges": [-1.0, 0.0, 0.5, 2.0, 1e6]},
        },
        {
            "name": "device",
            "kind": "categorical",
            "ops": [{"op": "onehot", "size": 5}],
            "histogram": True,
        },
        {
            "name": "unused",
            "kind": "numeric",
            "ops": [],
            "histogram": {"edges": [-10.0, 0.0, 10.0]},
        },
    ],
    "output_order": ["device", "merchant_id", "score", "channel", "amount", "age_days"],
}


# ---- checks ------------------------------------------------------------------------------------


def _within_bounds(got: np.ndarray, lo: np.ndarray, hi: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Elementwise: got lies in [lo, hi] (widened by the tolerance), NaN where a bound is NaN."""
    with np.errstate(all="ignore"):
        lo_eff = np.where(np.isnan(lo), -np.inf, lo)
        lo_eff = lo_eff - (ATOL + RTOL * np.abs(lo_eff))
        hi_eff = hi + (ATOL + RTOL * np.abs(hi))
        finite_ok = ~np.isnan(got) & ~np.isnan(hi) & (got >= lo_eff) & (got <= hi_eff)
    nan_ok = np.isnan(got) & (np.isnan(lo) | np.isnan(hi) | np.isnan(ref))
    return finite_ok | nan_ok


def assert_matches_reference(spec: dict[str, Any], x: np.ndarray, got: Any) -> None:
    ref = reference_transform(spec, x)
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.float32
    assert got.shape == ref.shape
    encoded = encoded_column_mask(spec)
    np.testing.assert_array_equal(
        got[:, encoded], ref[:, encoded], err_msg="onehot/hash columns must match exactly"
    )
    numeric = ~encoded
    g, r = got[:, numeric], ref[:, numeric]
    lo, hi = (b[:, numeric] for b in reference_transform_bounds(spec, x, LOG1P_ULPS))
    with np.errstate(all="ignore"):  # |got - ref| may overflow near +-FLT_MAX
        close = np.isclose(g, r, rtol=RTOL, atol=ATOL, equal_nan=True)
    ok = close | _within_bounds(g, lo, hi, r)
    if not ok.all():
        rows, cols = np.nonzero(~ok)
        row = int(rows[0])
        detail = (
            f"first mismatch at row {row}, numeric column {int(cols[0])}; "
            f"input row {x[row].tolist()}; spec {json.dumps(spec)}"
        )
        np.testing.assert_allclose(
            g[~ok], r[~ok], rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=detail
        )


def assert_snapshot_equal(got: Any, want: dict[str, Any]) -> None:
    assert isinstance(got, dict)
    if want["features"]:
        assert int(got["rows"]) == want["rows"]
    else:
        # The doc does not say whether a plan without any histogram counts rows; the core
        # counts none (there are no counters to merge). Accept both.
        assert int(got["rows"]) in (0, want["rows"])
    assert sorted(got["features"]) == sorted(want["features"])
    for name, w in want["features"].items():
        g = got["features"][name]
        assert g["kind"] == w["kind"], name
        counts = np.asarray(g["counts"])
        assert counts.dtype == np.int64, name
        np.testing.assert_array_equal(counts, w["counts"], err_msg=f"{name}: counts")
        if w["kind"] == "numeric":
            edges = np.asarray(g["edges"])
            assert edges.dtype == np.float32, name
            np.testing.assert_array_equal(edges, w["edges"], err_msg=f"{name}: edges")
            for key in ("underflow", "overflow", "nan"):
                assert int(g[key]) == w[key], f"{name}: {key}"
        else:
            assert g["encoding"] == w["encoding"], name
            assert int(g["missing"]) == w["missing"], f"{name}: missing"


def empty_histograms_like(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A snapshot of the same features with every counter zero."""
    features = {}
    for name, h in snapshot["features"].items():
        zero = dict(h)
        zero["counts"] = np.zeros_like(h["counts"])
        for key in ("underflow", "overflow", "nan", "missing"):
            if key in h:
                zero[key] = 0
        features[name] = zero
    return {"rows": 0, "features": features}


def _scaled(snapshot: dict[str, Any], k: int) -> dict[str, Any]:
    """What k transforms of the same batch accumulate."""
    total = empty_histograms_like(snapshot)
    for _ in range(k):
        total = add_histograms(total, snapshot)
    return total


# ---- transform ---------------------------------------------------------------------------------


@PROPERTY
@given(plans_with_inputs())
def test_transform_matches_reference(case: tuple[dict[str, Any], np.ndarray]) -> None:
    spec, x = case
    plan = FeaturePlan(spec)
    assert plan.f_in == len(spec["features"])
    assert plan.f_out == f_out(spec)
    assert len(plan.output_names) == plan.f_out
    assert_matches_reference(spec, x, plan.transform(x))


@PROPERTY
@given(plans_with_inputs())
def test_columns_without_log1p_are_bit_exact(case: tuple[dict[str, Any], np.ndarray]) -> None:
    # impute, clip, (x - a) * b and the encodings are single IEEE float32 operations on
    # parameters rounded as the doc says, so without log1p there is exactly one right answer.
    spec, x = case
    got = FeaturePlan(spec).transform(x)
    exact = ~log1p_column_mask(spec)
    np.testing.assert_array_equal(
        got[:, exact], reference_transform(spec, x)[:, exact], err_msg=f"spec {json.dumps(spec)}"
    )


@FEW
@given(plan_specs())
def test_names(spec: dict[str, Any]) -> None:
    plan = FeaturePlan(spec)
    assert list(plan.input_names) == [f["name"] for f in spec["features"]]
    assert list(plan.output_names) == output_names(spec)
    assert plan.spec == spec


@FEW
@given(plans_with_inputs(n=st.just(0)))
def test_empty_batch(case: tuple[dict[str, Any], np.ndarray]) -> None:
    spec, x = case
    plan = FeaturePlan(spec)
    out = plan.transform(x, histograms=True)
    assert out.shape == (0, plan.f_out)
    assert out.dtype == np.float32
    assert_snapshot_equal(plan.histograms(reset=True), empty_histograms(spec))


@FEW
@given(plans_with_inputs(n=st.just(1)))
def test_single_row(case: tuple[dict[str, Any], np.ndarray]) -> None:
    spec, x = case
    plan = FeaturePlan(spec)
    assert_matches_reference(spec, x, plan.transform(x, histograms=True))
    assert_snapshot_equal(plan.histograms(reset=True), reference_histograms(spec, x))


@FEW
@given(plans_with_inputs(n=st.integers(0, 20)))
def test_input_conversion(case: tuple[dict[str, Any], np.ndarray]) -> None:
    # Any 2-D array-like is converted to C-contiguous float32 first; float32 -> float64 -> float32
    # is exact, so every form must give the bits of the float32 batch.
    spec, x = case
    plan = FeaturePlan(spec)
    want = plan.transform(x)
    np.testing.assert_array_equal(plan.transform(x.astype(np.float64)), want)
    np.testing.assert_array_equal(plan.transform(np.asfortranarray(x)), want)
    np.testing.assert_array_equal(plan.transform(x.tolist()) if len(x) else want, want)
    doubled = np.repeat(x, 2, axis=0)[::2]  # a strided view
    np.testing.assert_array_equal(plan.transform(doubled), want)


def test_spec_from_json_string_and_path(tmp_path: Path) -> None:
    x = random_input(WIDE_SPEC, 500, seed=7)
    want = FeaturePlan(WIDE_SPEC).transform(x)
    text = json.dumps(WIDE_SPEC)  # writes -Infinity / Infinity as in the doc
    path = tmp_path / "plan.json"
    path.write_text(text)
    for source in (text, path):
        plan = FeaturePlan(source)
        np.testing.assert_array_equal(plan.transform(x), want)
        assert list(plan.output_names) == output_names(WIDE_SPEC)


@pytest.mark.parametrize("spec", [DOC_SPEC, WIDE_SPEC], ids=["doc", "wide"])
@pytest.mark.parametrize("n", [100_000, 100_003])
def test_threads_equal_single_thread(spec: dict[str, Any], n: int) -> None:
    x = random_input(spec, n, seed=n)
    plan = FeaturePlan(spec)
    one = plan.transform(x, num_threads=1, histograms=True)
    assert_snapshot_equal(plan.histograms(reset=True), reference_histograms(spec, x))
    for threads in (2, 4):
        many = plan.transform(x, num_threads=threads, histograms=True)
        np.testing.assert_array_equal(many, one, err_msg=f"num_threads={threads}")
        assert_snapshot_equal(plan.histograms(reset=True), reference_histograms(spec, x))
    assert_matches_reference(spec, x, one)


# ---- histograms --------------------------------------------------------------------------------


@PROPERTY
@given(plans_with_inputs())
def test_histograms_match_reference(case: tuple[dict[str, Any], np.ndarray]) -> None:
    spec, x = case
    plan = FeaturePlan(spec)
    assert_snapshot_equal(plan.histograms(), empty_histograms(spec))
    with_hist = plan.transform(x, histograms=True)
    np.testing.assert_array_equal(with_hist, plan.transform(x))  # histograms=False: not counted
    assert_snapshot_equal(plan.histograms(reset=True), reference_histograms(spec, x))
    assert_snapshot_equal(plan.histograms(), empty_histograms(spec))


@FEW
@given(st.data())
def test_histograms_accumulate_until_reset(data: st.DataObject) -> None:
    spec = data.draw(plan_specs())
    x1 = data.draw(plan_inputs(spec))
    x2 = data.draw(plan_inputs(spec))
    plan = FeaturePlan(spec)
    plan.transform(x1, histograms=True)
    plan.transform(x2, histograms=True, num_threads=2)
    plan.transform(x1, histograms=False)
    want = add_histograms(reference_histograms(spec, x1), reference_histograms(spec, x2))
    assert_snapshot_equal(plan.histograms(reset=False), want)
    assert_snapshot_equal(plan.histograms(), want)  # reading without reset keeps the counters
    assert_snapshot_equal(plan.histograms(reset=True), want)
    assert_snapshot_equal(plan.histograms(reset=False), empty_histograms(spec))
    plan.transform(x2, histograms=True)
    assert_snapshot_equal(plan.histograms(reset=True), reference_histograms(spec, x2))


def test_histogram_features_are_the_declared_ones() -> None:
    plan = FeaturePlan(WIDE_SPEC)
    plan.transform(random_input(WIDE_SPEC, 10, seed=1), histograms=True)
    declared = sorted(f["name"] for f in WIDE_SPEC["features"] if has_histogram(f))
    assert sorted(plan.histograms()["features"]) == declared  # "unused" is not in the output


def test_snapshot_reset_is_atomic_under_concurrent_transforms() -> None:
    # Writers transform the same batch over and over while a reader snapshots with reset=True:
    # every snapshot must hold a whole number of batches, and nothing may be lost or counted
    # twice.
    spec = WIDE_SPEC
    x = random_input(spec, 4096, seed=3)
    one = reference_histograms(spec, x)
    plan = FeaturePlan(spec)
    n_writers, per_writer = 4, 25
    snapshots: list[Any] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def write(threads: int) -> None:
        try:
            for _ in range(per_writer):
                plan.transform(x, histograms=True, num_threads=threads)
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    def read() -> None:
        while not done.is_set():
            snapshots.append(plan.histograms(reset=True))

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write, args=(1 + i % 2,)) for i in range(n_writers)]
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    done.set()
    reader.join()
    assert not errors, errors
    snapshots.append(plan.histograms(reset=True))
    total = 0
    for snap in snapshots:
        rows = int(snap["rows"])
        assert rows % len(x) == 0, f"snapshot split a batch: rows={rows}"
        assert_snapshot_equal(snap, _scaled(one, rows // len(x)))
        total += rows
    assert total == n_writers * per_writer * len(x)
