"""ModelManager: the model versions one server process serves, loaded from the registry.

``load(ref)`` resolves a registry ref (``fraud@champion``, ``fraud/2``, ``fraud``), builds an
:class:`~mlserve.Engine` off the event loop, warms it up with one row and only then publishes
it, so a request never meets a cold engine. The version the ref resolved to becomes the model's
default (what ``/v2/models/{m}`` serves). Loading the same ref again after its alias moved is a
hot swap: the new version is published in one dict assignment, requests already running finish
on the old engine, and the old engine closes (drain=True) once its in-flight count reaches zero.

:class:`ServedVersion` also turns decoded request tensors into the plan's raw float32 rows
(:meth:`ServedVersion.rows`) and the engine's output into response tensors. A version whose
bundle was trained on a feature service is a :class:`FeatureServedVersion`: requests may carry
entity keys, whose online features it reads through a :class:`~mlserve.features.ServiceReader`
prepared once per service version at load (from ``--feature-store`` or
``$MLSERVE_FEATURE_STORE``; a model needing a store that is not configured fails to load).
Other models pay nothing for this: their versions are plain :class:`ServedVersion` objects.

Concurrency: every mutation runs on the event loop (no awaits between a check and its update),
so lookups are plain dict reads; blocking work (registry reads, checksum verification, model
sessions, engine shutdown) runs in the loop's default executor.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import orjson

from mlserve import _core, metrics
from mlserve._objectstore import is_uri
from mlserve.bundle import ManifestMismatch, is_bundle_path
from mlserve.categories import CategoryEncoder
from mlserve.config import BatcherConfig
from mlserve.engine import Engine
from mlserve.errors import DefinitionNotFound, InvalidInput, ModelNotFound, Unavailable
from mlserve.features import FeatureStore, ServiceReader
from mlserve.features._settings import ROOT_ENV, configured_root
from mlserve.gpu import canonical_backend
from mlserve.server.codecs import (
    FP32_OVERFLOW,
    InferRequest,
    InferResponse,
    Tensor,
    TensorSpec,
    all_finite,
    fast_json_rows,
    fast_msgpack_rows,
)
from mlserve.server.feature_join import OnlineFeatureJoin, lineage_service
from mlserve.server.settings import split_model_spec

logger = logging.getLogger(__name__)
_SUM = np.add.reduce

#: v2 datatype of each signature input dtype.
_SIGNATURE_DATATYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "string": "BYTES"}
_NUMERIC_DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
     "FP32", "FP64"}
)
_FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
_MSGPACK_ID_KEY = msgpack.packb("id")
_MSGPACK_DATA_KEY = msgpack.packb("data")


@dataclass
class _Column:
    """One raw input of the signature, prepared for fast row building."""

    name: str
    index: int
    kind: str
    nullable: bool
    encoder: CategoryEncoder | None
    """Categorical inputs: vocabulary, valid codes and unknown-category policy."""


class ServedVersion:
    """One loaded model version: its engine, signature and in-flight request count."""

    def __init__(self, engine: Engine, name: str, version: str, ref: str) -> None:
        self.engine = engine
        self.name = name
        self.version = version
        self.ref = ref
        #: Where it was loaded from when that is not a registry version (a bundle directory's
        #: path and manifest sha256): a load of other content under the same name/version
        #: builds a new engine.
        self.source: str | None = None
        signature = engine.bundle.signature if engine.bundle is not None else {}
        self.inputs: list[dict[str, Any]] = list(signature.get("inputs") or [])
        self.outputs: list[dict[str, Any]] = list(signature.get("outputs") or []) or [
            {"name": "output", "dtype": "float32", "shape": [-1, -1]}
        ]
        self.f_in = engine.plan.f_in
        if len(self.inputs) != self.f_in:
            raise InvalidInput(
                f"model {name}/{version}: signature has {len(self.inputs)} inputs but the plan "
                f"takes {self.f_in}; re-export the bundle"
            )
        encoders = engine.bundle.category_encoders() if engine.bundle is not None else []
        self.columns = [
            _Column(
                name=str(spec["name"]),
                index=j,
                kind=str(spec.get("kind", "numeric")),
                nullable=bool(spec.get("nullable", True)),
                encoder=encoders[j],
            )
            for j, spec in enumerate(self.inputs)
        ]
        #: Categoricals whose codes in the matrix form are checked against their policy.
        self._policed = [
            c for c in self.columns if c.encoder is not None and c.encoder.checks_codes
        ]
        self.by_name = {c.name: c for c in self.columns}
        self._non_nullable = np.array([not c.nullable for c in self.columns], dtype=bool)
        self._any_non_nullable = bool(self._non_nullable.any())
        #: The input of Triton's raw binary form (``Inference-Header-Content-Length: 0``).
        self.raw_input = TensorSpec("rows", "FP32", (-1, self.f_in))
        #: Whether a lone FP32 [n, f_in] tensor is always the row matrix (the msgpack fast lane;
        #: see _is_matrix for the one exception).
        self.fast_matrix = not (self.f_in == 1 and self.columns[0].kind != "numeric")
        self._packed_shapes: dict[tuple[int, ...], bytes] = {}
        self._msgpack_names = b"".join(
            msgpack.packb(v) for v in ("model_name", name, "model_version", version)
        )
        self._json_names = (b'{"model_name":' + orjson.dumps(name) + b',"model_version":'
                            + orjson.dumps(version))
        self._msgpack_output = self._json_output = None
        if len(self.outputs) == 1:
            self._msgpack_output = b"".join(
                [msgpack.packb("outputs"), b"\x91\x84"]
                + [msgpack.packb(v) for v in ("name", str(self.outputs[0]["name"]),
                                              "datatype", "FP32", "shape")]
            )
            output_name = orjson.dumps(str(self.outputs[0]["name"]))
            self._json_output = (b',"outputs":[{"name":' + output_name
                                 + b',"datatype":"FP32","shape":')
        #: The msgpack fast lane in the core (csrc/server/msgpack_lane.h: parse, check and
        #: submit in one call, the response encoded at completion), for the models whose matrix
        #: form needs no Python check: one output, no categorical codes to police.
        self.msgpack_lane: Any = None
        if self.fast_matrix and not self._policed and self._msgpack_output is not None:
            self.msgpack_lane = _core.MsgpackLane(
                self.f_in, [not c.nullable for c in self.columns], b"\x83" + self._msgpack_names,
                b"\x84" + self._msgpack_names + _MSGPACK_ID_KEY, self._msgpack_output,
                _MSGPACK_DATA_KEY)
        self.in_flight = 0
        self.ready = False
        self.retired = False

    # ---- request -> rows ---------------------------------------------------------------------

    def rows(self, tensors: Sequence[Tensor]) -> np.ndarray:
        """Request tensors -> float32 ``[n, f_in]`` raw rows in plan input order.

        Either one ``[n, f_in]`` FP32/FP64 tensor (any name; categoricals as codes), or one
        tensor per signature input of shape ``[n]`` or ``[n, 1]``. Categorical BYTES map
        through the vocabulary (an empty string not in the vocabulary -> missing); unseen
        categories, and codes outside the vocabulary, follow the input's unknown-category policy.
        """
        if len(tensors) == 1 and self._is_matrix(tensors[0]):
            t = tensors[0]
            x = _as_float32(t.name, t.datatype, t.data).reshape(t.shape[0], self.f_in)
            if self._policed:
                x = self._police_codes(x)
            self._check_nulls(x)
            return x
        given = {t.name: t for t in tensors}
        if len(given) != len(tensors):
            raise InvalidInput("each input may appear once; got duplicate input names")
        missing = [c.name for c in self.columns if c.name not in given]
        extra = [name for name in given if name not in self.by_name]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing inputs: {', '.join(missing)}")
            if extra:
                parts.append(f"unknown inputs: {', '.join(extra)}")
            raise InvalidInput(
                f"model {self.name}: {'; '.join(parts)} (expects "
                f"{', '.join(c.name for c in self.columns)}, or one [n, {self.f_in}] FP32 tensor)"
            )
        n = -1
        x = np.empty((0, self.f_in), dtype=np.float32)
        for column in self.columns:
            t = given[column.name]
            shape = list(t.shape)
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
                raise InvalidInput(
                    f"input '{column.name}': shape {shape}; expected [n] or [n, 1]"
                )
            if n < 0:
                n = shape[0]
                x = np.empty((n, self.f_in), dtype=np.float32)
            elif shape[0] != n:
                raise InvalidInput(
                    f"input '{column.name}' has {shape[0]} rows but the other inputs have {n}"
                )
            x[:, column.index] = self._column_values(column, t)
        self._check_nulls(x)
        return x

    def fast_rows(
        self, obj: Any, *, json_body: bool = False
    ) -> tuple[np.ndarray, str | None, dict[str, Any]] | None:
        """The fast lane (``codecs.fast_msgpack_rows`` on an unpacked msgpack object, or
        ``codecs.fast_json_rows`` on a JSON body) plus what :meth:`rows` does to a row matrix
        (unknown-category policies, the null check); None: use the general path."""
        if not self.fast_matrix:
            return None
        fast = (fast_json_rows(obj, self.f_in) if json_body
                else fast_msgpack_rows(obj, self.f_in))
        if fast is None:
            return None
        x = fast[0]
        if self._policed:
            x = self._police_codes(x)
        self._check_nulls(x)
        return x, fast[1], fast[2]

    def _is_matrix(self, t: Tensor) -> bool:
        if len(t.shape) != 2 or t.shape[1] != self.f_in or t.datatype not in ("FP32", "FP64"):
            return False
        # A lone [n, 1] tensor named after the only input is that input, not a matrix.
        return not (self.f_in == 1 and t.name in self.by_name and self.columns[0].kind != "numeric")

    def _column_values(self, column: _Column, t: Tensor) -> np.ndarray:
        data = np.asarray(t.data).reshape(-1)
        encoder = column.encoder
        if encoder is not None and encoder.vocabulary is not None:
            if t.datatype == "BYTES":
                return encoder.encode_strings(data, empty_is_missing=True)
            if t.datatype in _NUMERIC_DATATYPES and t.datatype not in _FLOAT_DATATYPES:
                return encoder.encode_integers(data)
            raise InvalidInput(
                f"input '{column.name}' is categorical: send BYTES (strings of its vocabulary) "
                f"or integers, got {t.datatype}"
            )
        if t.datatype not in _NUMERIC_DATATYPES:
            raise InvalidInput(
                f"input '{column.name}': expected a number tensor (FP32), got {t.datatype}"
            )
        if column.kind == "categorical" and t.datatype in _FLOAT_DATATYPES:
            finite = data[~np.isnan(data)]
            if finite.size and not np.array_equal(finite, np.round(finite)):
                raise InvalidInput(
                    f"input '{column.name}' holds category codes: got non-integer values"
                )
        if encoder is None:
            return _as_float32(column.name, t.datatype, data)
        return encoder.check_codes(data)

    def _police_codes(self, x: np.ndarray) -> np.ndarray:
        """The matrix form's category codes under each input's unknown-category policy."""
        original = x
        for column in self._policed:
            assert column.encoder is not None
            codes = x[:, column.index]
            checked = column.encoder.check_codes(codes)
            if checked is not codes:
                if x is original:
                    x = x.copy()  # the request's buffer may be read-only
                x[:, column.index] = checked
        return x

    def _check_nulls(self, x: np.ndarray) -> None:
        # One C reduction first: a sum that is not NaN means no NaN anywhere (the usual
        # request), ~1 µs instead of ~3.5 µs for the column selection below.
        if not self._any_non_nullable or not math.isnan(_SUM(x, axis=None)):
            return
        bad = np.isnan(x[:, self._non_nullable]).any(axis=0)
        if bad.any():
            names = [c.name for c in self.columns if not c.nullable]
            missing = [name for name, b in zip(names, bad, strict=True) if b]
            raise InvalidInput(f"inputs {', '.join(missing)} are not nullable but hold NaN")

    # ---- outputs -----------------------------------------------------------------------------

    def _output_widths(self, total: int) -> list[int]:
        """The columns of each signature output in an engine result ``total`` wide."""
        if len(self.outputs) == 1:
            return [total]
        widths = []
        for spec in self.outputs:
            shape = spec.get("shape") or [-1, -1]
            widths.append(int(shape[1]) if len(shape) > 1 and int(shape[1]) > 0 else total)
        return widths

    def output_columns(self, total: int) -> list[str]:
        """A name per column of an engine result ``total`` wide: an output's name, or
        ``NAME_j`` for the columns of a wider one (``output_j`` where the signature does not
        add up); the prediction log's output columns."""
        names: list[str] = []
        for spec, width in zip(self.outputs, self._output_widths(total), strict=True):
            name = str(spec["name"])
            names += [name] if width == 1 else [f"{name}_{j}" for j in range(width)]
        return names if len(names) == total else [f"output_{j}" for j in range(total)]

    def response(self, y: np.ndarray, request: InferRequest) -> InferResponse:
        """The engine's output as the signature's output tensor(s)."""
        n = y.shape[0]
        y2 = y.reshape(n, -1)
        outputs: list[Tensor] = []
        offset = 0
        for spec, width in zip(self.outputs, self._output_widths(y2.shape[1]), strict=True):
            part = np.ascontiguousarray(y2[:, offset : offset + width], dtype=np.float32)
            offset += width
            outputs.append(Tensor(str(spec["name"]), "FP32", [n, width], part))
        if request.outputs:
            by_name = {t.name: t for t in outputs}
            unknown = [o.name for o in request.outputs if o.name not in by_name]
            if unknown:
                raise InvalidInput(
                    f"unknown outputs requested: {', '.join(unknown)} (model {self.name} "
                    f"returns {', '.join(by_name)})"
                )
            outputs = [by_name[o.name] for o in request.outputs]
        return InferResponse(
            model_name=self.name,
            model_version=self.version,
            id=request.id,
            outputs=outputs,
            parameters={},
        )

    def msgpack_response(self, y: np.ndarray, request_id: str | None) -> bytes | None:
        """The msgpack body :meth:`response` + ``codecs.encode_msgpack_response`` would give
        for a request with no ``outputs`` and no response parameters, built from cached
        pieces (byte-identical; tested); None for models with several outputs."""
        if self._msgpack_output is None:
            return None
        n = y.shape[0]
        y2 = np.ascontiguousarray(y.reshape(n, -1), dtype=np.float32)
        data = y2.view(np.uint8).data
        size = data.nbytes
        if size < 0x100:
            bin_header = b"\xc4" + size.to_bytes(1, "big")
        elif size < 0x10000:
            bin_header = b"\xc5" + size.to_bytes(2, "big")
        else:
            bin_header = b"\xc6" + size.to_bytes(4, "big")
        if request_id is None:
            head = b"\x83" + self._msgpack_names
        else:
            head = b"\x84" + self._msgpack_names + _MSGPACK_ID_KEY + msgpack.packb(request_id)
        shape = self._packed_shapes.get(y2.shape)
        if shape is None:
            shape = msgpack.packb(list(y2.shape))
            if len(self._packed_shapes) < 4096:  # one per batch row count seen: bounded
                self._packed_shapes[y2.shape] = shape
        return b"".join((head, self._msgpack_output, shape, _MSGPACK_DATA_KEY, bin_header, data))

    def json_response(self, y: np.ndarray, request_id: str | None) -> bytes | None:
        """Like :meth:`msgpack_response`, for v2 JSON: the body ``encode_json_response`` gives
        for a request with no ``outputs`` and no binary parameters (byte-identical; tested);
        None for several outputs or non-finite values (those go out as binary data)."""
        if self._json_output is None:
            return None
        n = y.shape[0]
        y2 = np.ascontiguousarray(y.reshape(n, -1), dtype=np.float32)
        flat = y2.reshape(-1)
        if not all_finite(flat):
            return None
        head = self._json_names if request_id is None else (
            self._json_names + b',"id":' + orjson.dumps(request_id))
        return b"".join((head, self._json_output, orjson.dumps(list(y2.shape)), b',"data":',
                         orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY), b"}]}"))

    # ---- metadata ----------------------------------------------------------------------------

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        """v2 model metadata (``GET /v2/models/{m}``)."""
        inputs = [
            {
                "name": c.name,
                "datatype": _SIGNATURE_DATATYPES.get(str(spec.get("dtype")), "FP32"),
                "shape": [-1],
                "parameters": {
                    "kind": c.kind,
                    "nullable": c.nullable,
                    **({"unknown": c.encoder.unknown} if c.encoder is not None else {}),
                },
            }
            for c, spec in zip(self.columns, self.inputs, strict=True)
        ]
        outputs = [
            {
                "name": str(spec["name"]),
                "datatype": _SIGNATURE_DATATYPES.get(str(spec.get("dtype")), "FP32"),
                "shape": [-1, *[int(d) for d in (spec.get("shape") or [-1, -1])[1:]]],
            }
            for spec in self.outputs
        ]
        return {
            "name": self.name,
            "versions": versions,
            "platform": "mlserve",
            "inputs": inputs,
            "outputs": outputs,
        }


