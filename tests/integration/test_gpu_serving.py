"""A trained bundle served on the GPU (skipped without one): the Engine on ``torch-cuda`` equals
the CPU Engine within 1e-5 and counts the same drift histograms; ``mlserve build-engine`` and
the ``tensorrt`` backend where TensorRT is installed; and a real ``mlserve serve`` process with
``--backend torch-cuda`` answering v2 infer requests on 127.0.0.1 like the CPU engine (where
the server's packages, starlette and uvicorn, are installed)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlserve
import numpy as np
import pytest
from mlserve import BatcherConfig, Engine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not mlserve.cuda_devices(), reason="no CUDA device visible (or a CPU-only "
                       "build of mlserve)"),
]

CONFIG = BatcherConfig(max_batch_size=512, max_queue_delay_us=500, instance_count=2)


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


needs_torch_cuda = pytest.mark.skipif(not _torch_cuda(), reason="torch cannot use CUDA here")
needs_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                                    reason="TensorRT is not installed")
needs_server = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("starlette", "uvicorn", "orjson")),
    reason="the server's packages (starlette, uvicorn, orjson) are not installed",
)


class Trained:
    def __init__(self, root: Path) -> None:
        from mlserve.registry import Registry
        from mlserve.trainer import encode_rows, train
        from mlserve.trainer.datasets import card_transactions

        self.root = root
        self.registry = Registry(root / "registry")
        result = train(card_transactions(6000, seed=11), "is_fraud", name="fraud",
                       timestamp="event_ts",
                       config={"exclude": ["user_id", "merchant_id"], "epochs": 2,
                               "hidden": [32, 16], "min_category_count": 10},
                       registry=self.registry, out_dir=root / "bundle", progress=False)
        self.registry.set_alias("fraud", "champion", result.model_version.version)
        assert result.test_frame is not None
        self.frame = result.test_frame
        self.inputs = result.model_version.manifest["signature"]["inputs"]
        self.x = encode_rows(result.test_frame, self.inputs)
        with Engine.from_registry("fraud@champion", registry=self.registry, backend="cpu",
                                  config=CONFIG) as cpu:
            self.want = np.concatenate(cpu.predict_many(self.chunks()))
            self.want_histograms = cpu.histograms()

    def chunks(self) -> list[np.ndarray]:
        """Odd request sizes (1..97 rows) so that batches mix several requests."""
        sizes = [1, 97, 13, 64, 2, 31]
        out, start, k = [], 0, 0
        while start < len(self.x):
            out.append(self.x[start : start + sizes[k % len(sizes)]])
            start += sizes[k % len(sizes)]
            k += 1
        return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return Trained(tmp_path_factory.mktemp("gpu-serving"))


@needs_torch_cuda
@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "no-graphs"])
def test_torch_cuda_engine_equals_the_cpu_engine(trained: Trained, graphs: bool) -> None:
    with Engine.from_registry("fraud@champion", registry=trained.registry, backend="torch-cuda",
                              config=CONFIG, cuda_graphs=graphs) as gpu:
        got = np.concatenate(gpu.predict_many(trained.chunks()))
        histograms = gpu.histograms()  # the CPU reference counted predict_many's rows only
        single = gpu.predict(trained.x[:1])
        assert gpu.stats()["failed"] == 0
    np.testing.assert_allclose(got, trained.want.reshape(got.shape), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(single, trained.want[:1].reshape(single.shape), rtol=1e-5,
                               atol=1e-5)
    assert histograms["rows"] == trained.want_histograms["rows"]
    for name, want in trained.want_histograms["features"].items():
        np.testing.assert_array_equal(histograms["features"][name]["counts"], want["counts"])


@needs_torch_cuda
def test_torch_cuda_model_graphs_replay_new_inputs(trained: Trained) -> None:
    # One request per batch (no queue delay, one instance): sizes 1 and 8 run eagerly a few
    # times, are then captured as CUDA graphs and replayed, each time on new rows, which must
    # give the CPU engine's answers (a replay that read stale input would not).
    config = BatcherConfig(max_batch_size=64, max_queue_delay_us=0, instance_count=1)
    with Engine.from_registry("fraud@champion", registry=trained.registry, backend="torch-cuda",
                              config=config) as gpu, \
         Engine.from_registry("fraud@champion", registry=trained.registry, backend="cpu",
                              config=config) as cpu:
        start = 0
        for _ in range(8):
            for size in (1, 8):
                x = trained.x[start : start + size]
                start += size
                np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), rtol=1e-5, atol=1e-5)
        graphs = gpu._fn.graphs  # type: ignore[union-attr]
        assert sorted(key[2] for key in graphs) == [1, 8]
        assert gpu.stats()["failed"] == 0


@needs_torch_cuda
def test_batch_scorer_on_torch_cuda_equals_the_cpu(trained: Trained) -> None:
    """A batch job's per-chunk function on the GPU backend (mlserve batch --backend torch-cuda)
    gives the CPU engine's answers."""
    from mlserve.batch import BatchScorer

    with BatchScorer("fraud@champion", registry=trained.registry, backend="torch-cuda",
                     keep=[], batch_rows=512) as scorer:
        got = scorer(trained.frame)["probability"].to_numpy()
    np.testing.assert_allclose(got, trained.want.reshape(-1), rtol=1e-5, atol=1e-5)


@needs_tensorrt
def test_build_engine_then_serve_on_tensorrt(trained: Trained) -> None:
    from mlserve.gpu_cli import main

    ref = "fraud@champion"
    code = main(["build-engine", ref, "--registry", str(trained.registry.root),
                 "--opt-batch", "64", "--max-batch", "512", "--artifact", "model.plan"])
    assert code == 0
    info = trained.registry.resolve(ref).artifacts["model.plan"]
    assert info["kind"] == "tensorrt" and info["gpu"] == mlserve.cuda_devices()[0]["name"]
    assert info["profile"]["max_batch"] == 512
    with Engine.from_registry(ref, registry=trained.registry, backend="tensorrt",
                              config=CONFIG) as trt:
        got = np.concatenate(trt.predict_many(trained.chunks()))
    # TensorRT may run float32 layers in TF32 on Hopper: close, not bit-equal.
    np.testing.assert_allclose(got, trained.want.reshape(got.shape), rtol=2e-3, atol=2e-3)


@pytest.fixture(scope="module")
def gpu_server(trained: Trained) -> Iterator[Any]:
    from server_fixtures import ServerProcess

    proc = ServerProcess(trained.registry.root, ["fraud@champion:torch-cuda"],
                         trained.root / "server.log", "--max-batch-size", "512")
    try:
        proc.wait_ready(timeout_s=120.0)
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, proc.log()


@needs_server
@needs_torch_cuda
def test_server_on_torch_cuda_answers_like_the_cpu_engine(trained: Trained,
                                                          gpu_server: Any) -> None:
    import httpx

    complete = ~np.isnan(trained.x).any(axis=1)  # JSON has no NaN
    x = trained.x[complete][:50]
    want = trained.want.reshape(len(trained.x), -1)[complete][:50]
    body = {"inputs": [{"name": "rows", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}]}
    with httpx.Client(base_url=gpu_server.url, timeout=30.0) as client:
        meta = client.get("/v2/models/fraud").json()
        assert meta["name"] == "fraud"
        r = client.post("/v2/models/fraud/infer", json=body)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        np.testing.assert_allclose(got.reshape(-1), want.reshape(-1), rtol=1e-5, atol=1e-5)
        bad = client.post("/v2/models/fraud/infer", json={"inputs": [
            {"name": "rows", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
        assert bad.status_code == 400
