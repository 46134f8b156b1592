"""Batch inference on Ray Data: ``ds.map_batches(BatchScorer, fn_constructor_kwargs={...},
batch_format=..., concurrency=2)`` on a local Ray instance scores every row exactly as the
scorer does in process, and as the trainer did, in each of Ray Data's three batch formats.

Skipped where Ray Data is not installed (it is no dependency of mlserve).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlserve.batch import BatchScorer
from mlserve.registry import Registry
from mlserve.trainer import train
from mlserve.trainer.datasets import card_transactions

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray[data]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")

pytestmark = [
    pytest.mark.slow,
    # Ray Data's pandas blocks call DataFrame.reset_index(inplace=True), which pandas 3
    # deprecates: a warning raised in this (the driver) process by Dataset.to_pandas().
    pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.reset_index"),
    # Ray Data's own deprecations, warned by Ray's code about Ray's defaults (e.g.
    # ``use_push_based_shuffle`` when a DataContext is created).
    pytest.mark.filterwarnings(r"ignore::DeprecationWarning:ray\."),
]

#: Rows per block handed to Ray: several blocks, so that both actors get work.
BLOCK_ROWS = 150
#: The columns copied to the output: a row id to undo Ray's order, the label, and a string
#: column with missing values (kept as Ray gave it, None included, in every format).
KEEP = ["row_id", "is_fraud", "country"]


@dataclass
class Trained:
    ref: str
    registry: Path
    rows: pd.DataFrame
    outputs: np.ndarray


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """A small fraud model in a registry, its test rows (with a ``row_id``) and the trainer's
    predictions of them; a local Ray instance for the module's tests."""
    root = tmp_path_factory.mktemp("batch_ray")
    registry = Registry(root / "registry")
    result = train(card_transactions(4000, seed=3), "is_fraud", name="fraud",
                   timestamp="event_ts",
                   config={"exclude": ["user_id", "merchant_id"], "epochs": 2, "hidden": [16]},
                   registry=registry, out_dir=root / "bundle", progress=False)
    rows = result.test_frame.reset_index(drop=True)
    rows["row_id"] = np.arange(len(rows), dtype=np.int64)
    version = result.model_version
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield Trained(ref=f"{version.name}/{version.version}", registry=root / "registry",
                      rows=rows, outputs=np.asarray(result.test_outputs).reshape(-1))
    finally:
        ray.shutdown()


def scorer_kwargs(trained: Trained) -> dict[str, Any]:
    return {"model": trained.ref, "registry": str(trained.registry), "keep": KEEP}


@pytest.mark.parametrize("batch_format", ["pyarrow", "pandas", "numpy"])
def test_map_batches_matches_in_process_scoring(trained: Trained, batch_format: str) -> None:
    rows = trained.rows
    with BatchScorer(**scorer_kwargs(trained)) as scorer:
        want = scorer(rows)
    assert list(want.columns) == [*KEEP, "probability", "predicted_class"]
    np.testing.assert_allclose(want["probability"].to_numpy(), trained.outputs, rtol=0, atol=1e-5)

    blocks = [rows.iloc[i:i + BLOCK_ROWS] for i in range(0, len(rows), BLOCK_ROWS)]
    ds = ray.data.from_pandas(blocks)
    # num_cpus=0.5: two actors at the default 1 CPU each would hold both CPUs of this Ray
    # instance, and a read task of an upstream operator could never be scheduled.
    got = ds.map_batches(BatchScorer, fn_constructor_kwargs=scorer_kwargs(trained),
                         batch_format=batch_format, batch_size=64, concurrency=2,
                         num_cpus=0.5).to_pandas()

    assert list(got.columns) == list(want.columns)
    got = got.sort_values("row_id").reset_index(drop=True)
    assert got["row_id"].tolist() == rows["row_id"].tolist()
    assert got["is_fraud"].tolist() == rows["is_fraud"].tolist()
    assert rows["country"].isna().any()
    assert [None if pd.isna(v) else v for v in got["country"]] == \
        [None if pd.isna(v) else v for v in rows["country"]]
    assert got["country"].map(type).isin([str, type(None)]).all() or \
        pd.api.types.is_string_dtype(got["country"])
    np.testing.assert_array_equal(got["probability"].to_numpy(dtype=np.float32),
                                  want["probability"].to_numpy())
    np.testing.assert_array_equal(got["predicted_class"].to_numpy(dtype=np.int64),
                                  want["predicted_class"].to_numpy())
    np.testing.assert_allclose(got["probability"].to_numpy(dtype=np.float64), trained.outputs,
                               rtol=0, atol=1e-5)