class FeatureServedVersion(ServedVersion):
    """A version trained on a feature service: requests may carry entity keys instead of (or
    beside) the service's features (:mod:`mlserve.server.feature_join`). Requests without
    entity keys take :class:`ServedVersion`'s paths unchanged."""

    def __init__(self, engine: Engine, name: str, version: str, ref: str,
                 reader: ServiceReader) -> None:
        super().__init__(engine, name, version, ref)
        lineage = engine.bundle.manifest.get("lineage") or {}
        self.join = OnlineFeatureJoin(reader, lineage, self.columns, name, version)
        self._key_names = frozenset(self.join.join_keys)

    def rows(self, tensors: Sequence[Tensor]) -> np.ndarray:
        """As :meth:`ServedVersion.rows`, or, when the request carries an entity key: the
        service's features read online for the keys, the other inputs from the request."""
        if not any(t.name in self._key_names for t in tensors):
            return super().rows(tensors)
        given = {t.name: t for t in tensors}
        if len(given) != len(tensors):
            raise InvalidInput("each input may appear once; got duplicate input names")
        join = self.join
        absent = [k for k in join.join_keys if k not in given]
        unknown = [k for k in given if k not in self.by_name and k not in self._key_names]
        missing = [c.name for c in join.request_inputs if c.name not in given]
        if absent or unknown or missing:
            parts = []
            if absent:
                parts.append(f"missing entity keys: {', '.join(absent)}")
            if missing:
                parts.append(f"missing request-time inputs: {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown inputs: {', '.join(unknown)}")
            request_inputs = ", ".join(c.name for c in join.request_inputs) or "none"
            raise InvalidInput(
                f"model {self.name}: {'; '.join(parts)} (an entity-keyed request sends "
                f"{', '.join(join.join_keys)} and the request-time inputs ({request_inputs}); "
                f"feature service {join.service} provides the others)")
        keys, n = join.keys(given)
        limit = self.engine.config.max_batch_size
        if n > limit:  # before the store read, which runs on the event loop
            raise InvalidInput(f"request has {n} rows; this model takes 1..{limit} rows per "
                               "request (max_batch_size); split larger inputs")
        x = np.empty((n, self.f_in), dtype=np.float32)
        values, status = join.fetch(keys, n)
        x[:, join.store_index] = values
        for name, t in given.items():
            column = self.by_name.get(name)
            if column is None:
                continue  # an entity key
            shape = list(t.shape)
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
                raise InvalidInput(f"input '{name}': shape {shape}; expected [n] or [n, 1]")
            if shape[0] != n:
                raise InvalidInput(
                    f"input '{name}' has {shape[0]} rows but the entity keys have {n}")
            x[:, column.index] = self._column_values(column, t)
        if self._any_non_nullable:
            bad = np.flatnonzero(np.isnan(x[:, self._non_nullable]).any(axis=0))
            if bad.size:
                names = [c.name for c in self.columns if not c.nullable]
                raise join.null_error([names[i] for i in bad.tolist()], x, status, keys)
        return x

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        """v2 metadata plus the entity keys (inputs with ``parameters.entity_key``) and, per
        input, where it comes from (``feature_view`` or ``request``)."""
        out = super().metadata(versions)
        join = self.join
        views = {s.name: join.reader.views[s.view] for s in join.store_inputs}
        for item in out["inputs"]:
            view = views.get(item["name"])
            item["parameters"]["source"] = "request" if view is None else "feature_store"
            if view is not None:
                item["parameters"]["feature_view"] = view
        keys = [
            {"name": k, "datatype": "INT64" if join.key_dtypes[k] == "int64" else "BYTES",
             "shape": [-1],
             "parameters": {"entity_key": True, "feature_service": join.service,
                            "optional": True}}
            for k in join.join_keys
        ]
        out["inputs"] = keys + out["inputs"]
        out["parameters"] = {"feature_service": join.service,
                             "entity_keys": list(join.join_keys),
                             "feature_views": list(join.reader.views)}
        return out


