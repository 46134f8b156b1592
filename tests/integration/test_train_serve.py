"""Trained bundles served by the Engine: raw rows in, the exported model's predictions out,
for both execution backends; and `mlserve train --data` on a public table (scikit-learn's
breast-cancer set, shipped with the package) against a logistic-regression baseline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlserve import BatcherConfig, Engine
from mlserve.registry import Registry
from mlserve.trainer import encode_rows, train
from mlserve.trainer.config import TrainConfig
from mlserve.trainer.datasets import card_transactions
from mlserve.trainer.load import load_table
from mlserve.trainer.split import split_table

sklearn = pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("served")
    registry = Registry(root / "registry")
    result = train(
        card_transactions(6000, seed=11),
        "is_fraud",
        name="fraud",
        timestamp="event_ts",
        config={
            "exclude": ["user_id", "merchant_id"],
            "epochs": 3,
            "hidden": [32, 16],
            "min_category_count": 10,
        },
        registry=registry,
        out_dir=root / "bundle",
        progress=False,
    )
    return result, registry


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_engine_on_raw_rows_equals_the_exported_model(trained: Any, backend: str) -> None:
    result, registry = trained
    config = BatcherConfig(max_batch_size=64, instance_count=2)
    ref = f"fraud/{result.model_version.version}"
    with Engine.from_registry(ref, registry=registry, backend=backend, config=config) as engine:
        x = encode_rows(result.test_frame, engine.bundle.signature["inputs"])
        chunks = [x[i : i + 37] for i in range(0, len(x), 37)]  # odd sizes: batches mix them
        got = np.concatenate(engine.predict_many(chunks))
        single = engine.predict(x[:1])
    want = np.asarray(result.test_outputs, dtype=np.float32).reshape(got.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(single, want[:1], rtol=0, atol=1e-5)


def test_cli_train_on_a_public_table_matches_a_logistic_regression_baseline(
    tmp_path: Path,
) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = load_breast_cancer(as_frame=True).frame
    data = tmp_path / "breast_cancer.csv"
    frame.to_csv(data, index=False)
    settings = {"hidden": "32", "epochs": "40", "lr": "0.003", "patience": "8", "batch_size": "32"}
    sets = [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlserve.cli",
            "train",
            "--data",
            str(data),
            "--label",
            "target",
            "--registry",
            str(tmp_path / "registry"),
            "--out",
            str(tmp_path / "bundle"),
            "--no-progress",
            *sets,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    version = Registry(tmp_path / "registry").resolve("breast_cancer")
    assert version.version == 1 and "roc_auc" in done.stdout

    # The baseline sees exactly the trainer's split of the same file.
    config = TrainConfig(hidden=(32,), epochs=40, lr=0.003, patience=8, batch_size=32)
    splits = split_table(load_table(pd.read_csv(data), "target", config=config), config)
    features = [c for c in frame.columns if c != "target"]
    baseline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    baseline.fit(splits.train[features], splits.train["target"])
    base = roc_auc_score(splits.test["target"], baseline.predict_proba(splits.test[features])[:, 1])
    ours = version.metrics["roc_auc"]
    print(f"breast cancer via `mlserve train`: ROC-AUC {ours:.4f}; LogisticRegression {base:.4f}")
    assert ours >= base - 0.03


def test_multiclass_digits_matches_a_logistic_regression_baseline(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = load_digits(as_frame=True).frame
    pixels = [c for c in frame.columns if c != "target" and frame[c].nunique() > 1]
    config = TrainConfig(hidden=(64,), epochs=30, lr=0.003, patience=6, batch_size=64)
    result = train(
        frame,
        "target",
        name="digits",
        task="multiclass",
        numeric=pixels,
        config=config,
        out_dir=tmp_path / "digits",
        progress=False,
    )
    splits = split_table(
        load_table(frame, "target", task="multiclass", numeric=pixels, config=config), config
    )
    baseline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    baseline.fit(splits.train[pixels], splits.train["target"])
    base = accuracy_score(splits.test["target"], baseline.predict(splits.test[pixels]))
    ours = result.metrics["accuracy"]
    print(
        f"digits: mlserve.trainer accuracy {ours:.4f}, macro-F1 {result.metrics['macro_f1']:.4f};"
        f" LogisticRegression accuracy {base:.4f} (test rows {len(splits.test)})"
    )
    assert ours >= base - 0.03
