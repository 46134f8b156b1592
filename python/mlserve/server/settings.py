"""Settings of the HTTP server, and the one place that reads its environment variables.

``mlserve serve`` parses its flags into :class:`ServerSettings`; with ``--workers N`` it writes
them to ``MLSERVE_SERVER_*`` variables (:meth:`ServerSettings.to_env`) so that every uvicorn
worker process rebuilds the same settings with :meth:`ServerSettings.from_env`. The admin token
itself never travels in the environment: only the path of the file holding it does.
Immutable, hence thread-safe.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mlserve.config import BatcherConfig
from mlserve.errors import InvalidInput
from mlserve.gpu import BUNDLE_BACKENDS

if TYPE_CHECKING:
    from mlserve.server.monitoring import MonitoringConfig

ENV_PREFIX = "MLSERVE_SERVER_"


def split_model_spec(spec: str) -> tuple[str, str | None]:
    """``REF[:BACKEND]`` -> (REF, BACKEND or None), e.g. ``fraud@champion:torch-cuda``.

    Registry names, versions and aliases never contain ``:``; a bundle directory's path may, so
    a spec that is an existing bundle directory as a whole is not split. An unknown backend is
    InvalidInput.
    """
    from mlserve.bundle import is_bundle_path

    if is_bundle_path(spec) and Path(spec).is_dir():
        return spec, None
    ref, sep, backend = spec.rpartition(":")
    if not sep:
        return spec, None
    check_backend(backend, f"model {spec!r}")
    return ref, backend


def check_backend(backend: str, where: str = "backend") -> str:
    if backend not in BUNDLE_BACKENDS:
        raise InvalidInput(
            f"{where}: unknown execution backend {backend!r}; choose one of "
            f"{', '.join(BUNDLE_BACKENDS)}"
        )
    return backend


@dataclass(frozen=True)
class ServerSettings:
    """What one server process serves and how."""

    registry: str | None = None
    """Registry root; None: ``$MLSERVE_HOME/registry``."""
    models: tuple[str, ...] = ()
    """Registry refs loaded at startup (``fraud@champion``, ``fraud/2``, ``fraud``), each
    optionally with its execution backend: ``fraud@champion:torch-cuda``."""
    backend: str = "cpu"
    """Execution backend of the models whose ref names none: ``cpu`` (onnxruntime),
    ``torch``, ``torch-cuda`` or ``tensorrt`` (see mlserve.gpu)."""
    device: int = 0
    """CUDA device of the models served by a GPU backend."""
    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = 8000
    """TCP port to bind."""
    workers: int = 1
    """Server processes sharing the socket (each loads every model)."""
    feature_store: str | None = None
    """Feature store root for models trained on a feature service (entity-keyed requests);
    None: ``$MLSERVE_FEATURE_STORE``, and a model that needs a store fails to load without."""
    admin_token_file: str | None = None
    """File whose stripped content is the bearer token of the admin routes; None: no token."""
    max_body_bytes: int = 64 << 20
    """Largest request body accepted; larger ones get 413."""
    max_batch_size: int = 256
    """Rows per batch of each loaded model (and the most rows one request may carry)."""
    max_queue_delay_us: int = 0
    """Longest the oldest queued request waits for its batch to fill. 0 (Triton's default):
    batches form from the requests that queue while the model is busy. Measured with wrk on 2
    cores, one-row msgpack: 200 us gave 10.3K req/s at 64 connections and p50 518 us at 1;
    0 gave 12.1K req/s and p50 285 us."""
    max_queue_size: int = 4096
    """Queued requests per model version before QueueFull (429); 0: unbounded."""
    instance_count: int = 1
    """Batch-executing threads per model version."""
    inline_max_compute_us: int = 1000
    """Run a CPU model's batches on the event loop itself while one takes at most this many µs
    (``BatcherConfig.inline_max_compute_us``; 0: always on the worker threads). Measured on the
    2-core bench VM with the bench's fraud model, one-row msgpack under wrk, 0 vs 250: at 1
    connection 2.6K -> 4.1K req/s (p50 349 -> 228 µs), at 64 connections 12.4K -> 16.2K req/s
    (process CPU 84 -> 62 µs per request). 1000 vs 250, 4 interleaved rounds at 64 connections:
    11.8K vs 10.1K req/s (a 25-row inline batch can take over 250 µs when the VM is slow, and
    the bound then sends batches back to the workers); the loop is held at most ~1 ms per batch."""
    shutdown_timeout_s: float = 10.0
    """Bound on the graceful shutdown: draining requests and closing engines."""
    access_log_sample: float = 1.0
    """Share of inference requests logged as one JSON line (request id, model, version,
    status, outcome, latency, client; see ``mlserve.server.accesslog``); 0 turns it off."""
    access_log_file: str | None = None
    """File the access log is appended to; None or "-": stderr."""
    forwarded_allow_ips: str | None = None
    """Behind a reverse proxy: comma-separated addresses (or "*") whose ``X-Forwarded-For`` /
    ``X-Forwarded-Proto`` headers are trusted for the client address (access log). None (the
    default): those headers are ignored and uvicorn's proxy-headers middleware is not installed,
    which saves a middleware layer on every request."""
    monitoring: bool = True
    """Drift monitoring, alerts and the prediction log for /feedback (docs/monitoring.md); off
    when scipy is missing (the 'monitoring' extra) or with several workers."""
    monitoring_interval_s: float | None = None
    """Seconds between two monitoring reads; None: the config file's, else 5."""
    monitoring_window: str | None = None
    """Window of the drift statistics ("sliding:5m", "tumbling:10000rows"...); None: the
    config file's, else sliding:300s."""
    monitoring_config_file: str | None = None
    """JSON or TOML file with the monitoring settings (drift tests and thresholds per feature,
    alert rules, sample and log sizes; docs/monitoring.md)."""
    alert_webhook_url: str | None = None
    """URL alert transitions are POSTed to as JSON; None: the config file's, else log only."""
    alert_min_rows: int | None = None
    """Windows with fewer rows raise or resolve no alert; None: the config file's, else 500."""
    prediction_log: str | None = None
    """Where every request's inputs and outputs, and the labels sent to /feedback, are written
    as Parquet parts (a directory or ``s3://BUCKET/PREFIX``; :mod:`mlserve.predlog`), so that
    feedback reaching any replica or worker joins offline; None: ``$MLSERVE_PREDICTION_LOG``,
    else off."""
    prediction_log_flush_s: float = 10.0
    """Seconds between two writes of the prediction log (one part per model version)."""
    prediction_log_sample: float = 1.0
    """Share of requests the prediction log keeps (by a hash of the request id, so every
    replica keeps the same ones); each logged row costs the server about 0.7 µs of CPU."""
    admin_token: str | None = field(default=None, repr=False)
    """The token itself (read from ``admin_token_file`` by :meth:`resolved`)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.access_log_sample <= 1.0:
            raise InvalidInput(
                f"access_log_sample must be in 0..1, got {self.access_log_sample}"
            )
        if not 0 < self.port < 65536:
            raise InvalidInput(f"port {self.port} is out of range 1..65535")
        if self.workers < 1:
            raise InvalidInput(f"workers must be at least 1, got {self.workers}")
        if self.max_body_bytes < 1:
            raise InvalidInput(f"max_body_bytes must be positive, got {self.max_body_bytes}")
        if self.inline_max_compute_us < 0:
            raise InvalidInput("inline_max_compute_us must be >= 0 (0 turns inline batches off)")
        if self.shutdown_timeout_s <= 0:
            raise InvalidInput("shutdown_timeout_s must be positive")
        check_backend(self.backend)
        for spec in self.models:
            split_model_spec(spec)
            if "," in spec and self.workers > 1:
                raise InvalidInput(f"model {spec!r}: with --workers > 1 a model ref cannot "
                                   "contain ',' (the worker processes get them comma-joined)")
        if self.device < 0:
            raise InvalidInput(f"device must be >= 0, got {self.device}")
        if self.monitoring:
            self.monitoring_config()  # a bad monitoring setting fails at startup
        if not 0.0 < self.prediction_log_sample <= 1.0:
            raise InvalidInput("prediction_log_sample must be in (0, 1], got "
                               f"{self.prediction_log_sample}")
        if not 0.05 <= self.prediction_log_flush_s <= 3600:
            raise InvalidInput("prediction_log_flush_s must be in 0.05..3600 s, got "
                               f"{self.prediction_log_flush_s}")

    def backends(self) -> set[str]:
        """The execution backends the startup models use."""
        return {split_model_spec(spec)[1] or self.backend for spec in self.models}

    def monitoring_config(self) -> MonitoringConfig:
        """The monitoring settings: the config file's, overridden by the flags given."""
        from mlserve.drift.config import read_config_file
        from mlserve.server.monitoring import MonitoringConfig

        data = ({} if self.monitoring_config_file is None
                else read_config_file(self.monitoring_config_file))
        return MonitoringConfig.from_dict(
            data, interval_s=self.monitoring_interval_s, window=self.monitoring_window,
            alert_webhook_url=self.alert_webhook_url, alert_min_rows=self.alert_min_rows)

    def batcher_config(self) -> BatcherConfig:
        """The dynamic-batching options every loaded model version gets."""
        return BatcherConfig(
            max_batch_size=self.max_batch_size,
            max_queue_delay_us=self.max_queue_delay_us,
            max_queue_size=self.max_queue_size,
            instance_count=self.instance_count,
            priority_levels=2,
            inline_max_compute_us=self.inline_max_compute_us,
        )

    def resolved(self) -> ServerSettings:
        """These settings with ``admin_token`` read from ``admin_token_file``."""
        if self.admin_token_file is None or self.admin_token is not None:
            return self
        try:
            token = Path(self.admin_token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InvalidInput(
                f"cannot read the admin token file {self.admin_token_file!r}: {exc}"
            ) from None
        if not token:
            raise InvalidInput(f"the admin token file {self.admin_token_file!r} is empty")
        return replace(self, admin_token=token)

    def to_env(self) -> dict[str, str]:
        """``MLSERVE_SERVER_*`` variables from which :meth:`from_env` rebuilds these settings."""
        env = {
            "MODELS": ",".join(self.models),
            "BACKEND": self.backend,
            "DEVICE": str(self.device),
            "HOST": self.host,
            "PORT": str(self.port),
            "WORKERS": str(self.workers),
            "MAX_BODY_BYTES": str(self.max_body_bytes),
            "MAX_BATCH_SIZE": str(self.max_batch_size),
            "MAX_QUEUE_DELAY_US": str(self.max_queue_delay_us),
            "MAX_QUEUE_SIZE": str(self.max_queue_size),
            "INSTANCE_COUNT": str(self.instance_count),
            "INLINE_MAX_COMPUTE_US": str(self.inline_max_compute_us),
            "SHUTDOWN_TIMEOUT_S": str(self.shutdown_timeout_s),
            "ACCESS_LOG_SAMPLE": str(self.access_log_sample),
            "MONITORING": "1" if self.monitoring else "0",
            "PREDICTION_LOG_FLUSH_S": str(self.prediction_log_flush_s),
            "PREDICTION_LOG_SAMPLE": str(self.prediction_log_sample),
        }
        for key, value in (("MONITORING_INTERVAL_S", self.monitoring_interval_s),
                           ("MONITORING_WINDOW", self.monitoring_window),
                           ("MONITORING_CONFIG_FILE", self.monitoring_config_file),
                           ("ALERT_WEBHOOK_URL", self.alert_webhook_url),
                           ("ALERT_MIN_ROWS", self.alert_min_rows)):
            if value is not None:
                env[key] = str(value)
        if self.registry is not None:
            env["REGISTRY"] = self.registry
        if self.admin_token_file is not None:
            env["ADMIN_TOKEN_FILE"] = self.admin_token_file
        if self.feature_store is not None:
            env["FEATURE_STORE"] = self.feature_store
        if self.access_log_file is not None:
            env["ACCESS_LOG_FILE"] = self.access_log_file
        if self.prediction_log is not None:
            env["PREDICTION_LOG"] = self.prediction_log
        return {ENV_PREFIX + k: v for k, v in env.items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Settings from ``MLSERVE_SERVER_*`` variables (defaults for the absent ones)."""
        env = os.environ if environ is None else environ

        def get(key: str) -> str | None:
            value = env.get(ENV_PREFIX + key)
            return value if value else None

        def number(key: str, default: float, kind: type[int] | type[float] = int) -> float:
            raw = get(key)
            if raw is None:
                return default
            try:
                return kind(raw)
            except ValueError:
                raise InvalidInput(f"{ENV_PREFIX}{key}={raw!r} is not a number") from None

        d = cls()
        models = tuple(m for m in (get("MODELS") or "").split(",") if m)
        return cls(
            registry=get("REGISTRY"),
            models=models,
            backend=get("BACKEND") or d.backend,
            device=int(number("DEVICE", d.device)),
            host=get("HOST") or d.host,
            port=int(number("PORT", d.port)),
            workers=int(number("WORKERS", d.workers)),
            feature_store=get("FEATURE_STORE"),
            admin_token_file=get("ADMIN_TOKEN_FILE"),
            max_body_bytes=int(number("MAX_BODY_BYTES", d.max_body_bytes)),
            max_batch_size=int(number("MAX_BATCH_SIZE", d.max_batch_size)),
            max_queue_delay_us=int(number("MAX_QUEUE_DELAY_US", d.max_queue_delay_us)),
            max_queue_size=int(number("MAX_QUEUE_SIZE", d.max_queue_size)),
            instance_count=int(number("INSTANCE_COUNT", d.instance_count)),
            inline_max_compute_us=int(number("INLINE_MAX_COMPUTE_US", d.inline_max_compute_us)),
            shutdown_timeout_s=float(
                number("SHUTDOWN_TIMEOUT_S", d.shutdown_timeout_s, float)
            ),
            access_log_sample=float(number("ACCESS_LOG_SAMPLE", d.access_log_sample, float)),
            access_log_file=get("ACCESS_LOG_FILE"),
            monitoring=get("MONITORING") != "0",
            monitoring_interval_s=None if get("MONITORING_INTERVAL_S") is None
            else float(number("MONITORING_INTERVAL_S", 0.0, float)),
            monitoring_window=get("MONITORING_WINDOW"),
            monitoring_config_file=get("MONITORING_CONFIG_FILE"),
            alert_webhook_url=get("ALERT_WEBHOOK_URL"),
            alert_min_rows=None if get("ALERT_MIN_ROWS") is None
            else int(number("ALERT_MIN_ROWS", 0)),
            prediction_log=get("PREDICTION_LOG"),
            prediction_log_flush_s=float(number("PREDICTION_LOG_FLUSH_S",
                                                d.prediction_log_flush_s, float)),
            prediction_log_sample=float(number("PREDICTION_LOG_SAMPLE",
                                               d.prediction_log_sample, float)),
        ).resolved()

