"""Unit tests of mlserve.trainer's stages: config, load/validate, split, plan fitting and row
encoding, metrics (against scikit-learn), reference profile, export parity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mlserve.errors import InvalidInput
from mlserve.plan import FeaturePlan
from mlserve.trainer import evaluate as ev
from mlserve.trainer.config import TrainConfig, load_config
from mlserve.trainer.datasets import card_transactions, feature_history
from mlserve.trainer.export import check_parity, export_onnx, export_torchscript, onnx_outputs
from mlserve.trainer.load import load_table
from mlserve.trainer.model import ServingModel, predict, train_model
from mlserve.trainer.preprocess import encode_rows, fit_preprocessing
from mlserve.trainer.reference import (
    categorical_profile,
    numeric_profile,
    prediction_profile,
    reference_profile,
)
from mlserve.trainer.split import split_table

sklearn_metrics = pytest.importorskip("sklearn.metrics")

FEATURES_NUM = ["amount", "account_age_days", "tx_velocity_1h", "hour", "distance_km"]
FEATURES_CAT = ["merchant_category", "country", "channel"]


@pytest.fixture(scope="module")
def cards() -> pd.DataFrame:
    return card_transactions(3000, seed=3)


# --- config -----------------------------------------------------------------------------------

def test_config_toml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[train]\nhidden = [8, 4]\nlr = 0.01\nexclude = ["a"]\n')
    cfg = load_config(path, ["epochs=3", "dropout=0.2", "hidden=16,8", "seed=11"])
    assert cfg.hidden == (16, 8) and cfg.lr == 0.01 and cfg.epochs == 3
    assert cfg.dropout == 0.2 and cfg.seed == 11 and cfg.exclude == ("a",)
    assert load_config({"batch_size": 32}).batch_size == 32


@pytest.mark.parametrize("overrides, field", [
    (["lr=0"], "lr"), (["dropout=1.5"], "dropout"), (["epochs=abc"], "epochs"),
    (["nope=1"], "nope"), (["valid_fraction=0.45", "test_fraction=0.45"], "test_fraction"),
    (["lr"], "lr"),
])
def test_config_errors_name_the_field(overrides: list[str], field: str) -> None:
    with pytest.raises(InvalidInput, match=field):
        load_config(None, overrides)


def test_config_file_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_config(tmp_path / "none.toml")


def test_demo_toml_loads() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "trainer" / "configs" / "demo.toml")
    assert "user_id" in cfg.exclude
    assert cfg.unknown_category == "oov" and cfg.unknown_category_features == ()


# --- datasets ---------------------------------------------------------------------------------

def test_card_transactions_deterministic_and_drift() -> None:
    a, b = card_transactions(2000, seed=1), card_transactions(2000, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert 0.01 < a["is_fraud"].mean() < 0.2
    assert a["amount"].isna().any() and a["distance_km"].isna().any()
    assert a["event_ts"].is_monotonic_increasing
    drifted = card_transactions(2000, seed=1, drift=1.0)
    assert drifted["amount"].median() > 1.3 * a["amount"].median()
    # drift on chosen features only: the others keep their values exactly
    two = card_transactions(2000, seed=1, drift=1.0, drift_features=["amount", "channel"])
    assert two["amount"].median() > 1.3 * a["amount"].median()
    assert (two["channel"] != a["channel"]).mean() > 0.1
    for column in ("tx_velocity_1h", "distance_km", "country", "account_age_days", "hour"):
        pd.testing.assert_series_equal(two[column], a[column])
    with pytest.raises(ValueError, match="cannot drift"):
        card_transactions(10, drift=1.0, drift_features=["hour"])
    history = feature_history(n_users=20, n_events=200)
    assert {"user_id", "event_ts", "created_ts"} <= set(history.columns)
    assert (history["created_ts"] >= history["event_ts"]).all()


# --- load / validate --------------------------------------------------------------------------

def test_load_infers_kinds_and_task(cards: pd.DataFrame) -> None:
    cfg = TrainConfig(exclude=("user_id", "merchant_id"))
    table = load_table(cards, "is_fraud", timestamp="event_ts", config=cfg)
    assert table.task == "binary" and table.classes == [0, 1]
    assert set(table.categorical) == set(FEATURES_CAT)
    assert set(table.numeric) == set(FEATURES_NUM)
    assert table.fingerprint.startswith("sha256:")
    assert table.missing_rates["distance_km"] > 0.05


def test_load_reads_csv_and_parquet(tmp_path: Path, cards: pd.DataFrame) -> None:
    small = cards[[*FEATURES_NUM, "channel", "is_fraud"]]
    small.to_csv(tmp_path / "t.csv", index=False)
    small.to_parquet(tmp_path / "t.parquet")
    for path in (tmp_path / "t.csv", tmp_path / "t.parquet"):
        table = load_table(path, "is_fraud")
        assert table.categorical == ["channel"] and len(table.frame) == len(small)


def _small() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x": rng.normal(size=100), "c": rng.choice(["a", "b"], 100),
                         "y": rng.integers(0, 2, 100)})


@pytest.mark.parametrize("mutate, label, match", [
    (lambda d: d, "missing_label", "label column 'missing_label' is not in the table"),
    (lambda d: d.assign(y=1), "y", "single value"),
    (lambda d: d.assign(x=np.nan), "y", "'x' is missing in every row"),
    (lambda d: d.assign(c="k"), "y", "'c' is constant"),
    (lambda d: d.head(10), "y", "only 10 labelled rows"),
    (lambda d: d.assign(y=np.nan), "y", "missing in every row"),
    (lambda d: d.assign(x=["1.5"] * 99 + ["abc"]), "y", "'abc' is not a number"),
])
def test_load_bad_data(mutate, label: str, match: str) -> None:
    data = mutate(_small())
    numeric = ["x"] if "x" in data else None
    with pytest.raises(InvalidInput, match=match):
        load_table(data, label, numeric=numeric, categorical=["c"])


def test_binary_task_needs_two_classes() -> None:
    data = _small().assign(y=np.arange(100) % 3)
    with pytest.raises(InvalidInput, match="exactly 2"):
        load_table(data, "y", task="binary")
    assert load_table(data, "y").task == "multiclass"
    assert load_table(_small().assign(y=np.linspace(0, 1, 100)), "y").task == "regression"


# --- split ------------------------------------------------------------------------------------

def test_split_time_ordered_and_seeded(cards: pd.DataFrame) -> None:
    cfg = TrainConfig(exclude=("user_id", "merchant_id"))
    table = load_table(cards, "is_fraud", timestamp="event_ts", config=cfg)
    s = split_table(table, cfg)
    assert len(s.train) + len(s.valid) + len(s.test) == len(cards)
    assert s.train["event_ts"].max() <= s.valid["event_ts"].min()
    assert s.valid["event_ts"].max() <= s.test["event_ts"].min()
    plain = load_table(cards, "is_fraud", config=cfg)
    a, b = split_table(plain, cfg), split_table(plain, cfg)
    pd.testing.assert_frame_equal(a.test, b.test)
    c = split_table(plain, TrainConfig(seed=99, exclude=cfg.exclude))
    assert not a.test.equals(c.test)
    assert abs(a.test["is_fraud"].mean() - plain.frame["is_fraud"].mean()) < 0.01


# --- preprocessing ----------------------------------------------------------------------------

def test_fit_plan_ops_and_encoding(cards: pd.DataFrame) -> None:
    cfg = TrainConfig(min_category_count=30)
    prep = fit_preprocessing(cards, FEATURES_NUM, FEATURES_CAT, cfg)
    ops = {f["name"]: [o["op"] for o in f["ops"]] for f in prep.spec["features"]}
    assert ops["amount"] == ["impute", "clip", "log1p", "standardize"]
    assert ops["hour"] == ["impute", "clip", "standardize"]  # not skewed
    assert ops["country"] == ["onehot"]
    amount = cards["amount"].to_numpy()
    impute = prep.spec["features"][0]["ops"][0]["value"]
    assert impute == pytest.approx(np.nanmedian(amount))
    counts = cards["country"].value_counts()
    vocab = prep.inputs[FEATURES_NUM.__len__() + 1]["vocabulary"]
    assert set(vocab) == set(counts[counts >= 30].index)
    assert vocab[0] == counts.index[0]

    rows = pd.DataFrame({**{c: [1.0, np.nan] for c in FEATURES_NUM},
                         "merchant_category": ["grocery", None], "country": ["ZZ", "US"],
                         "channel": ["web", "pos"]})
    x = encode_rows(rows, prep.inputs)
    assert x.dtype == np.float32 and x.shape == (2, 8)
    assert np.isnan(x[1, 0]) and np.isnan(x[1, 5])
    assert x[0, 6] == -1.0  # unseen -> OOV
    assert x[1, 6] == vocab.index("US")
    out = prep.plan.transform(x)
    country_cols = [i for i, n in enumerate(prep.plan.output_names) if n.startswith("country=")]
    assert out[0, country_cols[-1]] == 1.0  # the OOV slot
    # standardized training features are centred
    z = prep.transform(cards)
    assert abs(float(z[:, 0].mean())) < 0.05 and abs(float(z[:, 0].std()) - 1) < 0.05


def test_encode_rows_errors() -> None:
    inputs = [{"name": "a", "dtype": "float32", "kind": "numeric", "nullable": True}]
    with pytest.raises(InvalidInput, match="'a'"):
        encode_rows(pd.DataFrame({"b": [1.0]}), inputs)
    with pytest.raises(InvalidInput, match="feature 'a': expected float32"):
        encode_rows(pd.DataFrame({"a": ["x"]}), inputs)


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "", "zz", "é"]),
                                 st.text(max_size=3)), max_size=40),
       policy=st.sampled_from(["oov", "missing"]),
       dtype=st.sampled_from([object, "str"]))
def test_encode_rows_string_columns_match_a_per_value_reference(values: list[str | None],
                                                                policy: str,
                                                                dtype: object) -> None:
    """String columns are encoded once per distinct value (factorize): the same codes as
    looking every value up in the vocabulary, NaN for missing, the policy for the rest."""
    vocabulary = ["b", "a", "", "é"]
    inputs = [{"name": "c", "dtype": "string", "kind": "categorical", "nullable": True,
               "vocabulary": vocabulary, "unknown": policy}]
    column = pd.Series(values, dtype=dtype)
    got = encode_rows(pd.DataFrame({"c": column}), inputs)[:, 0]
    unknown = -1.0 if policy == "oov" else np.nan
    want = [np.nan if pd.isna(v) else float(vocabulary.index(v)) if v in vocabulary else unknown
            for v in column]
    np.testing.assert_array_equal(got, np.asarray(want, dtype=np.float32))


def test_encode_rows_error_policy_counts_rows() -> None:
    inputs = [{"name": "c", "dtype": "string", "kind": "categorical", "nullable": True,
               "vocabulary": ["a", "b"], "unknown": "error"}]
    column = pd.Series(["a"] * 900 + ["zz"] * 100)
    with pytest.raises(InvalidInput, match=r"'zz' in 100 of 1000 rows"):
        encode_rows(pd.DataFrame({"c": column}), inputs)


def test_integer_categories_map_like_strings() -> None:
    frame = pd.DataFrame({"k": [1, 2, 2, 3, 3, 3] * 5})
    prep = fit_preprocessing(frame, [], ["k"], TrainConfig(min_category_count=1))
    assert prep.inputs[0]["vocabulary"] == ["3", "2", "1"]
    x = encode_rows(pd.DataFrame({"k": [3.0, 1.0, np.nan, 9.0]}), prep.inputs)
    np.testing.assert_array_equal(x[:2, 0], [0.0, 2.0])
    assert np.isnan(x[2, 0]) and x[3, 0] == -1.0


def test_unknown_category_policy_from_toml_to_signature(tmp_path: Path,
                                                       cards: pd.DataFrame) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[train]\nunknown_category = "missing"\nmin_category_count = 30\n'
                    '[train.unknown_category_features]\ncountry = "error"\n')
    cfg = load_config(path)
    assert cfg.unknown_category_features == (("country", "error"),)
    assert cfg.to_dict()["unknown_category_features"] == {"country": "error"}
    assert load_config(None, ["unknown_category_features=country:error"]) == load_config(
        {"unknown_category_features": {"country": "error"}})
    prep = fit_preprocessing(cards, FEATURES_NUM, FEATURES_CAT, cfg)
    policies = {s["name"]: s.get("unknown") for s in prep.inputs}
    assert policies == {**dict.fromkeys(FEATURES_NUM), "merchant_category": "missing",
                        "country": "error", "channel": "missing"}

    # encode_rows applies each input's policy (what serving does) unless told otherwise;
    # training and evaluation encode with "oov", and never refuse a row.
    rows = pd.DataFrame({**{c: [1.0, 1.0] for c in FEATURES_NUM},
                         "merchant_category": ["grocery", "NEW"], "country": ["US", "US"],
                         "channel": ["web", "NEW"]})
    x = encode_rows(rows, prep.inputs)
    assert np.isnan(x[1, 5]) and np.isnan(x[1, 7]) and not np.isnan(x[0, 5:]).any()
    assert (encode_rows(rows, prep.inputs, unknown="oov")[1, [5, 7]] == -1.0).all()
    rows.loc[0, "country"] = "ZZ"
    with pytest.raises(InvalidInput, match="input 'country': unknown category 'ZZ'"):
        encode_rows(rows, prep.inputs)
    assert encode_rows(rows, prep.inputs, unknown="oov")[0, 6] == -1.0
    assert prep.transform(rows)[0].shape == (prep.plan.f_out,)  # evaluation: OOV, no error


@pytest.mark.parametrize("settings, match", [
    ({"unknown_category": "drop"}, "unknown_category"),
    ({"unknown_category_features": {"country": "skip"}}, "for 'country'"),
    ({"unknown_category_features": "country"}, "FEATURE:POLICY"),
])
def test_unknown_category_config_errors(settings: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        load_config(settings)


def test_unknown_category_override_must_name_a_categorical(cards: pd.DataFrame) -> None:
    cfg = load_config({"unknown_category_features": {"amount": "error", "contry": "error"}})
    with pytest.raises(InvalidInput, match="names amount, contry, not categorical features"):
        fit_preprocessing(cards, FEATURES_NUM, FEATURES_CAT, cfg)


# --- metrics vs scikit-learn ------------------------------------------------------------------

def test_binary_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + rng.random(500) * 0.7, 0, 1)
    p[:50] = np.round(p[:50], 1)  # ties
    got = ev.binary_metrics(y, p)
    assert got["roc_auc"] == pytest.approx(sklearn_metrics.roc_auc_score(y, p), abs=1e-12)
    assert got["pr_auc"] == pytest.approx(sklearn_metrics.average_precision_score(y, p),
                                          abs=1e-12)
    assert got["log_loss"] == pytest.approx(sklearn_metrics.log_loss(y, p), abs=1e-6)
    assert got["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, p >= 0.5))
    assert 0 <= got["ece"] <= 1
    assert ev.expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0


def test_multiclass_and_regression_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 2 * np.eye(4)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = ev.multiclass_metrics(y, proba)
    pred = proba.argmax(1)
    assert got["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(y, pred, average="macro"))
    assert got["log_loss"] == pytest.approx(sklearn_metrics.log_loss(y, proba), abs=1e-6)
    t = rng.normal(size=200)
    r = t + rng.normal(scale=0.3, size=200)
    reg = ev.regression_metrics(t, r)
    assert reg["rmse"] == pytest.approx(math.sqrt(sklearn_metrics.mean_squared_error(t, r)))
    assert reg["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(t, r))
    assert reg["r2"] == pytest.approx(sklearn_metrics.r2_score(t, r))


# --- reference profile ------------------------------------------------------------------------

def test_reference_profile_matches_numpy_and_plan_histograms(cards: pd.DataFrame) -> None:
    prep = fit_preprocessing(cards, FEATURES_NUM, FEATURES_CAT, TrainConfig())
    encoded = encode_rows(cards, prep.inputs)
    outputs = np.random.default_rng(0).random((len(cards), 1)).astype(np.float32)
    ref = reference_profile(prep.spec, encoded, "binary", outputs)
    assert ref["rows"] == len(cards)
    amount = ref["features"]["amount"]
    raw = cards["amount"].to_numpy(np.float64)
    present = raw[~np.isnan(raw)]
    inner = np.unique(np.quantile(present, np.linspace(0.1, 0.9, 9)).astype(np.float32))
    np.testing.assert_allclose(amount["edges"][1:-1], inner)
    assert amount["edges"][0] == -np.inf and amount["edges"][-1] == np.inf
    expected = np.histogram(present.astype(np.float32),
                            bins=np.r_[-np.inf, inner.astype(np.float64), np.inf])[0]
    np.testing.assert_allclose(amount["frequencies"], expected / expected.sum(), atol=2e-3)
    assert amount["missing_rate"] == pytest.approx(np.isnan(raw).mean())
    assert amount["min"] == pytest.approx(present.min()) and amount["max"] == pytest.approx(
        present.max(), rel=1e-6)
    # the C++ plan's drift histograms count the same bins and slots
    plan = FeaturePlan(prep.spec)
    plan.transform(encoded, histograms=True)
    snap = plan.histograms(reset=True)["features"]
    counts = snap["amount"]["counts"]
    np.testing.assert_allclose(amount["frequencies"], counts / counts.sum(), atol=1e-12)
    country = ref["features"]["country"]
    c_counts = snap["country"]["counts"]
    np.testing.assert_allclose(country["frequencies"], c_counts / c_counts.sum(), atol=1e-12)
    assert country["missing_rate"] == pytest.approx(cards["country"].isna().mean())
    assert sum(ref["prediction"]["frequencies"]) == pytest.approx(1.0)


def test_reference_samples_are_float32_values_of_the_column() -> None:
    rng = np.random.default_rng(1)
    raw = rng.lognormal(3.0, 1.0, 5000).astype(np.float32)
    raw[::10] = np.nan
    prof = numeric_profile(raw, [-np.inf, 20.0, np.inf], sample_size=300, seed=4)
    sample = np.array(prof["sample"])
    assert len(sample) == 300 and np.all(np.diff(sample) >= 0)
    # each written value reads back as exactly one of the column's float32 values
    assert np.isin(sample.astype(np.float32), raw).all()
    assert numeric_profile(raw, [-np.inf, np.inf], sample_size=300, seed=4)["sample"] == \
        prof["sample"]
    assert "sample" not in numeric_profile(raw, [-np.inf, np.inf])
    small = numeric_profile(np.array([2.5, np.nan, 1.0], np.float32), [-np.inf, np.inf], 10)
    assert small["sample"] == [1.0, 2.5]
    outputs = rng.random((400, 1)).astype(np.float32)
    pred = prediction_profile("binary", outputs, sample_size=50)
    assert len(pred["sample"]) == 50 and np.isin(np.float32(pred["sample"]), outputs).all()
    assert "sample" not in prediction_profile("multiclass", rng.random((20, 3)),
                                              sample_size=50)


def test_profiles_edge_cases() -> None:
    prof = numeric_profile(np.array([np.nan, 1.0, 2.0, 3.0], np.float32), [-np.inf, 2.0, np.inf])
    assert prof["frequencies"] == [pytest.approx(1 / 3), pytest.approx(2 / 3)]
    assert prof["missing_rate"] == 0.25
    cat = categorical_profile(np.array([0, 1, 1, -1, 7, np.nan, 0.5]), 2)
    assert cat["frequencies"] == [pytest.approx(1 / 6), pytest.approx(2 / 6), pytest.approx(0.5)]


# --- model + export ---------------------------------------------------------------------------

@pytest.mark.parametrize("task, n_out", [("binary", 1), ("multiclass", 3), ("regression", 1)])
def test_train_model_tasks_and_export_parity(task: str, n_out: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    score = x[:, 0] - x[:, 1]
    y: np.ndarray
    if task == "binary":
        y = (score > 0).astype(np.int64)
    elif task == "multiclass":
        y = np.digitize(score, [-0.5, 0.5]).astype(np.int64)
    else:
        y = 3 * score + 10
    cfg = TrainConfig(hidden=(16,), epochs=15, batch_size=64, lr=0.01)
    trained = train_model(x[:300], y[:300], x[300:], y[300:], task=task, n_classes=3,
                          config=cfg)
    out = predict(trained.model, x[300:])
    assert out.shape == (100, n_out)
    metrics = ev.evaluate(task, y[300:], out)
    if task == "binary":
        assert metrics["roc_auc"] > 0.95
    elif task == "multiclass":
        assert metrics["accuracy"] > 0.8
        np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)
    else:
        assert metrics["r2"] > 0.9
    assert len(trained.history) >= 1 and "valid_loss" in trained.history[0]
    pt = export_torchscript(trained.model, x, tmp_path / "m.pt")
    onnx_path = export_onnx(trained.model, x, tmp_path / "m.onnx")
    diff = check_parity(trained.model, onnx_path, pt, x[300:], 1e-4)
    assert diff <= 1e-4
    np.testing.assert_allclose(onnx_outputs(onnx_path, x[:7]), predict(trained.model, x[:7]),
                               atol=1e-5)


def test_parity_failure_raises_internal_error(tmp_path: Path) -> None:
    from mlserve.errors import InternalError

    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    model = ServingModel(3, 1, "binary", TrainConfig(hidden=(4,)))
    pt = export_torchscript(model, x, tmp_path / "m.pt")
    onnx_path = export_onnx(model, x, tmp_path / "m.onnx")
    with torch.no_grad():
        model.net[0].bias += 1.0
    with pytest.raises(InternalError, match="disagrees"):
        check_parity(model, onnx_path, pt, x, 1e-4)