@dataclass
class ServedModel:
    """Every loaded version of one model name, and which one is the default."""

    name: str
    ref: str
    default: str
    versions: dict[str, ServedVersion] = field(default_factory=dict)


@dataclass(frozen=True)
class BundleSource:
    """A bundle directory served without a registry (``--model /mnt/models``): named by its
    manifest (``name``, ``version``; version 1 when it has none), no registry record.
    ``identity``: its path and its manifest's sha256, so that a load after the directory was
    replaced builds the new model instead of keeping the loaded one."""

    name: str
    version: int
    path: Path
    identity: str
    manifest: None = None

    @classmethod
    def read(cls, ref: str) -> BundleSource:
        from mlserve.bundle import MANIFEST, ModelBundle, sha256_file
        from mlserve.registry.refs import check_name

        path = Path(ref).resolve()
        if not (path / MANIFEST).is_file():
            raise ModelNotFound(f"model {ref!r}: {path} is not a model bundle (it has no "
                                f"{MANIFEST}); a path names a bundle directory, a NAME, "
                                "NAME/VERSION or NAME@ALIAS a registered model")
        bundle = ModelBundle.load(path, verify=False)  # the Engine verifies the artifacts
        try:
            check_name(bundle.name)
        except InvalidInput as e:
            raise InvalidInput(f"bundle {path}: its manifest's name cannot name a served "
                               f"model ({e})") from None
        return cls(bundle.name, bundle.version or 1, path,
                   f"{path}#{sha256_file(path / MANIFEST)}")


