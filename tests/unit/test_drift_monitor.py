"""Online drift statistics end to end through the core: an Engine counts histograms and records
its row sample, EngineMonitor turns them into windows, analyze() compares with a reference built
by the trainer's profile functions. Every number is checked against a direct computation on the
raw rows: PSI/JS/chi-squared from numpy binning (exact, 1e-12: the core's bins are the same),
KS/Wasserstein against scipy on the same sample (exact, 1e-9, when the window's sample holds
every row; within the DKW bound otherwise). Also: the window kinds, sample merging, the engine's
sample and prediction log from Python, and the data-quality rates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlserve import Engine
from mlserve.drift import (
    Chunk,
    DriftConfig,
    EngineMonitor,
    FeatureConfig,
    MonitorSettings,
    ReferenceProfile,
    Windows,
    WindowSpec,
)
from mlserve.drift import stats as drift_stats
from mlserve.errors import InvalidInput
from mlserve.trainer.reference import reference_profile
from scipy import stats as sps

INF = float("inf")
VOCAB = ["web", "pos", "app"]


def _spec() -> dict[str, Any]:
    return {
        "features": [
            {"name": "amount", "kind": "numeric", "ops": [{"op": "impute", "value": 0.0}],
             "histogram": {"edges": [-INF, 1.0, 5.0, 20.0, 80.0, INF]}},
            {"name": "age", "kind": "numeric", "ops": [{"op": "impute", "value": 0.0}],
             "histogram": {"edges": [-INF, 0.0, 0.5, 1.0, INF]}},
            {"name": "channel", "kind": "categorical",
             "ops": [{"op": "onehot", "vocabulary": VOCAB}], "histogram": True},
            {"name": "plain", "kind": "numeric", "ops": []},
        ],
    }


def _rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    x = np.empty((n, 4), np.float32)
    x[:, 0] = rng.lognormal(2.5 + shift, 1.0, n)
    x[:, 1] = rng.normal(0.5 + shift, 0.3, n)
    x[:, 2] = rng.choice([0, 1, 2, -1], size=n, p=[0.5, 0.3, 0.15, 0.05])
    x[:, 3] = rng.normal(size=n)
    x[rng.random(n) < 0.05, 0] = np.nan
    x[rng.random(n) < 0.02, 2] = np.nan
    return x


def _model(batch: np.ndarray) -> np.ndarray:
    """P(1) from the normalized rows: the first output column of the fraud-like model."""
    return (1.0 / (1.0 + np.exp(-(batch[:, 1] - 0.5) * 4.0)))[:, None].astype(np.float32)


def _manifest(reference_rows: np.ndarray, sample_size: int = 3000) -> dict[str, Any]:
    spec = _spec()
    from mlserve import FeaturePlan

    plan = FeaturePlan(spec)
    outputs = _model(plan.transform(reference_rows))
    return {
        "name": "m", "task": "binary", "preprocessing": spec,
        "signature": {"inputs": [
            {"name": "amount", "kind": "numeric"}, {"name": "age", "kind": "numeric"},
            {"name": "channel", "kind": "categorical", "vocabulary": VOCAB},
            {"name": "plain", "kind": "numeric"}]},
        "reference": reference_profile(spec, reference_rows, "binary", outputs,
                                       sample_size=sample_size, seed=3),
    }


def _numpy_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of raw float32 values in the bins as docs/feature_plan.md defines them, NaN last."""
    v = values.astype(np.float32)
    present = v[~np.isnan(v)]
    j = np.searchsorted(edges.astype(np.float32), present, side="right") - 1
    j = np.clip(j, 0, len(edges) - 2)
    return np.append(np.bincount(j, minlength=len(edges) - 1), np.isnan(v).sum())


@pytest.fixture
def monitored(make_engine: Callable[..., Engine]) -> Callable[..., tuple[Engine, EngineMonitor]]:
    def make(reference_rows: np.ndarray, **settings: Any) -> tuple[Engine, EngineMonitor]:
        manifest = _manifest(reference_rows)
        engine = make_engine(manifest["preprocessing"], _model, max_batch_size=256,
                             max_queue_delay_us=0)
        profile = ReferenceProfile.from_manifest(manifest)
        return engine, EngineMonitor(engine, profile, MonitorSettings(**settings))
    return make


