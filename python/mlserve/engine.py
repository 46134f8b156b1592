"""Engine: one model version ready to serve — a FeaturePlan, a dynamic batcher, a backend.

The one interface the HTTP server, the Python API and batch jobs share. Three ways in:

- ``predict(x)``: synchronous; waits in C++ with the GIL released.
- ``submit(x)``: returns a ``concurrent.futures.Future``.
- ``await apredict(x)``: asyncio; completions reach the loop through the core's eventfd, one
  wake-up completing every request that finished (no thread hop per request). The core keeps
  each request's future and sets its result itself (``submit_future``/``complete_futures``):
  no Python dict, tuple or call per request on the way back.

Thread-safety: every method may be called from any thread. ``close()`` is idempotent.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import select
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from mlserve import _core
from mlserve.backends import onnxruntime_fn, torch_cuda_fn, torch_fn
from mlserve.config import BatcherConfig
from mlserve.errors import InvalidInput, Unavailable
from mlserve.gpu import canonical_backend, require_device
from mlserve.plan import FeaturePlan, PlanSource

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Backends built into the core (no model): host rows, and the GPU pipeline's own output.
_CORE_BACKENDS = ("noop", "rowsum", "normalize-cuda")
#: Backends that run on the core's CUDA pipeline (the batch is normalized on the GPU).
_GPU_BACKENDS = ("torch-cuda", "tensorrt", "python-cuda", "normalize-cuda")
#: Engine(normalize_kernel=...): the GPU normalize kernels (docs/gpu.md).
NORMALIZE_KERNELS = ("", "generic", "jit", "jit-tma", "auto")
BACKENDS = ("python", "onnxruntime", "cpu", "torch", "torch-cuda", "tensorrt", "python-cuda",
            "noop", "rowsum", "normalize-cuda")

_open_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
#: Batches one inline run may execute before the loop serves other work again.
_INLINE_MAX_BATCHES = 4

AnyFuture = asyncio.Future[np.ndarray] | concurrent.futures.Future[np.ndarray]


class Engine:
    """Serve one model version: ``Engine(plan, model, backend=..., config=...)``.

    Args:
        plan: a :class:`FeaturePlan` or anything it accepts (dict, JSON string, path).
        model: for ``backend="python"`` a callable ``fn(batch) -> array``; for
            ``"onnxruntime"`` (alias ``"cpu"``) a path to (or the bytes of) an ONNX model; for
            ``"torch"`` and ``"torch-cuda"`` a path to a TorchScript file; for ``"tensorrt"``
            a path to a serialized TensorRT engine; for ``"python-cuda"`` a callable
            ``fn(batch: mlserve._core.DeviceBatch) -> DLPack array`` run on the GPU pipeline;
            nothing for the core's ``"noop"``, ``"rowsum"`` and ``"normalize-cuda"``.
        backend: one of :data:`BACKENDS`; a callable given as ``model`` implies ``python``.
            ``torch-cuda``, ``tensorrt``, ``python-cuda`` and ``normalize-cuda`` place the
            model on GPU ``device``: each instance gets its own CUDA stream and page-locked
            buffers, the batch is normalized there by the CUDA kernel and the model runs on the
            normalized device rows (docs/gpu.md). Without a usable GPU they raise Unavailable.
        config: batching options (:class:`BatcherConfig`).
        histograms: count drift histograms while normalizing (features that declare one).
        name, version: labels for stats and errors.
        device: CUDA device of the GPU backends.
        cuda_graphs: capture each batch size's copy + normalize sequence into a CUDA graph (and,
            on ``torch-cuda``, the model's launches too: see backends.torch_cuda_fn).
        normalize_kernel: the GPU normalize kernel, ``"generic"``, ``"jit"`` (the plan compiled
            by NVRTC at load; fails when it cannot be), ``"jit-tma"`` (the same with Hopper bulk
            copies) or ``"auto"`` (jit-tma where it builds, else jit, else generic); ``""``
            reads MLSERVE_CUDA_KERNEL, else auto (docs/gpu.md).
    """

    def __init__(
        self,
        plan: FeaturePlan | PlanSource,
        model: Any = None,
        *,
        backend: str | None = None,
        config: BatcherConfig | None = None,
        histograms: bool = True,
        name: str = "model",
        version: str = "1",
        device: int = 0,
        cuda_graphs: bool = True,
        normalize_kernel: str = "",
    ) -> None:
        self.plan = plan if isinstance(plan, FeaturePlan) else FeaturePlan(plan)
        self.config = config or BatcherConfig()
        self.name = name
        self.version = version
        if backend is None:
            backend = "python" if callable(model) else "onnxruntime"
        if backend not in BACKENDS:
            raise InvalidInput(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.device = device if backend in _GPU_BACKENDS else None
        if self.device is not None:
            require_device(device, backend=backend)  # before loading anything onto a GPU
        self.cuda_graphs = cuda_graphs
        if normalize_kernel not in NORMALIZE_KERNELS:
            raise InvalidInput(f"normalize_kernel must be one of {', '.join(NORMALIZE_KERNELS)} "
                               f"(or '' for MLSERVE_CUDA_KERNEL), got {normalize_kernel!r}")
        fn = self._make_fn(canonical_backend(backend), model)
        self._fn = fn  # the backend callable (None for the core's own backends)
        if backend in _CORE_BACKENDS:
            core_backend = backend
        else:
            core_backend = "python-cuda" if backend in _GPU_BACKENDS else "python"
        self._batcher = _core.DynamicBatcher(
            self.plan,
            core_backend,
            fn,
            histograms=histograms,
            device=device,
            cuda_graphs=cuda_graphs,
            name=backend,
            normalize_kernel=normalize_kernel,
            **self.config.core_kwargs(),
        )
        self._fd: int = self._batcher.completion_fd()
        self._lock = threading.Lock()
        self._loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._last_loop: asyncio.AbstractEventLoop | None = None
        #: Inline execution bound in ns (0: off); device backends always run on their workers.
        self._inline_ns = (self.config.inline_max_compute_us * 1000
                           if backend not in _GPU_BACKENDS else 0)
        self._inline_pending: set[asyncio.AbstractEventLoop] = set()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._closed = False
        self._close_on_thread = False
        self._final_stats: dict[str, Any] | None = None  # the counters at close
        #: What the prediction export held at close (drained once more after it).
        self._final_export: dict[str, Any] | None = None
        #: The bundle this engine serves, when built by from_bundle/from_registry.
        self.bundle: Any = None
        _open_engines.add(self)

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        *,
        backend: str = "onnxruntime",
        config: BatcherConfig | None = None,
        histograms: bool = True,
        device: int = 0,
        cuda_graphs: bool = True,
        normalize_kernel: str = "",
        registered: Any = None,
    ) -> Engine:
        """Serves a bundle directory (docs/bundle.md) after verifying its checksums.

        backend: "cpu"/"onnxruntime" runs model.onnx, "torch" model.pt (TorchScript) on the
        CPU, "torch-cuda" model.pt on GPU ``device``, "tensorrt" the engine model.plan made by
        ``mlserve build-engine`` on GPU ``device``. ``registered``: the registry's manifest of
        the version, which the bundle's ``mlserve.json`` must equal (from_registry passes it).
        """
        from mlserve.bundle import BACKEND_ARTIFACTS, ModelBundle

        bundle = ModelBundle.load(path, registered=registered)
        if backend not in BACKEND_ARTIFACTS:
            bundle.model_for(backend)  # raises InvalidInput naming the bundle backends
        if backend in _GPU_BACKENDS:
            require_device(device, backend=backend)  # the first thing a GPU backend checks
        model = bundle.model_for(backend)
        if backend == "tensorrt":
            from mlserve.tensorrt_engine import check_engine_info

            check_engine_info(bundle.artifacts[model.name], device)
        engine = cls(
            bundle.plan(),
            model,
            backend=backend,
            config=config,
            histograms=histograms,
            name=bundle.name,
            version=str(bundle.version if bundle.version is not None else 0),
            device=device,
            cuda_graphs=cuda_graphs,
            normalize_kernel=normalize_kernel,
        )
        engine.bundle = bundle
        return engine

    @classmethod
    def from_registry(
        cls,
        ref: str,
        *,
        registry: Any = None,
        backend: str = "onnxruntime",
        config: BatcherConfig | None = None,
        histograms: bool = True,
        device: int = 0,
        cuda_graphs: bool = True,
        normalize_kernel: str = "",
    ) -> Engine:
        """Serves a registered model: ``NAME`` (latest ready), ``NAME/3`` or ``NAME@alias``.

        registry: a ``mlserve.registry.Registry``, its root path, or None for the default root.
        backend, device: as for :meth:`from_bundle`.
        """
        from mlserve.bundle import retry_on_mismatch
        from mlserve.registry import Registry

        reg = registry if isinstance(registry, Registry) else Registry(registry)

        def load() -> Engine:
            version = reg.resolve(ref)
            return cls.from_bundle(version.path, backend=backend, config=config,
                                   histograms=histograms, device=device,
                                   cuda_graphs=cuda_graphs, normalize_kernel=normalize_kernel,
                                   registered=version.manifest)

        return retry_on_mismatch(load)

    def _make_fn(self, backend: str, model: Any) -> Callable[[Any], Any] | None:
        if backend == "python":
            if not callable(model):
                raise InvalidInput("backend 'python' needs a callable model: fn(batch) -> array")
            return model  # type: ignore[no-any-return]
        if backend == "onnxruntime":
            if model is None:
                raise InvalidInput("backend 'onnxruntime' needs the path of an .onnx model")
            return onnxruntime_fn(model, self.plan.f_out)
        if backend in ("torch", "torch-cuda"):
            if model is None:
                raise InvalidInput(f"backend {backend!r} needs the path of a TorchScript .pt model")
            if backend == "torch":
                return torch_fn(model)
            return torch_cuda_fn(model, self.device or 0, cuda_graphs=self.cuda_graphs)
        if backend == "tensorrt":
            if model is None:
                raise InvalidInput("backend 'tensorrt' needs the path of a TensorRT engine")
            from mlserve.tensorrt_engine import tensorrt_fn

            return tensorrt_fn(model, f_out=self.plan.f_out,
                               max_batch_size=self.config.max_batch_size, device=self.device or 0)
        if backend == "python-cuda":
            if not callable(model):
                raise InvalidInput(
                    "backend 'python-cuda' needs a callable model: fn(batch: DeviceBatch) -> "
                    "DLPack array on the batch's device"
                )
            return model  # type: ignore[no-any-return]
        if model is not None:
            raise InvalidInput(f"backend {backend!r} is built into the core and takes no model")
        return None

    # ---- inference -------------------------------------------------------------------------

    def predict(
        self, x: Any, *, priority: int = 0, timeout_us: int | None = None
    ) -> np.ndarray:
        """Runs ``x`` (float32 ``[rows, f_in]``) through the model; blocks until done."""
        return self._batcher.predict(x, priority, -1 if timeout_us is None else timeout_us)

    def predict_many(
        self, xs: Sequence[Any], *, priority: int = 0, timeout_us: int | None = None
    ) -> list[np.ndarray]:
        """Runs every array of ``xs`` (each ``[rows, f_in]``) and returns their outputs in order.

        All are queued at once and waited for with the GIL released: the cheapest way to keep
        the model busy from one thread (batch jobs, bulk scoring). The first error (e.g.
        QueueFull, DeadlineExceeded) is raised after every queued request finished; use
        ``submit`` to handle errors per request.
        """
        timeout = -1 if timeout_us is None else timeout_us
        return self._batcher.predict_many(list(xs), priority, timeout)

    def submit(
        self, x: Any, *, priority: int = 0, timeout_us: int | None = None
    ) -> concurrent.futures.Future[np.ndarray]:
        """Queues ``x`` and returns a future; cancelling the future removes a queued request."""
        fut = _RequestFuture(self)
        self._ensure_thread()
        fut.request_id = self._submit_async(x, priority, timeout_us, fut, None)
        return fut

    async def apredict(
        self, x: Any, *, priority: int = 0, timeout_us: int | None = None, tag: bytes = b"",
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> np.ndarray:
        """``predict`` for asyncio: awaits the result without blocking the loop.

        tag: the caller's id of the request; when the prediction log is on
        (:meth:`configure_monitoring`) the outputs are logged under it for
        :meth:`find_predictions`.
        loop: the running loop, when the caller holds it (the server does): spares
        ``asyncio.get_running_loop()``, which on Python 3.11 makes a getpid system call each
        time. Passing another loop than the running one is an error the engine cannot detect.
        """
        loop = self._serving_loop(loop)
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        inline = self._inline_ns > 0
        rid = self._submit_async(x, priority, timeout_us, fut, loop, tag, inline)
        if inline:
            self._schedule_inline(loop)
        return await self._result(fut, rid)

    async def apredict_msgpack(
        self, body: bytes, lane: Any, *, tag: bytes = b"",
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> bytes | None:
        """The server's msgpack fast lane: ``lane`` (a ``_core.MsgpackLane`` of this model)
        parses, checks and submits ``body`` in the core, and the result is the encoded response
        body. None, with nothing submitted, when the body is not the lane's request (the caller
        decodes it itself). Raises as :meth:`apredict`."""
        loop = self._serving_loop(loop)
        if self._closed:
            raise Unavailable(f"engine {self.name!r} is closed")
        fut: asyncio.Future[bytes] = loop.create_future()
        inline = self._inline_ns > 0
        rid = self._batcher.submit_msgpack(body, lane, tag, fut, loop, inline)
        if rid is None:
            return None
        if inline:
            self._schedule_inline(loop)
        return await self._result(fut, rid)

    async def _result(self, fut: asyncio.Future[_T], rid: int) -> _T:
        """The result of submitted request ``rid``; a cancelled caller takes it out of the
        queue (or lets its running batch finish without it)."""
        try:
            return await fut
        except asyncio.CancelledError:
            self._cancel(rid)
            raise

    def _serving_loop(self, loop: asyncio.AbstractEventLoop | None
                      ) -> asyncio.AbstractEventLoop:
        """``loop`` (else the running loop), attached to this engine's completions."""
        if loop is None:
            loop = asyncio.get_running_loop()
        if loop is not self._last_loop:  # a WeakSet lookup only when the loop changes
            if loop not in self._loops:
                self._attach(loop)
            self._last_loop = loop
        return loop

    def _submit_async(self, x: Any, priority: int, timeout_us: int | None, fut: AnyFuture,
                      loop: asyncio.AbstractEventLoop | None, tag: bytes = b"",
                      inline: bool = False) -> int:
        # The core registers the future in the same call that queues the request (under the
        # GIL), so a completion never arrives unregistered; no Python lock or dict per request.
        if self._closed:
            raise Unavailable(f"engine {self.name!r} is closed")
        rid: int = self._batcher.submit_future(
            x, priority, -1 if timeout_us is None else timeout_us, tag, fut, loop, inline)
        return rid

    def _run_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        """Runs the queued batches on this (the loop's) thread, then completes their futures;
        the core hands them to the workers instead when it cannot or should not
        (``BatcherConfig.inline_max_compute_us``)."""
        self._inline_pending.discard(loop)
        if self._closed:
            return
        # Not under self._lock: the backend runs here and may call back into the engine (stats,
        # close). A close() on another thread meanwhile is safe: the call keeps the core's
        # batcher alive until it returns, and close() completes the leftover futures.
        try:
            ran = self._batcher.run_ready(_INLINE_MAX_BATCHES, self._inline_ns)
        except Unavailable:  # released by close() before the call
            return
        self._dispatch(loop)
        if ran == _INLINE_MAX_BATCHES:  # more may be queued: after the loop's other ready work
            self._schedule_inline(loop)

    def _schedule_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        """One pending inline run per loop: it runs after the callbacks already ready in this
        iteration (the other requests' submits), so they share its batch."""
        if loop not in self._inline_pending:
            self._inline_pending.add(loop)
            loop.call_soon(self._run_inline, loop)

    def _cancel(self, rid: int) -> None:
        with self._lock:
            if not self._batcher.closed:
                self._batcher.forget_future(rid)
                self._batcher.cancel(rid)

    # ---- completion dispatch -------------------------------------------------------------------

    def _dispatch(self, running: asyncio.AbstractEventLoop | None = None) -> None:
        """Completes every finished request (runs in a loop reader or the thread): the core
        completes the running loop's futures itself; the others are completed here, each
        thread-safely. ``running``: the loop running this call, when the caller knows it
        (else looked up)."""
        with self._lock:
            if self._batcher.closed:
                return
            rest = self._batcher.complete_futures(running or _running_loop())
        for fut, loop, res, cls, msg in rest:
            if loop is None:
                _complete(fut, res, cls, msg)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_complete, fut, res, cls, msg)

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._closed:
                raise Unavailable(f"engine {self.name!r} is closed")
            if loop not in self._loops:
                loop.add_reader(self._fd, self._dispatch, loop)
                self._loops.add(loop)

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(
                target=self._thread_main, name=f"mlserve-completions-{self.name}", daemon=True
            )
            self._thread.start()

    def _thread_main(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            self._dispatch()
            if self._closed and self._close_on_thread:
                # close() ran inside a done-callback on this thread: nobody joins us; tidy up.
                os.close(self._wake_r)
                os.close(self._wake_w)
                return

    # ---- introspection and lifecycle -------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters since creation: requests, rows, batches, rejected, timed_out, failed, ...,
        and the latency histograms (docs/python_api.md). After close, the final values."""
        with self._lock:
            final = self._final_stats
            s: dict[str, Any] = dict(final) if final is not None else self._batcher.stats()
        s.update(name=self.name, version=self.version, backend=self.backend)
        if self.device is not None:
            s["device"] = self.device
        return s

    def histograms(self, reset: bool = False) -> dict[str, Any]:
        """Drift histograms counted while normalizing (see FeaturePlan.histograms)."""
        return self._batcher.histograms(reset)

    def configure_monitoring(
        self,
        *,
        sample_rows: int = 0,
        prediction_edges: Sequence[float] = (),
        prediction_argmax: bool = False,
        seed: int = 0,
        log_entries: int = 0,
        log_max_age_s: float = 0.0,
    ) -> None:
        """Turns on (or off, with zeros) what the core records per executed batch for
        monitoring, and clears what it recorded: a uniform sample of at most ``sample_rows``
        rows (raw input and output) with the histogram of the prediction (output column 0 in
        ``prediction_edges``, or the argmax column), and the prediction log (the outputs of the
        last ``log_entries`` requests submitted with a ``tag``, none older than
        ``log_max_age_s``; 0 = no age bound)."""
        self._batcher.configure_monitor(
            sample_rows, [float(e) for e in prediction_edges], prediction_argmax, seed,
            log_entries, log_max_age_s,
        )

    def sample(self, reset: bool = True) -> dict[str, Any]:
        """The rows recorded since the last reset: ``seen`` (rows executed), ``inputs``
        float32 [m, f_in] and ``outputs`` [m, width] (a uniform sample, m <= sample_rows),
        ``prediction_counts`` and ``prediction_missing`` (NaN predictions)."""
        out: dict[str, Any] = self._batcher.sample(reset)
        return out

    def find_predictions(
        self, tags: Sequence[bytes | str]
    ) -> list[tuple[float, np.ndarray] | None]:
        """For each tag, (unix seconds, outputs [rows, width]) from the prediction log, or None
        (never logged, or dropped by retention)."""
        found: list[tuple[float, np.ndarray] | None] = self._batcher.find_predictions(list(tags))
        return found

    def configure_prediction_export(self, max_rows: int, sample: float = 1.0) -> None:
        """Buffers the raw inputs and outputs of requests submitted with a ``tag``, at most
        ``max_rows`` rows until :meth:`drain_prediction_export` takes them (0: off; requests
        that do not fit are dropped and counted). ``sample`` in (0, 1]: the share of requests
        kept, chosen by a fixed hash of the tag (FNV-1a + fmix64), so one request id is kept or left
        out alike everywhere. The server's durable prediction log (:mod:`mlserve.predlog`)
        drains it."""
        self._batcher.configure_prediction_export(max_rows, sample)

    def drain_prediction_export(self) -> dict[str, Any]:
        """What was buffered since the last drain: ``tags`` (bytes, one per request),
        ``unix_ns`` and ``rows`` (per request), ``inputs`` float32 [n, f_in] and ``outputs``
        [n, width] (per row, request after request), ``dropped_requests``/``dropped_rows``.
        After :meth:`close`, what was left at close, once (then nothing)."""
        with self._lock:
            if self._final_stats is not None:  # released: what close() drained
                out, self._final_export = self._final_export, None
                return out if out is not None else _empty_export()
            drained: dict[str, Any] = self._batcher.drain_prediction_export()
            return drained

    def hold_batching(self, min_queued: int) -> None:
        """Test hook: form no batch until ``min_queued`` requests are queued (0 releases)."""
        self._batcher.hold_until_queued(min_queued)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def released(self) -> bool:
        """Whether :meth:`close` has finished: nothing runs any more, counters are final."""
        return self._final_stats is not None

    def close(self, drain: bool = True) -> None:
        """Stops the engine. drain=True finishes queued requests; False fails them (Unavailable).

        Every pending future is completed before this returns; the model is released.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._batcher.shutdown(drain)  # joins the workers; completions are still readable
        self._dispatch()
        if self._thread is threading.current_thread():
            self._close_on_thread = True  # a done-callback closed us; the thread exits itself
        elif self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
            os.close(self._wake_r)
            os.close(self._wake_w)
        for loop in list(self._loops):
            _remove_reader(loop, self._fd)
        with self._lock:
            leftover = self._batcher.take_futures()
            self._final_stats = self._batcher.stats()
            self._final_export = self._batcher.drain_prediction_export()
            self._batcher.release()
        message = f"engine {self.name!r} closed before the request ran"
        running = _running_loop()
        for fut, loop in leftover:
            if loop is None or loop is running:
                _complete(fut, None, Unavailable, message)
            elif not loop.is_closed():  # nobody can await a future of a closed loop
                loop.call_soon_threadsafe(_complete, fut, None, Unavailable, message)
        _open_engines.discard(self)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        where = "" if self.device is None else f", device=cuda:{self.device}"
        return f"Engine({self.name}/{self.version}, backend={self.backend}{where}, {state})"


class _RequestFuture(concurrent.futures.Future[np.ndarray]):
    """A future whose ``cancel()`` also removes the request from the engine's queue."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self._engine = engine
        self.request_id = -1

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled and self.request_id >= 0:
            self._engine._cancel(self.request_id)
        return cancelled


def _complete(fut: AnyFuture, res: Any, cls: Any, msg: Any) -> None:
    if fut.done():
        return
    try:
        if cls is None:
            fut.set_result(res)
        else:
            fut.set_exception(cls(msg))
    except (asyncio.InvalidStateError, concurrent.futures.InvalidStateError):
        pass  # cancelled between the check and the set


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _remove_reader(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    if loop.is_closed():
        return
    if _running_loop() is loop:
        loop.remove_reader(fd)
    else:
        loop.call_soon_threadsafe(loop.remove_reader, fd)


@atexit.register
def _close_all() -> None:
    # Worker threads must not call into an interpreter that is finalizing.
    for engine in list(_open_engines):
        engine.close(drain=False)


def _empty_export() -> dict[str, Any]:
    """An empty :meth:`Engine.drain_prediction_export` answer."""
    return {"tags": [], "unix_ns": np.zeros(0, np.int64), "rows": np.zeros(0, np.int64),
            "inputs": np.zeros((0, 0), np.float32), "outputs": np.zeros((0, 0), np.float32),
            "dropped_requests": 0, "dropped_rows": 0}