class ModelManager:
    """Loads registry refs (or bundle directories) into engines and routes requests to them
    (see module docstring)."""

    def __init__(
        self,
        registry_root: str | None = None,
        *,
        config: BatcherConfig | None = None,
        backend: str = "onnxruntime",
        device: int = 0,
        feature_store: str | None = None,
    ) -> None:
        self.registry_root = registry_root
        #: Root of the feature store of entity-keyed models; None: $MLSERVE_FEATURE_STORE.
        self.feature_store = feature_store
        self.config = config or BatcherConfig(max_batch_size=256, max_queue_delay_us=0)
        #: Execution backend of refs that name none (``REF:BACKEND`` names one).
        self.backend = backend
        self.device = device
        self.models: dict[str, ServedModel] = {}
        #: Model names that should be loaded for the server to be ready.
        self.expected: set[str] = set()
        self.draining = False
        #: The server's event loop while its lifespan runs (set by the app): handed to
        #: Engine.apredict, which then skips a get_running_loop (a getpid system call on 3.11).
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loading: dict[str, asyncio.Future[ServedVersion]] = {}
        self._closers: set[asyncio.Future[None]] = set()
        self._registry: Any = None
        #: Models loaded from a bundle directory: name -> its path (a load by name reads it
        #: again, e.g. after the directory was replaced).
        self._bundles: dict[str, str] = {}
        self._store: FeatureStore | None = None
        #: One prepared reader per feature service version, shared by the models using it.
        self._readers: dict[str, ServiceReader] = {}
        self._store_lock = threading.Lock()

    # ---- lookups (plain dict reads) ----------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True when every expected model is loaded, warmed up and the server is not draining."""
        if self.draining or not self.expected:
            return False
        return all(name in self.models for name in self.expected)

    def find(self, name: str, version: str | None = None) -> ServedVersion | None:
        """:meth:`get`, or None where it raises."""
        model = self.models.get(name)
        if model is None:
            return None
        return model.versions.get(model.default if version is None else version)

    def get(self, name: str, version: str | None = None) -> ServedVersion:
        """The version serving ``name`` (its default when ``version`` is None)."""
        model = self.models.get(name)
        if model is None:
            loaded = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"model {name!r} is not loaded (loaded models: {loaded})")
        served = model.versions.get(model.default if version is None else version)
        if served is None:
            have = ", ".join(sorted(model.versions, key=_version_key))
            raise ModelNotFound(
                f"model {name!r} has no loaded version {version!r} (loaded: {have})"
            )
        return served

    def model(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"model {name!r} is not loaded")
        return model

    def index(self) -> list[dict[str, Any]]:
        """The repository index: one entry per loaded version and per model being loaded."""
        out: list[dict[str, Any]] = []
        for name in sorted(set(self.models) | self.expected | set(self._loading)):
            model = self.models.get(name)
            if model is None:
                state = "LOADING" if name in self._loading else "UNAVAILABLE"
                out.append({"name": name, "version": "", "state": state, "reason": ""})
                continue
            for version in sorted(model.versions, key=_version_key):
                served = model.versions[version]
                out.append({
                    "name": name,
                    "version": version,
                    "state": "READY" if served.ready else "UNAVAILABLE",
                    "reason": "default" if version == model.default else "",
                })
        return out

    # ---- inference ---------------------------------------------------------------------------

    async def infer(
        self, name: str, version: str | None, request: InferRequest, tag: bytes = b""
    ) -> InferResponse:
        """Runs one decoded request on the model version it names."""
        served = self.get(name, version)
        y = await self.run(served, served.rows(request.inputs), request.parameters, tag)
        return served.response(y, request)

    async def run(
        self, served: ServedVersion, x: np.ndarray, params: dict[str, Any] | None,
        tag: bytes = b"",
    ) -> np.ndarray:
        """Runs raw rows ``x`` on ``served`` with the request's ``priority``/``timeout``
        parameters; keeps the in-flight count that lets a retired version close when idle.
        ``tag`` (the request id) keys the outputs in the engine's prediction log."""
        if params:
            priority = _int_param(params, "priority", 0)
            timeout = params.get("timeout")
            timeout_us = None if timeout is None else _int_param(params, "timeout", 0)
        else:
            priority, timeout_us = 0, None
        served.in_flight += 1
        try:
            return await served.engine.apredict(x, priority=priority, timeout_us=timeout_us,
                                                tag=tag, loop=self.loop)
        finally:
            served.in_flight -= 1
            if served.retired and served.in_flight == 0:
                self._close_later(served)

    async def run_msgpack(self, served: ServedVersion, body: bytes, tag: bytes = b""
                          ) -> bytes | None:
        """:meth:`run` for a msgpack body through ``served``'s fast lane: the response body,
        or None when the body is not the lane's request (nothing ran; decode it in Python)."""
        served.in_flight += 1
        try:
            return await served.engine.apredict_msgpack(body, served.msgpack_lane, tag=tag,
                                                        loop=self.loop)
        finally:
            served.in_flight -= 1
            if served.retired and served.in_flight == 0:
                self._close_later(served)

    # ---- loading -----------------------------------------------------------------------------

    def _registry_instance(self) -> Any:
        if self._registry is None:
            from mlserve.registry import Registry

            self._registry = Registry(self.registry_root)
        return self._registry

    async def load(self, ref: str) -> ServedVersion:
        """Loads ``ref`` (``REF[:BACKEND]``) and makes it its model's default version (hot swap
        if one serves). Without ``:BACKEND`` the manager's backend executes it."""
        if self.draining:
            raise Unavailable("the server is shutting down; no model can be loaded")
        registry_ref, named = split_model_spec(ref)
        backend = named or self.backend
        loop = asyncio.get_running_loop()
        resolved = await loop.run_in_executor(None, self._resolve, registry_ref)
        name, version = resolved.name, str(resolved.version)
        key = f"{name}/{version}"
        self.expected.add(name)
        model = self.models.get(name)
        current = model.versions.get(version) if model is not None else None
        same_backend = current is not None and (
            canonical_backend(current.engine.backend) == canonical_backend(backend))
        same_source = current is not None and current.source == getattr(resolved, "identity",
                                                                          None)
        if current is not None and not current.retired and same_backend and same_source:
            served = current
        elif key in self._loading:
            served = await asyncio.shield(self._loading[key])
        else:
            fut: asyncio.Future[ServedVersion] = loop.create_future()
            self._loading[key] = fut
            try:
                served = await self._build(resolved.path, name, version, ref, backend,
                                           resolved.manifest)
                served.source = getattr(resolved, "identity", None)
            except BaseException as exc:
                if isinstance(exc, Exception):
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: waiters (if any) re-raise it
                else:
                    fut.cancel()
                raise
            finally:
                self._loading.pop(key, None)
            fut.set_result(served)
        self._publish(served, ref)
        return served

    def _resolve(self, ref: str) -> Any:
        if is_bundle_path(ref) or ref in self._bundles:  # a bare name loaded from a bundle
            source = BundleSource.read(self._bundles.get(ref, ref))
            self._bundles[source.name] = str(source.path)
            return source
        return self._registry_instance().resolve(ref)

    async def _build(self, path: Any, name: str, version: str, ref: str,
                     backend: str, registered: Any = None) -> ServedVersion:
        loop = asyncio.get_running_loop()
        engine = await loop.run_in_executor(
            None, self._engine, path, name, version, backend, registered)
        try:
            lineage = engine.bundle.manifest.get("lineage") or {}
            service = lineage_service(lineage) if isinstance(lineage, dict) else None
            if service is None:
                served = ServedVersion(engine, name, version, ref)
            else:
                reader = await loop.run_in_executor(
                    None, self._service_reader, service, f"{name}/{version}")
                served = FeatureServedVersion(engine, name, version, ref, reader)
            await engine.apredict(np.zeros((1, served.f_in), dtype=np.float32))
        except BaseException:
            await loop.run_in_executor(None, engine.close, False)
            raise
        served.ready = True
        metrics.MODEL_LOADS.labels(name, version, "load").inc()
        logger.info("loaded model %s/%s (ref %s, backend %s)", name, version, ref, backend)
        return served

    def _engine(self, path: Any, name: str, version: str, backend: str,
                registered: Any) -> Engine:
        """The engine of a resolved version. A registered version whose mlserve.json is ahead
        of the registry (an add_artifact between its rename and its commit) is resolved again
        until the commit lands (retry_on_mismatch)."""
        from mlserve.bundle import retry_on_mismatch

        attempt = {"registered": registered}

        def build() -> Engine:
            try:
                return Engine.from_bundle(path, backend=backend, config=self.config,
                                          device=self.device,
                                          registered=attempt["registered"])
            except ManifestMismatch:
                attempt["registered"] = self._resolve(f"{name}/{version}").manifest
                raise

        if registered is None:
            return build()
        return retry_on_mismatch(build)

    def _service_reader(self, service: str, model: str) -> ServiceReader:
        """The prepared reader of ``service`` (NAME/VERSION) from the configured store, with
        its LMDB handles opened (a first read), so that requests never open them. Runs in the
        executor."""
        with self._store_lock:
            reader = self._readers.get(service)
            if reader is not None:
                return reader
            if self._store is None:
                root = self.feature_store or configured_root()
                if root is None:
                    raise Unavailable(
                        f"model {model} was trained on feature service {service} but this "
                        "server has no feature store: start it with `mlserve serve "
                        f"--feature-store PATH|s3://BUCKET/PREFIX` or set ${ROOT_ENV}")
                if not is_uri(root) and not (Path(root) / "definitions.db").is_file():
                    raise Unavailable(
                        f"model {model} needs feature service {service}, but {root} is not a "
                        "feature store (no definitions.db); check --feature-store or "
                        f"${ROOT_ENV}")
                self._store = FeatureStore(root)
            try:
                reader = self._store.service_reader(service)
            except DefinitionNotFound as exc:
                raise DefinitionNotFound(
                    f"model {model} needs feature service {service}, which the feature store "
                    f"at {self._store.location} does not define: {exc}") from None
            reader.read({k: [0] if d == "int64" else [""] for k, d in reader.key_dtypes.items()})
            empty = [v.ref for v, _ in self._store.resolve(service)
                     if not self._store.online.has_data(v)]
            if empty:
                logger.warning(
                    "feature service %s: nothing of view(s) %s was materialized into this "
                    "machine's online store yet (every entity reads as missing); run `mlserve "
                    "features materialize --incremental --store %s` here", service,
                    ", ".join(empty), self._store.location)
            self._readers[service] = reader
            logger.info("feature service %s ready for entity-keyed requests (store %s)",
                        service, self._store.location)
            return reader

    def _publish(self, served: ServedVersion, ref: str) -> None:
        # Runs on the loop without awaiting: the swap is atomic for every request handler.
        model = self.models.get(served.name)
        if model is None:
            self.models[served.name] = ServedModel(
                served.name, ref, served.version, {served.version: served}
            )
            return
        previous = model.versions.get(model.default)
        replaced = model.versions.get(served.version)
        model.versions[served.version] = served
        model.default = served.version
        old_ref = model.ref
        model.ref = ref
        if replaced is not None and replaced is not served:
            # The same version on another backend: the new engine takes over, the old drains.
            self._retire(replaced)
            logger.info("hot swap %s/%s: backend %s -> %s", served.name, served.version,
                        replaced.engine.backend, served.engine.backend)
        elif previous is not None and previous is not served and old_ref == ref:
            # The same ref now names another version (its alias moved): retire the old one.
            del model.versions[previous.version]
            self._retire(previous)
            logger.info(
                "hot swap %s: version %s -> %s", served.name, previous.version, served.version
            )

    async def unload(self, name: str) -> list[str]:
        """Stops serving every version of ``name``; running requests still finish."""
        model = self.models.pop(name, None)
        self.expected.discard(name)
        if model is None:
            raise ModelNotFound(f"model {name!r} is not loaded")
        for served in model.versions.values():
            self._retire(served)
        logger.info("unloaded model %s", name)
        return sorted(model.versions, key=_version_key)

    def _retire(self, served: ServedVersion) -> None:
        metrics.MODEL_LOADS.labels(served.name, served.version, "unload").inc()
        served.retired = True
        served.ready = False
        if served.in_flight == 0:
            self._close_later(served)

    def _close_later(self, served: ServedVersion) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, served.engine.close, True)
        self._closers.add(fut)
        fut.add_done_callback(self._closers.discard)

    # ---- shutdown ----------------------------------------------------------------------------

    async def close(self, timeout_s: float = 10.0) -> None:
        """Drains: refuses new loads, waits for in-flight requests, closes every engine."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        served = [s for m in self.models.values() for s in m.versions.values()]
        while any(s.in_flight for s in served) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        drain = not any(s.in_flight for s in served)
        self.models.clear()
        futures = [loop.run_in_executor(None, s.engine.close, drain) for s in served]
        futures.extend(self._closers)
        if futures:
            left = max(0.1, deadline - loop.time())
            _, pending = await asyncio.wait(futures, timeout=left)
            if pending:
                logger.warning("%d engines did not close within the shutdown bound", len(pending))
        if self._store is not None:
            self._store.close()
            self._store = None
            self._readers.clear()


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


#: The ranges of the integer request parameters (the engine's priority is an int32, its timeout
#: in µs an int64).
_INT_PARAM_RANGES = {"priority": (-(2**31), 2**31 - 1), "timeout": (0, 2**63 - 1)}


def _int_param(params: dict[str, Any], key: str, default: int) -> int:
    value = params.get(key, default)
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value)) or value != int(value)):
        raise InvalidInput(f"parameter '{key}' must be an integer, got {value!r}")
    low, high = _INT_PARAM_RANGES.get(key, (-(2**63), 2**63 - 1))
    if not low <= int(value) <= high:
        raise InvalidInput(f"parameter '{key}' must be in {low}..{high}, got {value!r}")
    return int(value)


def _as_float32(name: str, datatype: str, data: Any) -> np.ndarray:
    """A numeric tensor's values as float32 (the plan's input type): FP64 values beyond
    float32's range are refused, as for FP32 data, rather than silently becoming infinities."""
    values = np.asarray(data)
    if datatype == "FP64" and values.size:
        big = np.abs(values) >= FP32_OVERFLOW
        if bool(big.any()) and bool(np.isfinite(values[big]).any()):
            raise InvalidInput(f"input {name!r}: a value is out of FP32 range (the model "
                               "computes in float32)")
    return np.ascontiguousarray(values, dtype=np.float32)