def _send(engine: Engine, x: np.ndarray, chunk: int = 200) -> None:
    engine.predict_many([x[i:i + chunk] for i in range(0, len(x), chunk)])


@given(shift=st.sampled_from([0.0, 0.05, 0.3, 1.0]), seed=st.integers(0, 2**16),
       n=st.integers(300, 3000))
# the fixture is a factory: each example makes (and the teardown closes) its own engine
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_window_statistics_match_direct_computation(
        monitored: Callable[..., tuple[Engine, EngineMonitor]], shift: float, seed: int,
        n: int) -> None:
    rng = np.random.default_rng(seed)
    reference = _rows(rng, 4000)
    engine, monitor = monitored(reference, sample_rows=5000,
                                drift=DriftConfig(min_rows=100))
    current = _rows(rng, n, shift)
    _send(engine, current)
    report = monitor.tick()
    assert report is not None and report.rows == n
    profile = monitor.profile
    for name, column in (("amount", 0), ("age", 1)):
        ref = profile.features[name]
        counts = _numpy_bins(current[:, column], ref.edges)
        got = report.features[name]
        assert got.psi == pytest.approx(drift_stats.psi(ref.bin_shares(), counts), abs=1e-12)
        assert got.js == pytest.approx(drift_stats.js_distance(ref.bin_shares(), counts),
                                       abs=1e-12)
        present = current[:, column][~np.isnan(current[:, column])].astype(np.float64)
        ks = sps.ks_2samp(ref.sample, present, method="asymp")
        assert got.ks_statistic == pytest.approx(float(ks.statistic), abs=1e-9)
        assert got.ks_pvalue == pytest.approx(float(ks.pvalue), abs=1e-9)
        want_w = sps.wasserstein_distance(ref.sample, present) / max(np.std(ref.sample), 1e-3)
        assert got.wasserstein == pytest.approx(float(want_w), rel=1e-9)
        assert got.missing_rate == pytest.approx(float(np.isnan(current[:, column]).mean()))
        outside = (present < ref.minimum) | (present > ref.maximum)
        assert got.out_of_range_rate == pytest.approx(float(outside.mean()))
        assert got.test == "wasserstein" and got.value == got.wasserstein
        assert got.drifted == (got.wasserstein >= 0.1)
    channel = report.features["channel"]
    codes = current[:, 2]
    present_codes = codes[~np.isnan(codes)]
    slots = np.where((present_codes >= 0) & (present_codes < 3), present_codes, 3).astype(int)
    c_counts = np.bincount(slots, minlength=4)
    ref_c = profile.features["channel"]
    all_counts = np.append(c_counts, np.isnan(codes).sum())
    assert channel.psi == pytest.approx(drift_stats.psi(ref_c.bin_shares(), all_counts),
                                        abs=1e-12)
    keep = (ref_c.frequencies > 0) | (c_counts > 0)
    chi = sps.chisquare(c_counts[keep], ref_c.frequencies[keep] * c_counts.sum())
    assert channel.chi2_statistic == pytest.approx(float(chi.statistic), rel=1e-9)
    assert channel.chi2_pvalue == pytest.approx(float(chi.pvalue), rel=1e-9, abs=1e-12)
    assert channel.unseen_rate == pytest.approx(float((slots == 3).mean()))
    assert "plain" not in report.features  # no histogram declared: nothing to compare
    # the prediction: binned on [0, 1] (clamped) from every row, KS on the sample
    pred = report.prediction
    assert pred is not None
    outputs = _model(engine.plan.transform(current))[:, 0]
    want = np.histogram(np.clip(outputs, 0, 1), bins=profile.prediction.edges)[0]
    assert pred.psi == pytest.approx(
        drift_stats.psi(profile.prediction.bin_shares(), np.append(want, 0)), abs=1e-12)
    ks = sps.ks_2samp(profile.prediction.sample, outputs.astype(np.float64), method="asymp")
    assert pred.ks_statistic == pytest.approx(float(ks.statistic), abs=1e-9)
    judged = [f for f in report.features.values() if f.drifted is not None]
    assert report.drift_share == pytest.approx(sum(f.drifted for f in judged) / len(judged))


