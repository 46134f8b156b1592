"""The ASGI application: KServe v2 / Open Inference Protocol over a :class:`ModelManager`.

``POST /v2/models/{m}[/versions/{v}]/infer`` is served by a plain ASGI fast path (no Request or
Response objects: read the body, decode, await the engine, encode, send); every other route is a
Starlette route. Handlers do transport only; errors are mapped in one place,
:func:`error_response`, from the ``mlserve.errors`` class (its ``http_status``), anything else
is logged and answered 500 with a generic message, so no request can take the worker down.

Lifespan: startup loads the configured models in the background (``/v2/health/live`` answers at
once, ``/v2/health/ready`` turns 200 when all are warm) and starts the monitoring task
(:mod:`mlserve.server.monitoring`: drift, alerts, ``/monitoring`` and ``/feedback``; requests
only hand their request id to the engine, whose core logs the outputs under it per batch);
shutdown marks the server not ready, lets in-flight requests finish and closes the engines
within ``shutdown_timeout_s``.
Single event loop per process; nothing here is shared across threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import itertools
import logging
import signal
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from mlserve import __version__, metrics
from mlserve.errors import InvalidInput, MlserveError, QueueFull, Unavailable
from mlserve.server import codecs
from mlserve.server.accesslog import AccessLog
from mlserve.server.models import ModelManager, ServedVersion
from mlserve.server.monitoring import ServerMonitoring
from mlserve.server.settings import ServerSettings, check_backend, split_model_spec

if TYPE_CHECKING:
    from mlserve.predlog import PredictionLogWriter

logger = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data", "model_repository", "msgpack", "schedule_policy"]
_JSON = b"application/json"
_MSGPACK = b"application/msgpack"
_MSGPACK_TYPES = (b"application/msgpack", b"application/x-msgpack", b"application/vnd.msgpack")

#: Every live app of this process, so a signal hook can mark them draining.
_APPS: weakref.WeakSet[MlserveApp] = weakref.WeakSet()


class PayloadTooLarge(InvalidInput):
    """The request body is larger than ``max_body_bytes``."""

    http_status = 413


class Unauthorized(MlserveError):
    """An admin route was called without the configured bearer token."""

    http_status = 401
    code = "unauthorized"


def error_response(exc: BaseException) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The one mapping of exceptions to HTTP: status, JSON body, extra headers."""
    if isinstance(exc, MlserveError):
        status, message = exc.http_status, str(exc) or type(exc).__name__
    else:
        logger.error("unexpected error while serving a request", exc_info=exc)
        status, message = 500, "internal server error; see the server log"
    headers: list[tuple[bytes, bytes]] = []
    if isinstance(exc, (QueueFull, Unavailable)):
        headers.append((b"retry-after", b"1"))
    if isinstance(exc, Unauthorized):
        headers.append((b"www-authenticate", b"Bearer"))
    return status, orjson.dumps({"error": message}), headers


def mark_draining() -> None:
    """Marks every app of this process not ready (called when a shutdown signal arrives)."""
    for app in list(_APPS):
        app.manager.draining = True


