"""``mlserve serve``: the HTTP server on uvicorn (uvloop, httptools, lifespan on).

``add_parser(subparsers)`` adds the command; ``run(args)`` checks the refs against the registry
(an unknown model fails here, before any socket is bound) and starts uvicorn. With ``--workers
N`` the settings travel to the worker processes as ``MLSERVE_SERVER_*`` environment variables
(see :mod:`mlserve.server.settings`) and each worker builds its app with the import-string
factory ``mlserve.server.app:app_from_env``. On SIGTERM/SIGINT each process marks itself not
ready at once, stops accepting, lets accepted requests finish and closes its engines.

``python -m mlserve.server.cli --registry PATH --model fraud@champion`` runs it standalone.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from mlserve.errors import InvalidInput, MlserveError
from mlserve.features._settings import CLI_METAVAR as FEATURES_METAVAR
from mlserve.gpu import BUNDLE_BACKENDS
from mlserve.registry._settings import CLI_HELP as REGISTRY_HELP
from mlserve.registry._settings import CLI_METAVAR as REGISTRY_METAVAR
from mlserve.server.settings import ServerSettings, split_model_spec

logger = logging.getLogger(__name__)

FACTORY = "mlserve.server.app:app_from_env"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``serve`` to an ``add_subparsers()`` object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="serve registered models over HTTP (KServe v2 protocol, JSON/binary/msgpack)",
        description="Serves registry models over the Open Inference Protocol (KServe v2): "
        "health, metadata, infer (JSON, binary tensor extension, msgpack) and the model "
        "repository API (load/unload, hot swap after an alias moves).",
    )
    _add_arguments(parser)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServerSettings()
    parser.add_argument("--registry", metavar=REGISTRY_METAVAR, default=None,
                        help=REGISTRY_HELP)
    parser.add_argument("--model", dest="models", action="append", default=[],
                        metavar="REF[:BACKEND]",
                        help="model to serve: NAME, NAME/VERSION or NAME@ALIAS of the registry, "
                        "or a bundle directory (an absolute path or ./PATH: served under its "
                        "manifest's name, no registry needed), optionally with its execution "
                        "backend, e.g. fraud@champion:torch-cuda (repeatable)")
    parser.add_argument("--backend", default=d.backend, choices=list(BUNDLE_BACKENDS),
                        help="execution backend of every --model that names none: cpu "
                        "(onnxruntime), torch, torch-cuda or tensorrt (an engine made by "
                        f"`mlserve build-engine`); default {d.backend}")
    parser.add_argument("--device", type=int, default=d.device,
                        help=f"CUDA device of the GPU backends (default {d.device})")
    parser.add_argument("--host", default=d.host, help=f"bind address (default {d.host})")
    parser.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port})")
    parser.add_argument("--workers", type=int, default=d.workers,
                        help="server processes sharing the port (each loads every model)")
    parser.add_argument("--feature-store", metavar=FEATURES_METAVAR, default=None,
                        help="feature store, for models trained on a feature service (requests "
                        "may then carry entity keys): a directory, or s3://BUCKET/PREFIX, whose "
                        "online store is this machine's cache of it, filled by `mlserve "
                        "features materialize --store` here (default: $MLSERVE_FEATURE_STORE)")
    parser.add_argument("--admin-token-file", metavar="FILE", default=None,
                        help="file holding the bearer token the repository routes require")
    parser.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                        help=f"largest request body (default {d.max_body_bytes}); larger: 413")
    parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                        help=f"rows per batch (default {d.max_batch_size})")
    parser.add_argument("--max-queue-delay-us", type=int, default=d.max_queue_delay_us,
                        help=f"batching delay in µs (default {d.max_queue_delay_us})")
    parser.add_argument("--instances", type=int, default=d.instance_count,
                        help="batch-executing threads per model version")
    parser.add_argument("--inline-max-compute-us", type=int, default=d.inline_max_compute_us,
                        metavar="US",
                        help="run a CPU model's batches on the event loop while one takes at "
                        f"most US µs (default {d.inline_max_compute_us}; 0: always on worker "
                        "threads, better for models whose batches take milliseconds)")
    parser.add_argument("--shutdown-timeout", type=float, default=d.shutdown_timeout_s,
                        help="seconds allowed for draining on shutdown")
    parser.add_argument("--access-log-sample", type=float, default=d.access_log_sample,
                        help="share of inference requests written as JSON access-log lines "
                        f"(0..1, default {d.access_log_sample}; 0 turns it off)")
    parser.add_argument("--access-log-file", metavar="FILE", default=None,
                        help="append the access log to FILE (default: stderr)")
    parser.add_argument("--forwarded-allow-ips", metavar="IPS", default=None,
                        help="behind a reverse proxy: addresses (comma-separated, or '*') "
                        "whose X-Forwarded-For/-Proto headers give the client address; "
                        "default: ignore those headers")
    monitoring = parser.add_argument_group("monitoring (docs/monitoring.md)")
    monitoring.add_argument("--no-monitoring", dest="monitoring", action="store_false",
                            help="turn drift monitoring, alerts and /feedback off")
    monitoring.add_argument("--monitoring-config", metavar="FILE", default=None,
                            help="JSON/TOML monitoring settings: per-feature tests and "
                            "thresholds, alert rules, sample and log sizes")
    monitoring.add_argument("--monitoring-interval", type=float, default=None, metavar="S",
                            help="seconds between monitoring reads (default 5)")
    monitoring.add_argument("--monitoring-window", default=None, metavar="KIND:SIZE",
                            help="sliding|tumbling window of SIZE like 300s, 5m, 1h or "
                            "10000rows (default sliding:300s)")
    monitoring.add_argument("--alert-webhook", metavar="URL", default=None,
                            help="POST alert transitions (firing/resolved) as JSON to URL")
    monitoring.add_argument("--alert-min-rows", type=int, default=None, metavar="N",
                            help="windows with fewer rows raise no alert (default 500)")
    log = parser.add_argument_group("prediction log (docs/monitoring.md)")
    log.add_argument("--prediction-log", metavar="LOCATION", default=None,
                     help="write every request's inputs and outputs, and the labels sent to "
                     "/feedback, as Parquet parts to LOCATION (a directory, or "
                     "s3://BUCKET/PREFIX shared by all replicas) for `mlserve drift report "
                     "--prediction-log` (default: $MLSERVE_PREDICTION_LOG, else off)")
    log.add_argument("--prediction-log-flush", type=float, default=d.prediction_log_flush_s,
                     metavar="S", help="seconds between two writes of the prediction log "
                     f"(default {d.prediction_log_flush_s:g})")
    log.add_argument("--prediction-log-sample", type=float, default=d.prediction_log_sample,
                     metavar="FRACTION", help="share of requests logged, chosen by request id "
                     "alike on every replica (0..1, default 1: all; each logged row costs about "
                     "0.7 µs of server CPU)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The :class:`ServerSettings` the parsed flags describe (token file read)."""
    return ServerSettings(
        registry=args.registry,
        models=tuple(args.models),
        backend=args.backend,
        device=args.device,
        host=args.host,
        port=args.port,
        workers=args.workers,
        feature_store=args.feature_store,
        admin_token_file=args.admin_token_file,
        max_body_bytes=args.max_body_bytes,
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        instance_count=args.instances,
        inline_max_compute_us=args.inline_max_compute_us,
        shutdown_timeout_s=args.shutdown_timeout,
        access_log_sample=args.access_log_sample,
        access_log_file=args.access_log_file,
        forwarded_allow_ips=args.forwarded_allow_ips,
        monitoring=getattr(args, "monitoring", True),
        monitoring_interval_s=getattr(args, "monitoring_interval", None),
        monitoring_window=getattr(args, "monitoring_window", None),
        monitoring_config_file=getattr(args, "monitoring_config", None),
        alert_webhook_url=getattr(args, "alert_webhook", None),
        alert_min_rows=getattr(args, "alert_min_rows", None),
        prediction_log=getattr(args, "prediction_log", None)
        or os.environ.get("MLSERVE_PREDICTION_LOG") or None,
        prediction_log_flush_s=getattr(args, "prediction_log_flush", 10.0),
        prediction_log_sample=getattr(args, "prediction_log_sample", 1.0),
    ).resolved()


