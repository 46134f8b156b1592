"""End to end: mlserve.trainer.train/tune on real and synthetic tables -> a bundle whose
TorchScript/ONNX models, applied to the C++ plan's output, reproduce the training predictions;
reproducibility; registry calls; the CLI; a scikit-learn baseline on a public data set."""

from __future__ import annotations

import argparse
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from mlserve.errors import InvalidInput
from mlserve.plan import FeaturePlan
from mlserve.trainer import cli, encode_rows, train, tune
from mlserve.trainer.config import TrainConfig
from mlserve.trainer.datasets import card_transactions
from mlserve.trainer.evaluate import roc_auc
from mlserve.trainer.export import onnx_outputs
from mlserve.trainer.load import load_table
from mlserve.trainer.split import split_table

sklearn = pytest.importorskip("sklearn")

TINY = {"hidden": [16], "epochs": 4, "batch_size": 128, "patience": 2}


class FakeRegistry:
    def __init__(self) -> None:
        self.runs: list[tuple[dict[str, Any], dict[str, Any], str | None]] = []
        self.registered: list[tuple[Path, str | None, str | None]] = []

    def log_run(self, params: dict[str, Any], metrics: dict[str, Any], *,
                name: str | None = None) -> str:
        self.runs.append((params, metrics, name))
        return f"run-{len(self.runs)}"

    def register(self, bundle_dir: Path, *, name: str | None = None,
                 run_id: str | None = None) -> str:
        self.registered.append((Path(bundle_dir), name, run_id))
        return f"{name}:v{len(self.registered)}"


@pytest.fixture(scope="module")
def cards() -> pd.DataFrame:
    return card_transactions(12000, seed=7)