class MlserveApp:
    """ASGI callable: the infer fast path in front of a Starlette app for everything else."""

    def __init__(self, manager: ModelManager, settings: ServerSettings) -> None:
        self.manager = manager
        self.settings = settings
        self._token = settings.admin_token.encode() if settings.admin_token else None
        self.access_log = (
            AccessLog(settings.access_log_sample, settings.access_log_file)
            if settings.access_log_sample > 0.0 else None
        )
        self._startup: asyncio.Task[None] | None = None
        self.monitoring = _monitoring(manager, settings)
        self.prediction_log = _prediction_log(settings)
        #: The request id travels to the engine only when a prediction log can use it.
        self._tag_requests = self.monitoring is not None or self.prediction_log is not None
        routes = [
            Route("/v2", self._server_metadata, methods=["GET"]),
            Route("/v2/health/live", self._live, methods=["GET"]),
            Route("/v2/health/ready", self._ready, methods=["GET"]),
            Route("/v2/models/{model}", self._model_metadata, methods=["GET"]),
            Route("/v2/models/{model}/versions/{version}", self._model_metadata, methods=["GET"]),
            Route("/v2/models/{model}/ready", self._model_ready, methods=["GET"]),
            Route(
                "/v2/models/{model}/versions/{version}/ready", self._model_ready, methods=["GET"]
            ),
            Route("/v2/repository/index", self._repository_index, methods=["POST"]),
            Route("/v2/repository/models/{model}/load", self._load, methods=["POST"]),
            Route("/v2/repository/models/{model}/unload", self._unload, methods=["POST"]),
            Route("/v2/models/{model}/monitoring", self._monitoring, methods=["GET"]),
            Route("/v2/models/{model}/versions/{version}/monitoring", self._monitoring,
                  methods=["GET"]),
            Route("/v2/models/{model}/feedback", self._feedback, methods=["POST"]),
            Route("/metrics", self._metrics, methods=["GET"]),
        ]
        self.starlette = Starlette(routes=routes, lifespan=self._lifespan)
        #: Request counts, latency buckets and in-flight gauges: plain ints (metrics.RequestStats).
        self._stats = metrics.REQUEST_STATS
        self._max_body = settings.max_body_bytes
        #: Infer path -> (model, version): the split and checks of _infer_target once per path.
        self._targets: dict[str, tuple[str, str | None]] = {}
        _APPS.add(self)

    # ---- ASGI entry ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if scope["method"] == "POST" and path.endswith("/infer"):
                target = self._targets.get(path)
                if target is None and (target := _infer_target(path)) is not None \
                        and len(self._targets) < _MAX_CACHED_TARGETS:
                    self._targets[path] = target  # bounded: paths come from clients
                if target is not None:
                    await self._infer(scope, receive, send, *target)
                    return
            request_id = _request_id(scope)

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), (b"x-request-id",
                                                                         request_id)]
                await send(message)

            await self.starlette(scope, receive, send_with_id)
            return
        await self.starlette(scope, receive, send)

    # ---- the hot path ----------------------------------------------------------------------

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None
    ) -> None:
        started = time.perf_counter()
        content_type = declared = header_length_raw = request_id = None
        for key, value in scope["headers"]:  # one pass instead of a dict of all headers
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                declared = value
            elif key == b"x-request-id":
                request_id = bytes(value[:128]) or None
            elif key == b"inference-header-content-length":
                header_length_raw = value
        if request_id is None:
            request_id = b"%s-%x" % (_ID_PREFIX, next(_ID_COUNTER))
        tag = request_id if self._tag_requests else b""
        version_label = "?"
        # Labels only for loaded models: arbitrary names in URLs must not grow the label set.
        label = model if model in self.manager.models else "_unknown"
        in_flight = self._stats.in_flight
        in_flight[label] = in_flight.get(label, 0) + 1
        try:
            message = await receive()  # commonly the whole body in one message
            body = message.get("body", b"")
            if (message.get("more_body", False) or message["type"] != "http.request"
                    or len(body) > self._max_body):
                body = await _read_body(receive, declared, self._max_body, message)
            if content_type not in _MSGPACK_TYPES and content_type is not None:
                content_type = content_type.split(b";")[0].strip().lower()
            if content_type in _MSGPACK_TYPES:
                out = None
                found = self.manager.find(model, version)  # None: get() below says why
                if found is not None and found.msgpack_lane is not None:
                    # The common request, decoded, checked, run and encoded by the core; None:
                    # another request (nothing ran), decoded below.
                    out = await self.manager.run_msgpack(found, body, tag)
                    version_label = found.version
                if out is None:
                    served = self.manager.get(model, version)  # an unknown model: 404 first
                    obj = codecs.unpack_msgpack(body)
                    fast = served.fast_rows(obj)
                    if fast is not None:  # the one-matrix request: cached encoding
                        y = await self.manager.run(served, fast[0], fast[2], tag)
                        out = served.msgpack_response(y, fast[1])
                        version_label = served.version
                if out is None:
                    request = codecs.msgpack_request_from_object(obj)
                    response = await self.manager.infer(model, version, request, tag)
                    out = codecs.encode_msgpack_response(response)
                    version_label = response.model_version
                extra = [(b"content-type", _MSGPACK)]
            elif header_length_raw is None and (
                (served := self.manager.get(model, version)).fast_matrix
                and (fast := served.fast_rows(body, json_body=True)) is not None
            ):  # the common v2 JSON request: one FP32 [n, f_in] list, cached response pieces
                y = await self.manager.run(served, fast[0], fast[2], tag)
                out = served.json_response(y, fast[1])
                if out is None:  # non-finite outputs go out as binary data: the general encoder
                    request = codecs.InferRequest(fast[1], [], fast[2])
                    out, more = codecs.encode_json_response(served.response(y, request))
                    extra = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                             for k, v in more.items()]
                else:
                    extra = [(b"content-type", _JSON)]
                version_label = served.version
            else:
                header_length = (None if header_length_raw is None
                                 else _parse_length(header_length_raw))
                raw_input = None
                if header_length == 0:  # raw binary form: the body is the one [n, f_in] input
                    raw_input = self.manager.get(model, version).raw_input
                request = codecs.decode_json_request(body, header_length, raw_input=raw_input)
                response = await self.manager.infer(model, version, request, tag)
                out, more = codecs.encode_json_response(
                    response, binary=codecs.binary_outputs_of(request)
                )
                extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in
                         more.items()]
                if not any(k == b"content-type" for k, _ in extra):
                    extra.append((b"content-type", _JSON))
                version_label = response.model_version
            status = 200
            outcome = "ok"
        except Exception as exc:
            status, out, extra = error_response(exc)
            extra.append((b"content-type", _JSON))
            outcome = type(exc).__name__ if isinstance(exc, MlserveError) else "InternalError"
        extra.append((b"content-length", b"%d" % len(out)))
        extra.append((b"x-request-id", request_id))
        try:
            await send({"type": "http.response.start", "status": status, "headers": extra})
            await send({"type": "http.response.body", "body": out})
        finally:
            in_flight[label] -= 1
        elapsed = time.perf_counter() - started
        self._stats.record(label, version_label, outcome, elapsed)
        if self.access_log is not None:
            self.access_log.record(request_id, model, version_label, status, outcome, elapsed,
                                   scope.get("client"))

    # ---- lifespan ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.manager.expected.update(_model_name(ref) for ref in self.settings.models)
        self.manager.loop = asyncio.get_running_loop()  # requests run on this loop
        self._startup = asyncio.create_task(self._load_configured())
        publisher = (asyncio.create_task(self._publish_worker_snapshots())
                     if metrics.MULTIPROCESS else None)
        monitor = (asyncio.create_task(self.monitoring.run())
                   if self.monitoring is not None else None)
        log_task = (asyncio.create_task(self._run_prediction_log())
                    if self.prediction_log is not None else None)
        _watch_exit_signals()
        try:
            yield
        finally:
            self.manager.draining = True
            if publisher is not None:
                publisher.cancel()
            if log_task is not None:
                log_task.cancel()
            if monitor is not None and self.monitoring is not None:
                monitor.cancel()
                await self.monitoring.close(min(2.0, self.settings.shutdown_timeout_s))
            if not self._startup.done():
                self._startup.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._startup
            engines = [(name, version, served.engine)
                       for name, model in self.manager.models.items()
                       for version, served in model.versions.items()]
            await self.manager.close(self.settings.shutdown_timeout_s)
            if self.prediction_log is not None:  # the closed engines' last rows, the labels
                log, bound = self.prediction_log, self.settings.shutdown_timeout_s
                loop = asyncio.get_running_loop()
                end = time.monotonic() + bound  # one bound for waiting and writing
                # A retired version may still be finishing requests (its engine closes on the
                # loop when they are done): wait for it, then write everything.
                if not await loop.run_in_executor(None, log.wait_for_engines, bound / 2):
                    logger.warning("prediction log: an engine was still open after %g s; its "
                                   "last requests may be missing from the log", bound / 2)
                await loop.run_in_executor(None, log.close, max(0.1, end - time.monotonic()))
            if self.access_log is not None:  # the buffered lines of the last requests
                self.access_log.close()
            if publisher is not None:  # the final counts (closed engines keep them) stay summed
                try:
                    metrics.write_worker_snapshot(
                        lambda: [(n, v, e.stats()) for n, v, e in engines])
                    metrics.retire_worker_snapshot()
                except Exception:
                    logger.exception("could not write this worker's final metrics snapshot")
            self.manager.loop = None
            logger.info("shut down: engines closed")

    async def _load_configured(self) -> None:
        for ref in self.settings.models:
            try:
                served = await self.manager.load(ref)
                if self.monitoring is not None:  # log predictions from the first request on
                    self.monitoring.attach(served)
                self._log_predictions(served)
            except Exception:
                logger.exception("could not load model %s; the server stays not ready", ref)
        _freeze_heap()

    # ---- non-hot routes ---------------------------------------------------------------------

    async def _publish_worker_snapshots(self) -> None:
        """Multiprocess mode: this worker's engine stats and process metrics, into its snapshot
        file, every SNAPSHOT_INTERVAL_S (the worker answering /metrics sums all of them)."""
        while True:
            try:
                metrics.write_worker_snapshot(self._engine_stats)
            except OSError:
                logger.exception("could not write this worker's metrics snapshot")
            await asyncio.sleep(metrics.SNAPSHOT_INTERVAL_S)

    async def _metrics(self, request: Request) -> Response:
        source = self.monitoring.metric_source if self.monitoring is not None else None
        body, content_type = metrics.render(self._engine_stats, source)
        return Response(body, media_type=content_type)

    async def _monitoring(self, request: Request) -> Response:
        return await _guard(self._monitoring_body, request)

    async def _monitoring_body(self, request: Request) -> Response:
        monitoring = self._require_monitoring()
        histograms = request.query_params.get("histograms", "") in ("1", "true", "yes")
        return _json(monitoring.status(request.path_params["model"],
                                       request.path_params.get("version"), histograms))

    async def _feedback(self, request: Request) -> Response:
        return await _guard(self._feedback_body, request)

    async def _feedback_body(self, request: Request) -> Response:
        if self.prediction_log is None:
            self._require_monitoring()
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise InvalidInput("feedback body must be a JSON object with 'ids' and 'labels'")
        model, ids, labels = request.path_params["model"], body.get("ids"), body.get("labels")
        logged = None
        if self.prediction_log is not None:  # validated first: a bad label adds nothing
            logged = _label_rows(self.manager.model(model).versions.values(), ids, labels)
        answer: dict[str, Any] = ({} if self.monitoring is None
                                  else self.monitoring.feedback(model, ids, labels))
        if self.prediction_log is not None and logged is not None:
            answer["logged"] = self.prediction_log.add_labels(model, *logged)
        return _json(answer)

    # ---- the prediction log -------------------------------------------------------------------

    def _log_predictions(self, served: ServedVersion) -> None:
        """Starts logging ``served``'s requests (a no-op without a prediction log)."""
        if self.prediction_log is None:
            return
        engine = served.engine
        self.prediction_log.watch(served.name, served.version, engine,
                                  list(engine.plan.input_names), served.output_columns)

    async def _run_prediction_log(self) -> None:
        """Every flush interval: watch new versions (hot swaps, loads), write the log."""
        assert self.prediction_log is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.prediction_log.flush_s)
            try:
                for model in list(self.manager.models.values()):
                    for served in list(model.versions.values()):
                        if not served.engine.closed:
                            self._log_predictions(served)
                await loop.run_in_executor(None, self.prediction_log.flush)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("prediction log flush failed; trying again next interval")

    def _require_monitoring(self) -> ServerMonitoring:
        if self.monitoring is None:
            raise Unavailable("monitoring is off on this server (started with --no-monitoring, "
                              "several workers, or without scipy: pip install "
                              "'mlserve[monitoring]')")
        return self.monitoring

    def _engine_stats(self) -> list[tuple[str, str, dict[str, Any]]]:
        out = []
        for name, model in list(self.manager.models.items()):
            for version, served in list(model.versions.items()):
                if not served.engine.closed:
                    out.append((name, version, served.engine.stats()))
        return out

    async def _server_metadata(self, request: Request) -> Response:
        return _json({"name": "mlserve", "version": __version__, "extensions": EXTENSIONS})

    async def _live(self, request: Request) -> Response:
        return _json({"live": True})

    async def _ready(self, request: Request) -> Response:
        ready = self.manager.ready
        return _json({"ready": ready}, 200 if ready else 503)

    async def _model_metadata(self, request: Request) -> Response:
        return await _guard(self._model_metadata_body, request)

    async def _model_metadata_body(self, request: Request) -> Response:
        name = request.path_params["model"]
        served = self.manager.get(name, request.path_params.get("version"))
        versions = list(self.manager.model(name).versions)
        return _json(served.metadata(versions))

    async def _model_ready(self, request: Request) -> Response:
        return await _guard(self._model_ready_body, request)

    async def _model_ready_body(self, request: Request) -> Response:
        name = request.path_params["model"]
        served = self.manager.get(name, request.path_params.get("version"))
        ready = served.ready and not self.manager.draining
        body = {"name": name, "version": served.version, "ready": ready}
        return _json(body, 200 if ready else 503)

    async def _repository_index(self, request: Request) -> Response:
        return await _guard(self._repository_index_body, request)

    async def _repository_index_body(self, request: Request) -> Response:
        self._authorize(request)
        return _json(self.manager.index())

    async def _load(self, request: Request) -> Response:
        return await _guard(self._load_body, request)

    async def _load_body(self, request: Request) -> Response:
        self._authorize(request)
        name = request.path_params["model"]
        params = await _json_parameters(request)
        ref = params.get("ref")
        version = params.get("version")
        backend = params.get("backend")
        if ref is None:
            if version is not None:
                ref = f"{name}/{version}"
            else:
                model = self.manager.models.get(name)
                configured = [r for r in self.settings.models if _model_name(r) == name]
                ref = model.ref if model else (configured[0] if configured else name)
        if not isinstance(ref, str) or _model_name(ref) != name:
            raise InvalidInput(f"parameter 'ref' must be a ref of model {name!r}, got {ref!r}")
        if backend is not None:
            if not isinstance(backend, str):
                raise InvalidInput(f"parameter 'backend' must be a string, got {backend!r}")
            ref = f"{split_model_spec(ref)[0]}:{check_backend(backend)}"
        served = await self.manager.load(ref)
        if self.monitoring is not None:
            self.monitoring.attach(served)
        self._log_predictions(served)
        _freeze_heap()
        return _json({"name": served.name, "version": served.version, "ref": ref})

    async def _unload(self, request: Request) -> Response:
        return await _guard(self._unload_body, request)

    async def _unload_body(self, request: Request) -> Response:
        self._authorize(request)
        versions = await self.manager.unload(request.path_params["model"])
        return _json({"name": request.path_params["model"], "unloaded": versions})

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                  self._token):
            raise Unauthorized("admin routes need 'Authorization: Bearer <token>'")