def test_sampled_window_ks_within_dkw_bound(
        monitored: Callable[..., tuple[Engine, EngineMonitor]]) -> None:
    """Stated tolerance: with m sampled rows, the sample's KS statistic is within
    sqrt(ln(2 / 1e-6) / (2 m)) of the statistic on every row (DKW, failure odds 1e-6)."""
    rng = np.random.default_rng(11)
    engine, monitor = monitored(_rows(rng, 4000), sample_rows=1500)
    current = _rows(rng, 12000, 0.1)
    _send(engine, current, chunk=256)
    report = monitor.tick()
    assert report is not None
    amount = report.features["amount"]
    assert amount.sample_rows <= 1500
    present = current[:, 0][~np.isnan(current[:, 0])].astype(np.float64)
    full = float(sps.ks_2samp(monitor.profile.features["amount"].sample, present,
                              method="asymp").statistic)
    bound = math.sqrt(math.log(2 / 1e-6) / (2 * amount.sample_rows))
    assert abs(amount.ks_statistic - full) <= bound


def test_no_drift_then_drift_verdicts(
        monitored: Callable[..., tuple[Engine, EngineMonitor]]) -> None:
    rng = np.random.default_rng(5)
    engine, monitor = monitored(_rows(rng, 5000))
    _send(engine, _rows(rng, 3000))
    calm = monitor.tick()
    assert calm is not None and calm.drifted_features == [] and calm.dataset_drift is False
    assert all(f.psi_level == "ok" for f in calm.features.values())
    _send(engine, _rows(rng, 3000, shift=1.0))
    # the default window slides over 300 s: this tick's window holds both intervals
    drifted = monitor.tick()
    assert drifted is not None and set(drifted.drifted_features) >= {"amount", "age"}
    assert drifted.features["amount"].psi_level in ("warn", "alert")


def test_too_few_rows_get_no_verdict(
        monitored: Callable[..., tuple[Engine, EngineMonitor]]) -> None:
    rng = np.random.default_rng(2)
    engine, monitor = monitored(_rows(rng, 2000), drift=DriftConfig(min_rows=500))
    _send(engine, _rows(rng, 100, shift=2.0))
    report = monitor.tick()
    assert report is not None and report.features["amount"].drifted is None
    assert report.features["amount"].psi is not None and report.dataset_drift is None


def test_data_quality_flags(monitored: Callable[..., tuple[Engine, EngineMonitor]]) -> None:
    rng = np.random.default_rng(9)
    engine, monitor = monitored(_rows(rng, 3000))
    bad = _rows(rng, 1000)
    bad[:300, 0] = np.nan          # missing 5% -> ~35%
    bad[:, 1] = 1e6                # every value above the reference max
    bad[:200, 2] = -1              # out of vocabulary 5% -> ~25%
    _send(engine, bad)
    report = monitor.tick()
    assert report is not None
    assert "missing_rate" in report.features["amount"].quality_issues
    assert report.features["age"].out_of_range_rate == 1.0
    assert "out_of_range" in report.features["age"].quality_issues
    assert "unseen_categories" in report.features["channel"].quality_issues
    assert report.features["channel"].reference_unseen_rate == pytest.approx(0.05, abs=0.02)


def test_test_choice_follows_reference_size_and_overrides(
        monitored: Callable[..., tuple[Engine, EngineMonitor]]) -> None:
    rng = np.random.default_rng(4)
    small = _rows(rng, 800)  # <= 1000 reference rows: KS and chi-squared
    config = DriftConfig(features={"age": FeatureConfig(test="psi", threshold=0.2)})
    engine, monitor = monitored(small, drift=config)
    _send(engine, _rows(rng, 1000))
    report = monitor.tick()
    assert report is not None
    assert report.features["amount"].test == "ks"
    assert report.features["amount"].drifted == (report.features["amount"].ks_pvalue < 0.05)
    assert report.features["channel"].test == "chi2"
    assert (report.features["age"].test, report.features["age"].threshold) == ("psi", 0.2)
    assert report.prediction is not None and report.prediction.test == "ks"
    with pytest.raises(InvalidInput, match="does not apply"):
        DriftConfig(features={"channel": FeatureConfig(test="ks")}).test_for(
            "channel", "categorical", 10, False)
    assert DriftConfig().test_for("x", "numeric", 10**6, has_sample=False) == ("js", 0.1)