def run(args: argparse.Namespace) -> int:
    """Runs the server until SIGTERM/SIGINT; 0 after a clean shutdown, 2 on bad settings."""
    # mlserve's own log lines (models loaded, shutdown) at --log-level, as uvicorn's are;
    # a no-op where the embedding program configured logging already.
    level = str(getattr(args, "log_level", "info")).upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
        _check_refs(settings)
        if settings.prediction_log is not None:
            from mlserve.predlog import check_location

            check_location(settings.prediction_log)
    except MlserveError as exc:
        print(f"mlserve serve: {exc}", file=sys.stderr)
        return 2
    if not settings.models:
        print("mlserve serve: no --model given; load models with the repository API "
              "(POST /v2/repository/models/NAME/load)", file=sys.stderr)
    return serve(settings, log_level=getattr(args, "log_level", "info"))


def _check_refs(settings: ServerSettings) -> None:
    """Every startup ref resolves, and every GPU backend they use can run here (a missing GPU,
    torch build or TensorRT fails now, with what to install, before any socket is bound)."""
    from mlserve import gpu
    from mlserve.bundle import is_bundle_path
    from mlserve.registry import Registry
    from mlserve.server.models import BundleSource

    registry = None
    bundles: dict[str, str] = {}
    names: list[str] = []
    for spec in settings.models:
        ref = split_model_spec(spec)[0]
        if is_bundle_path(ref):
            name = BundleSource.read(ref).name
            if name in bundles or name in names:
                raise InvalidInput(f"--model {ref}: its model name {name!r} is served by "
                                   f"another --model too; one name, one source")
            bundles[name] = ref
            continue
        registry = registry or Registry(settings.registry)
        name = registry.resolve(ref).name
        if name in bundles:
            raise InvalidInput(f"--model {ref}: model {name!r} is served from bundle "
                               f"{bundles[name]} too; one name, one source")
        names.append(name)
    backends = settings.backends()
    if "torch-cuda" in backends:
        gpu.import_torch_cuda(settings.device)
    if "tensorrt" in backends:
        gpu.import_tensorrt(settings.device)