def _prediction_log(settings: ServerSettings) -> PredictionLogWriter | None:
    if settings.prediction_log is None:
        return None
    from mlserve.predlog import PredictionLogWriter

    writer = PredictionLogWriter(settings.prediction_log, flush_s=settings.prediction_log_flush_s,
                                 sample=settings.prediction_log_sample)
    metrics.PREDICTION_LOG.writer = writer
    logger.info("prediction log: every %g s to %s", writer.flush_s, writer.location)
    return writer


def _label_rows(versions: Iterable[ServedVersion], ids: Any, labels: Any
                ) -> tuple[list[str], list[list[Any]]]:
    """The feedback's labels, one list per id (the last labels of an id given twice): what
    the prediction log stores, as given (a class, or a number), coded when read with the
    classes of the version reported on. A label must fit at least one loaded version of the
    model (a class of its bundle, or a finite number for regression): InvalidInput otherwise,
    before anything is stored. The rows per request are not known here (the log joins them)."""
    from mlserve.drift.performance import label_codes

    if not isinstance(ids, list) or not isinstance(labels, list) or len(ids) != len(labels):
        raise InvalidInput("feedback needs 'ids' and 'labels': lists of the same length")
    if len(ids) > 100_000:
        raise InvalidInput("feedback takes at most 100000 ids per request")
    kinds = set()
    for served in versions:
        manifest = served.engine.bundle.manifest if served.engine.bundle is not None else {}
        classes = manifest.get("classes")
        kinds.add((str(manifest.get("task", "binary")),
                   tuple(classes) if classes is not None else None))
    if any(isinstance(i, bool) or not isinstance(i, (str, int)) for i in ids):
        raise InvalidInput("feedback ids must be strings (the x-request-id of each request)")
    last = {str(ident): i for i, ident in enumerate(ids)}
    rows = [labels[i] if isinstance(labels[i], list) else [labels[i]] for i in last.values()]
    values = {(type(v).__name__, str(v)): v for r in rows for v in r}
    for value in values.values():
        errors = []
        for task, classes in sorted(kinds, key=str):
            try:
                label_codes(task, classes, [value])
                break
            except InvalidInput as exc:
                errors.append(str(exc))
        else:
            raise InvalidInput(errors[0] if errors else f"feedback label {value!r} fits no "
                               "loaded version of this model")
    return list(last), rows