def test_report_serializes_without_nan(
        monitored: Callable[..., tuple[Engine, EngineMonitor]]) -> None:
    import json

    rng = np.random.default_rng(1)
    engine, monitor = monitored(_rows(rng, 1000))
    x = _rows(rng, 300)
    x[:, 2] = 7  # every category unseen; the reference OOV share is > 0 so chi2 stays finite
    _send(engine, x)
    report = monitor.tick()
    assert report is not None
    text = json.dumps(report.to_dict(histograms=True), allow_nan=False)
    assert '"bins"' in text


# ---- windows ------------------------------------------------------------------------------------


def _chunk(start: float, end: float, rows: int, value: float = 0.0, sample: int | None = None,
           seen: int | None = None) -> Chunk:
    m = rows if sample is None else sample
    return Chunk(rows=rows, counts={"f": np.array([rows, 0])}, prediction_counts=None,
                 inputs=np.full((m, 1), value, np.float32), outputs=np.zeros((m, 1), np.float32),
                 start=start, end=end, sample_seen=rows if seen is None else seen)


def test_sliding_time_window_keeps_the_last_seconds() -> None:
    w = Windows(WindowSpec("sliding", "time", 10.0))
    for t in range(0, 30, 2):
        window = w.add(_chunk(t, t + 2, 5))
        assert window is not None
    assert window.start == 20 and window.end == 30 and window.rows == 25
    assert int(window.counts["f"][0]) == 25


def test_sliding_rows_window_keeps_the_newest_chunks_reaching_size() -> None:
    w = Windows(WindowSpec("sliding", "rows", 100))
    for t, rows in enumerate([50, 50, 50, 30, 80]):
        window = w.add(_chunk(t, t + 1, rows))
    assert window is not None and window.rows == 110 and window.start == 3


def test_tumbling_windows_close_once() -> None:
    by_time = Windows(WindowSpec("tumbling", "time", 10.0))
    closed = [by_time.add(_chunk(t, t + 2, 1)) for t in range(0, 24, 2)]
    done = [c for c in closed if c is not None]
    assert [(c.start, c.end, c.rows) for c in done] == [(0, 10, 5), (10, 20, 5)]
    assert by_time.pending_rows() == 2
    by_rows = Windows(WindowSpec("tumbling", "rows", 100))
    closed = [by_rows.add(_chunk(t, t + 1, 40)) for t in range(6)]
    assert [c.rows if c else None for c in closed] == [None, None, 120, None, None, 120]


@st.composite
def _chunk_runs(draw: st.DrawFn) -> list[Chunk]:
    """Consecutive chunks whose features, shapes, dtypes and prediction histograms mostly stay
    the same and sometimes change (a reloaded plan, a float count, no prediction)."""
    layouts = [{"a": 3, "b": 2}, {"a": 3}, {"a": 4, "b": 2}]
    out, t = [], 0.0
    for _ in range(draw(st.integers(1, 25))):
        layout = layouts[draw(st.sampled_from([0, 0, 0, 0, 1, 2]))]
        as_float = draw(st.integers(0, 9)) == 0
        counts = {}
        for name, size in layout.items():
            values = np.array(draw(st.lists(st.integers(0, 10**12), min_size=size,
                                            max_size=size)), dtype=np.int64)
            counts[name] = values.astype(np.float64) if as_float else values
        prediction = draw(st.sampled_from([None, 2, 2, 2, 3]))
        pred = None if prediction is None else np.array(
            draw(st.lists(st.integers(0, 10**9), min_size=prediction, max_size=prediction)),
            dtype=np.int64)
        rows = int(draw(st.integers(0, 10**6)))
        step = draw(st.sampled_from([0.5, 1.0, 3.0]))
        out.append(Chunk(rows=rows, counts=counts, prediction_counts=pred,
                         inputs=np.zeros((1, 1), np.float32), outputs=np.zeros((1, 1), np.float32),
                         start=t, end=t + step, sample_seen=max(rows, 1)))
        t += step
    return out


