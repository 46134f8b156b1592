"""The ``mlserve`` command line as a user runs it: a real process, real output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "mlserve.cli"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["demo", "--help"],
        ["devices", "--help"],
        ["registry", "--help"],
        ["train", "--help"],
        ["tune", "--help"],
        ["features", "--help"],
        ["features", "apply", "--help"],
        ["features", "ingest", "--help"],
        ["features", "materialize", "--help"],
        ["features", "get", "--help"],
        ["features", "list", "--help"],
        ["features", "copy", "--help"],
        ["features", "gc", "--help"],
        ["drift", "report", "--help"],
        ["predlog", "--help"],
        ["predlog", "show", "--help"],
        ["predlog", "gc", "--help"],
    ],
)
def test_every_command_has_help(args: list[str]) -> None:
    done = run(*args)
    assert done.returncode == 0, done.stderr
    assert "usage: mlserve" in done.stdout


def test_demo_trains_registers_and_serves(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    done = run(
        "demo", "--rows", "8000", "--requests", "300", "--epochs", "4", "--registry", str(registry)
    )
    assert done.returncode == 0, done.stderr
    auc = re.search(r"ROC-AUC on [0-9,]+ fresh transactions: ([0-9.]+)", done.stdout)
    assert auc is not None, done.stdout
    assert float(auc.group(1)) > 0.8  # the synthetic label has real signal; constant = 0.5
    assert "predict_many()" in done.stdout
    assert "drift histogram 'amount'" in done.stdout
    # The feature store part: views materialized, the model trained on the service, requests
    # keyed by user_id/merchant_id answered as with the features sent explicitly.
    flat = " ".join(done.stdout.split())  # rich wraps lines at the pipe's 80 columns
    assert "user_activity/1" in flat and "merchant_risk/1" in flat
    assert "lineage: feature service fraud_features/1" in flat
    scored = re.search(r"batch job .*?: ([0-9,]+) rows in [0-9]+ parts, .*?ROC-AUC ([0-9.]+)", flat)
    assert scored is not None, done.stdout
    assert float(scored.group(2)) > 0.8
    assert (registry.parent / "batch" / "scores-fraud-1" / "_SUCCESS").is_file()
    assert "keyed by user_id/merchant_id" in flat
    assert "max |difference| 0.0e+00" in flat, done.stdout
    assert "mlserve_feature_keys_total" in flat
    assert (tmp_path / "demo-features" / "online" / "data.mdb").is_file()
    # The monitoring part: the server's drift report after drifted traffic, feedback, and the
    # offline HTML report.
    served = re.search(r"drifted: ([a-z0-9_, ]*?); alerts firing", flat)
    assert served is not None and {"amount", "channel"} <= set(served.group(1).split(", ")), \
        done.stdout
    assert re.search(r"feedback: [0-9,]+ labelled requests joined", flat)
    offline = re.search(r"offline drift report .*?drifted ([a-z0-9_, ]*?) -> ", flat)
    assert offline is not None and "amount" in offline.group(1), done.stdout
    assert (registry.parent / "reports").is_dir()
    listing = run("registry", "--registry", str(registry), "show", "fraud@champion")
    assert listing.returncode == 0, listing.stderr
    assert "fraud" in listing.stdout


def test_devices_reports_the_cpu_fallback_or_gpus() -> None:
    done = run("devices")
    assert done.returncode == 0, done.stderr
    assert "CUDA kernels built:" in done.stdout


def test_unknown_command_fails_with_usage() -> None:
    done = run("serve-everything")
    assert done.returncode == 2
    assert "invalid choice" in done.stderr