def _monitoring(manager: ModelManager, settings: ServerSettings) -> ServerMonitoring | None:
    """The server's monitoring, or None (with one log line saying why) when it is off."""
    if not settings.monitoring:
        return None
    if settings.workers > 1:
        logger.warning("monitoring is off: with --workers %d each process would see only its "
                       "share of the traffic and feedback could not find its prediction; "
                       "serve with --workers 1 to monitor", settings.workers)
        return None
    try:
        # The p-values' distributions, imported now: importing scipy.stats takes about half a
        # second holding the GIL, which the first tick would otherwise take from requests.
        import scipy.stats  # noqa: F401
    except ImportError:
        logger.warning("monitoring is off: it needs scipy (pip install 'mlserve[monitoring]')")
        return None
    return ServerMonitoring(manager, settings.monitoring_config())


def create_app(manager: ModelManager, settings: ServerSettings) -> MlserveApp:
    """The ASGI app serving ``manager``'s models with ``settings``."""
    return MlserveApp(manager, settings)


def app_from_env() -> MlserveApp:
    """Factory for uvicorn's ``--factory`` import string: settings from ``MLSERVE_SERVER_*``
    (and mlserve's log lines at the parent's ``--log-level``, ``MLSERVE_SERVER_LOG_LEVEL``)."""
    import logging
    import os

    level = os.environ.get("MLSERVE_SERVER_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(levelname)s %(name)s: %(message)s")
    settings = ServerSettings.from_env()
    manager = ModelManager(settings.registry, config=settings.batcher_config(),
                           backend=settings.backend, device=settings.device,
                           feature_store=settings.feature_store)
    return create_app(manager, settings)