@pytest.fixture(scope="module")
def card_result(cards: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Any:
    registry = FakeRegistry()
    out = tmp_path_factory.mktemp("cards") / "bundle"
    result = train(cards, "is_fraud", name="fraud", timestamp="event_ts",
                   config={"exclude": ["user_id", "merchant_id"], "epochs": 8, "patience": 3,
                           "min_category_count": 20},
                   registry=registry, out_dir=out, progress=False)
    return result, registry


def test_card_transactions_learnable(card_result: Any) -> None:
    result, _ = card_result
    print(f"synthetic card transactions: test ROC-AUC {result.metrics['roc_auc']:.4f}, "
          f"PR-AUC {result.metrics['pr_auc']:.4f}")
    assert result.metrics["roc_auc"] > 0.9
    assert result.task == "binary" and 1 <= len(result.history) <= 8


def test_bundle_manifest_and_artifacts(card_result: Any) -> None:
    result, registry = card_result
    path = result.bundle_path
    manifest = json.loads((path / "mlserve.json").read_text())
    assert manifest["format_version"] == 2 and manifest["name"] == "fraud"
    assert manifest["version"] is None and manifest["task"] == "binary"
    assert manifest["classes"] == [0, 1] and manifest["label"] == "is_fraud"
    assert manifest["signature"]["outputs"] == [
        {"name": "probability", "dtype": "float32", "shape": [-1, 1]}]
    names = [i["name"] for i in manifest["signature"]["inputs"]]
    assert names == [f["name"] for f in manifest["preprocessing"]["features"]]
    assert "user_id" not in names and "event_ts" not in names
    assert all(i["unknown"] == "oov" for i in manifest["signature"]["inputs"]
               if i["kind"] == "categorical")  # the default policy, recorded
    for name, info in manifest["artifacts"].items():
        data = (path / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"] and len(data) == info["bytes"]
    assert {"model.pt", "model.onnx", "training_curves.png", "metrics.jsonl"} <= set(
        manifest["artifacts"])
    lines = (path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(result.history) and "valid_roc_auc" in json.loads(lines[0])
    assert manifest["reference"]["rows"] == manifest["lineage"]["split"]["train"]
    assert manifest["lineage"]["dataset_fingerprint"].startswith("sha256:")
    assert manifest["metrics"]["roc_auc"] == pytest.approx(result.metrics["roc_auc"])
    # registry: one run logged, the bundle registered with that run id
    assert registry.runs[0][2] == "fraud" and registry.runs[0][1] == result.metrics
    assert registry.registered == [(path, "fraud", "run-1")]
    assert result.run_id == "run-1" and result.model_version == "fraud:v1"


def test_exported_models_reproduce_training_predictions(card_result: Any) -> None:
    result, _ = card_result
    manifest = json.loads((result.bundle_path / "mlserve.json").read_text())
    plan = FeaturePlan(manifest["preprocessing"])
    x = plan.transform(encode_rows(result.test_frame, manifest["signature"]["inputs"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(result.bundle_path / "model.pt"))
        ts_out = scripted(torch.from_numpy(x)).detach().numpy()
    onnx_out = onnx_outputs(result.bundle_path / "model.onnx", x)
    np.testing.assert_allclose(ts_out, result.test_outputs, atol=1e-6)
    np.testing.assert_allclose(onnx_out, result.test_outputs, atol=1e-4)
    y = result.test_frame["is_fraud"].to_numpy()
    assert roc_auc(y, onnx_out[:, 0]) == pytest.approx(result.metrics["roc_auc"], abs=1e-4)


def test_reproducible(tmp_path: Path) -> None:
    data = card_transactions(2000, seed=5)
    kwargs = {"config": {**TINY, "exclude": ["user_id", "merchant_id"]}, "progress": False,
              "timestamp": "event_ts"}
    a = train(data, "is_fraud", out_dir=tmp_path / "a", **kwargs)
    b = train(data, "is_fraud", out_dir=tmp_path / "b", **kwargs)
    for key, value in a.metrics.items():
        assert b.metrics[key] == pytest.approx(value, abs=1e-6)
    np.testing.assert_allclose(a.test_outputs, b.test_outputs, atol=1e-6)
    c = train(data, "is_fraud", out_dir=tmp_path / "c", overrides=["seed=8"], **kwargs)
    assert not np.allclose(a.test_outputs, c.test_outputs)


def test_multiclass_and_regression_from_files(tmp_path: Path) -> None:
    from sklearn.datasets import load_diabetes, load_iris

    iris = load_iris(as_frame=True).frame
    iris["target"] = iris["target"].map({0: "setosa", 1: "versicolor", 2: "virginica"})
    iris.to_csv(tmp_path / "iris.csv", index=False)
    r = train(tmp_path / "iris.csv", "target", config={**TINY, "epochs": 30, "lr": 0.01,
                                                       "min_rows": 20},
              out_dir=tmp_path / "iris", progress=False)
    assert r.name == "iris" and r.task == "multiclass" and r.metrics["accuracy"] > 0.8
    manifest = json.loads((r.bundle_path / "mlserve.json").read_text())
    assert manifest["classes"] == ["setosa", "versicolor", "virginica"]
    assert manifest["signature"]["outputs"][0]["name"] == "probabilities"
    diabetes = load_diabetes(as_frame=True, scaled=False).frame
    diabetes.to_parquet(tmp_path / "diabetes.parquet")
    r = train(tmp_path / "diabetes.parquet", "target", task="regression", numeric=["bmi", "bp",
              "s5", "age"], config={**TINY, "epochs": 30, "lr": 0.01},
              out_dir=tmp_path / "diab", progress=False)
    assert r.task == "regression" and r.metrics["r2"] > 0.2
    manifest = json.loads((r.bundle_path / "mlserve.json").read_text())
    assert manifest["signature"]["outputs"][0]["name"] == "prediction"


def test_breast_cancer_matches_logistic_regression_baseline(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = load_breast_cancer(as_frame=True).frame
    config = TrainConfig(hidden=(32,), epochs=40, lr=0.003, patience=8, batch_size=32)
    result = train(frame, "target", name="breast_cancer", config=config,
                   out_dir=tmp_path / "bc", progress=False)
    splits = split_table(load_table(frame, "target", config=config), config)  # the same split
    train_rows, test = splits.train, splits.test
    pd.testing.assert_frame_equal(test, result.test_frame)
    features = [c for c in frame.columns if c != "target"]
    baseline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    baseline.fit(train_rows[features], train_rows["target"])
    base_auc = roc_auc_score(test["target"], baseline.predict_proba(test[features])[:, 1])
    print(f"breast cancer: mlserve.trainer ROC-AUC {result.metrics['roc_auc']:.4f}, "
          f"LogisticRegression {base_auc:.4f} (test rows {len(test)})")
    assert result.metrics["roc_auc"] >= base_auc - 0.03
    assert result.metrics["roc_auc"] > 0.95


def test_tune_logs_each_trial_and_registers_best(tmp_path: Path) -> None:
    data = card_transactions(1500, seed=2)
    registry = FakeRegistry()
    outcome = tune(data, "is_fraud", space={"lr": [0.001, 0.01], "hidden": [[8], [16, 8]]},
                   trials=3, config={**TINY, "exclude": ["user_id", "merchant_id"]},
                   registry=registry, out_dir=tmp_path / "tune", progress=False)
    assert len(outcome.trials) == 3 and len(registry.runs) == 3
    assert [name for *_, name in registry.runs] == [f"model-trial-{k:03d}" for k in range(3)]
    best_score = max(t["valid_metrics"]["roc_auc"] for t in outcome.trials)
    assert outcome.best.valid_metrics["roc_auc"] == best_score
    assert registry.registered == [(outcome.best.bundle_path, "model", outcome.best.run_id)]


def test_train_errors_are_invalid_input(tmp_path: Path) -> None:
    data = card_transactions(500, seed=1)
    with pytest.raises(InvalidInput, match="'nope' is not in the table"):
        train(data, "nope", out_dir=tmp_path / "x", progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(InvalidInput, match="not empty"):
        train(data, "is_fraud", out_dir=tmp_path / "full", progress=False, config=TINY)


def test_cli_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = card_transactions(1500, seed=4)
    data.to_parquet(tmp_path / "cards.parquet")
    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "train", "--data", str(tmp_path / "cards.parquet"), "--label", "is_fraud",
        "--timestamp", "event_ts", "--config", str(root / "trainer/configs/demo.toml"),
        "--set", "epochs=2", "--set", "hidden=8", "--out", str(tmp_path / "b"),
        "--no-progress"])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert "roc_auc" in out and "held-out" in out
    assert (tmp_path / "b" / "mlserve.json").is_file()
    bad = parser.parse_args(["train", "--data", str(tmp_path / "cards.parquet"), "--label",
                             "missing", "--out", str(tmp_path / "c"), "--no-progress"])
    assert cli.run(bad) == 2
    assert "label column 'missing'" in capsys.readouterr().out