def serve(settings: ServerSettings, *, log_level: str = "info") -> int:
    """Starts uvicorn with ``settings`` and blocks until it has shut down."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from mlserve.server import app as app_module
    from mlserve.server.models import ModelManager

    common: dict[str, Any] = dict(
        host=settings.host, port=settings.port, loop="uvloop", http="httptools",
        lifespan="on", log_level=log_level, access_log=False,
        # No "server: uvicorn" header (nothing to advertise; one header less per response), and
        # proxy headers only when trusted addresses are given: uvicorn's middleware otherwise
        # wraps every request (measured ~1.5 µs of event-loop time each).
        server_header=False, proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout_s)),
    )
    if settings.workers == 1:
        manager = ModelManager(settings.registry, config=settings.batcher_config(),
                               backend=settings.backend, device=settings.device,
                               feature_store=settings.feature_store)
        server = uvicorn.Server(uvicorn.Config(app_module.create_app(manager, settings), **common))
        # uvicorn re-raises the captured SIGTERM after its graceful shutdown; with the default
        # disposition that would kill the process (status -15) although it drained cleanly.
        signal.signal(signal.SIGTERM, _ignore_signal)
        server.run()
        return 0 if server.started else 1
    os.environ.update(settings.to_env())
    os.environ["MLSERVE_SERVER_LOG_LEVEL"] = log_level  # the workers' own logging
    # Request metrics of all workers aggregate through files (prometheus_client multiprocess
    # mode); the workers are started after this and read the variable at import.
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="mlserve-prometheus-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    try:
        config = uvicorn.Config(FACTORY, factory=True, workers=settings.workers, **common)
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    return 0


def _ignore_signal(signum: int, frame: Any) -> None:
    logger.debug("signal %d after shutdown", signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlserve serve", description=__doc__)
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