# ---- helpers ----------------------------------------------------------------------------------


async def _guard(handler: Callable[[Request], Awaitable[Response]], request: Request) -> Response:
    try:
        return await handler(request)
    except Exception as exc:
        status, body, headers = error_response(exc)
        return Response(
            body, status, headers={k.decode(): v.decode() for k, v in headers},
            media_type="application/json",
        )


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


async def _json_body(request: Request) -> Any:
    """The request's JSON body (None when empty); InvalidInput when not JSON."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None


async def _json_parameters(request: Request) -> dict[str, Any]:
    body = await _json_body(request)
    if body is None:
        return {}
    params = body.get("parameters", {}) if isinstance(body, dict) else None
    if not isinstance(params, dict):
        raise InvalidInput("request body must be a JSON object with an object 'parameters'")
    return params


def _infer_target(path: str) -> tuple[str, str | None] | None:
    parts = path.split("/")
    # ["", "v2", "models", m, "infer"] or ["", "v2", "models", m, "versions", v, "infer"]
    if len(parts) == 5 and parts[1] == "v2" and parts[2] == "models" and parts[3]:
        return parts[3], None
    if (len(parts) == 7 and parts[1] == "v2" and parts[2] == "models" and parts[3]
            and parts[4] == "versions" and parts[5]):
        return parts[3], parts[5]
    return None


_MAX_CACHED_TARGETS = 1024

_ID_PREFIX = uuid.uuid4().hex[:12].encode()
_ID_COUNTER = itertools.count(1)


def _request_id(scope: Scope) -> bytes:
    for key, value in scope["headers"]:
        if key == b"x-request-id" and value:
            return bytes(value[:128])
    return b"%s-%x" % (_ID_PREFIX, next(_ID_COUNTER))  # unique per process, no uuid4 cost


def _parse_length(raw: bytes) -> int:
    if raw[:1] == b"-" and raw[1:].isdigit():
        raise InvalidInput("Inference-Header-Content-Length must not be negative")
    if not raw.isdigit() or len(raw) > 18:  # int() would also take "5_0", " 5" or "+5"
        raise InvalidInput("Inference-Header-Content-Length must be a decimal integer, got "
                           f"{raw[:40]!r}")
    return int(raw)


async def _read_body(receive: Receive, declared: bytes | None, limit: int,
                     first: Message | None = None) -> bytes:
    """The whole request body; ``declared`` is its Content-Length header, if any; ``first``
    the first message when the caller already received it."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {int(declared)} bytes exceeds {limit} bytes")
    if first is None:
        first = await receive()  # commonly the whole body in one message
    if first["type"] == "http.request" and not first.get("more_body", False):
        body: bytes = first.get("body", b"")
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        return body
    message: Message | None = first
    chunks: list[bytes] = []
    size = 0
    while True:
        if message is None:
            message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
        message = None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _freeze_heap() -> None:
    """Moves every object alive after start-up (modules, models, sessions) out of the garbage
    collector's generations (``gc.freeze``), so the full collections that request garbage
    triggers walk only what requests allocated. Objects frozen here are still freed by
    reference counting; only reference cycles among them would stay (none are expected)."""
    gc.collect()
    gc.freeze()


def _watch_exit_signals() -> None:
    """Chains a hook before uvicorn's SIGTERM/SIGINT handlers: /ready turns 503 at once, while
    uvicorn stops accepting and drains. uvicorn restores its saved handlers when it exits."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            mark_draining()
            previous(signum, frame)

        signal.signal(sig, handler)


def _model_name(ref: str) -> str:
    """The model name of ``REF[:BACKEND]``; a bundle directory's is in its manifest."""
    from mlserve.bundle import is_bundle_path
    from mlserve.server.models import BundleSource

    plain = split_model_spec(ref)[0]
    if is_bundle_path(plain):
        return BundleSource.read(plain).name
    return plain.split("@", 1)[0].split("/", 1)[0]
