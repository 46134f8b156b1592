"""Smoke test of the benchmark harness (bench/): every scenario at the tiny "smoke" level.

Checks the shape of what a run writes (ratios present and positive, machine description,
files), never the figures: benchmarks are not assertions. The ``http`` scenario needs wrk on
PATH and the HTTP server (``mlserve.server.cli``); without either it is skipped, saying which.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a top-level folder, not part of the package
    sys.path.insert(0, str(ROOT))

from bench import harness, registry  # noqa: E402
from bench.__main__ import main  # noqa: E402

SCENARIOS = ("normalize", "batcher", "engine", "http", "features")


def test_registry_lists_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert tuple(registry.scenarios()) == SCENARIOS
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in listed


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_smoke(name: str, tmp_path: Path) -> None:
    pytest.importorskip("mlserve", exc_type=ModuleNotFoundError)
    if name == "engine":
        pytest.importorskip("onnx", exc_type=ModuleNotFoundError)
    if name == "features":  # the offline store's extra
        pytest.importorskip("pyarrow", exc_type=ModuleNotFoundError)
    if name == "http":
        if shutil.which("wrk") is None:
            pytest.skip("wrk is not installed (not on PATH): the http smoke run needs wrk 4.x")
        if importlib.util.find_spec("mlserve.server.cli") is None:
            pytest.skip("mlserve.server.cli is missing: no HTTP server to benchmark")
        for module in ("msgpack", "uvicorn", "uvloop", "httptools"):
            pytest.importorskip(module, exc_type=ModuleNotFoundError)
    record, paths = harness.run_scenario(name, "smoke", tmp_path)

    assert set(paths) == {"json", "markdown", "png"}
    for path in paths.values():
        assert path.parent == tmp_path and path.stat().st_size > 0
        assert path.name.startswith(f"{name}-")
    stored = json.loads(paths["json"].read_text())
    assert stored["scenario"] == name and stored["level"] == "smoke"
    assert stored["timestamp"] and "commit" in stored["git"]

    m = stored["machine"]
    for key in ("cpu_model", "logical_cores", "memory_bytes", "os", "versions", "cuda_devices"):
        assert key in m, key
    assert m["logical_cores"] >= 1
    assert isinstance(m["cuda_devices"], list)
    for package in ("python", "numpy", "onnxruntime", "torch"):
        assert package in m["versions"]

    ratios = stored["ratios"]
    assert ratios
    for key, value in ratios.items():
        assert isinstance(value, float) and math.isfinite(value) and value > 0, key
    assert stored["headline"]["name"] in ratios
    assert stored["headline"]["value"] == ratios[stored["headline"]["name"]]
    assert stored["baseline"] and stored["measurements"] and stored["parameters"]
    assert stored["tables"] and stored["tables"][0]["rows"]
    assert record["ratios"] == pytest.approx(ratios)
    assert "Headline" in paths["markdown"].read_text()