@given(_chunk_runs(), st.sampled_from([WindowSpec("sliding", "time", 5.0),
                                       WindowSpec("sliding", "rows", 2 * 10**6)]))
@settings(max_examples=200, deadline=None)
def test_sliding_window_totals_equal_a_full_merge(chunks: list[Chunk], spec: WindowSpec) -> None:
    """The running totals a sliding window keeps give exactly what merging its chunks gives."""
    w = Windows(spec)
    for chunk in chunks:
        try:
            got = w.add(chunk)
        except (KeyError, ValueError) as exc:  # chunks that cannot merge (a feature missing
            with pytest.raises(type(exc)):       # or reshaped) fail as a plain merge fails
                w.merge(list(w._chunks))
            continue
        assert got is not None
        want = w.merge(list(w._chunks))
        assert (got.rows, got.start, got.end) == (want.rows, want.start, want.end)
        assert got.counts.keys() == want.counts.keys()
        for name, counts in want.counts.items():
            assert got.counts[name].dtype == counts.dtype
            np.testing.assert_array_equal(got.counts[name], counts)
        if want.prediction_counts is None:
            assert got.prediction_counts is None
        else:
            assert got.prediction_counts is not None
            np.testing.assert_array_equal(got.prediction_counts, want.prediction_counts)


def test_merged_sample_is_uniform_over_the_window() -> None:
    w = Windows(WindowSpec("sliding", "time", 100.0), sample_rows=10_000)
    w.add(_chunk(0, 1, 1000, value=1.0, sample=100))  # sampled at 10%
    window = w.add(_chunk(1, 2, 100, value=2.0))         # every row kept
    assert window is not None
    values = window.inputs[:, 0]
    assert (values == 1.0).sum() == 100 and (values == 2.0).sum() == 10  # both at 10%
    capped = Windows(WindowSpec("sliding", "time", 100.0), sample_rows=50)
    capped.add(_chunk(0, 1, 1000, value=1.0, sample=100))
    window = capped.add(_chunk(1, 2, 100, value=2.0))
    assert window is not None and len(window.inputs) == 50


def test_window_spec_parse() -> None:
    assert WindowSpec.parse("sliding:5m") == WindowSpec("sliding", "time", 300.0)
    assert WindowSpec.parse("tumbling:10000rows") == WindowSpec("tumbling", "rows", 10000.0)
    assert WindowSpec.parse("tumbling:1h").describe() == "tumbling:3600s"
    for bad in ("sliding", "hopping:5m", "sliding:-5s", "sliding:5x"):
        with pytest.raises(InvalidInput):
            WindowSpec.parse(bad)


# ---- the engine's recorders from Python --------------------------------------------------------


async def _tagged(engine: Engine, x: np.ndarray, tag: bytes) -> np.ndarray:
    return await engine.apredict(x, tag=tag)


def test_engine_sample_and_prediction_log(make_engine: Callable[..., Engine]) -> None:
    import asyncio

    engine = make_engine(_spec(), _model, max_batch_size=64)
    engine.configure_monitoring(sample_rows=10, prediction_edges=[0.0, 0.5, 1.0],
                                log_entries=2, log_max_age_s=60)
    rng = np.random.default_rng(0)
    rows = _rows(rng, 30)

    async def main() -> list[np.ndarray]:
        return [await _tagged(engine, rows[i:i + 1], b"r%d" % i) for i in range(3)]

    outs = asyncio.run(main())
    found = engine.find_predictions([b"r0", "r1", b"r2"])
    assert found[0] is None  # only the newest 2 entries are kept
    assert found[2] is not None and np.array_equal(found[2][1], outs[2])
    engine.predict(rows[3:])
    sample = engine.sample(reset=True)
    assert sample["seen"] == 30 and sample["inputs"].shape == (10, 4)
    assert int(sample["prediction_counts"].sum()) == 30
    assert engine.sample()["seen"] == 0
    engine.configure_monitoring()  # off
    engine.predict(rows)
    assert engine.sample()["seen"] == 0 and engine.find_predictions([b"r2"]) == [None]
