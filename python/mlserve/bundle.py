"""ModelBundle: a trained model as the trainer writes it and every runtime loads it.

A directory with ``mlserve.json`` (docs/bundle.md) and its artifacts. Loading verifies every
artifact's sha256 before anything uses it: a corrupted or tampered file is an error, never a
silent load. No pickle anywhere: JSON, TorchScript and ONNX only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mlserve.categories import CategoryEncoder
from mlserve.errors import InvalidInput
from mlserve.plan import FeaturePlan

T = TypeVar("T")

MANIFEST = "mlserve.json"
#: The format this mlserve writes. 2 added the per-input ``unknown`` category policy; a
#: version 1 bundle loads with every categorical input on "oov" (what version 1 did).
FORMAT_VERSION = 2
#: The formats this mlserve reads.
READABLE_FORMAT_VERSIONS = (1, 2)
#: The model artifact each execution backend runs (``cpu`` is onnxruntime; ``tensorrt`` runs
#: the engine ``mlserve build-engine`` added to the version).
BACKEND_ARTIFACTS = {
    "cpu": "model.onnx",
    "onnxruntime": "model.onnx",
    "torch": "model.pt",
    "torch-cuda": "model.pt",
    "tensorrt": "model.plan",
}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ManifestMismatch(InvalidInput):
    """A registered version's mlserve.json differs from the registry's record of it: an
    ``add_artifact`` between its file rename and its commit (for well under a second), or a
    damaged registry. :func:`retry_on_mismatch` tells the two apart."""


def retry_on_mismatch(fn: Callable[[], T], attempts: int = 6) -> T:
    """``fn()``, called again (after 20, 40, ... 320 ms) while it raises ManifestMismatch, so
    that a load racing an ``add_artifact`` (``mlserve build-engine``) waits for its commit; a
    mismatch that lasts is raised."""
    delay = 0.02
    for attempt in range(attempts):
        try:
            return fn()
        except ManifestMismatch:
            if attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def is_bundle_path(ref: str | os.PathLike[str]) -> bool:
    """Whether a model ref names a bundle directory rather than a registry model: an absolute
    path or one starting with ``./`` or ``../`` (``fraud/3`` stays a registry ref, whatever
    directories the working directory holds)."""
    text = os.fspath(ref)
    return text.startswith(("/", "./", "../")) or text in (".", "..")


def names_bundle(model: str | os.PathLike[str]) -> bool:
    """Whether ``model`` names a bundle directory (a ``Path``, or a string :func:`is_bundle_path`
    accepts) rather than a registry ref."""
    return not isinstance(model, str) or is_bundle_path(model)


def locate(model: str | os.PathLike[str], registry: Any = None
           ) -> tuple[Path, dict[str, Any] | None]:
    """The directory of ``model`` and, for a registered one, the registry's manifest of it
    (which its ``mlserve.json`` must equal): a bundle directory (:func:`names_bundle`), or a
    registry ref (``NAME``, ``NAME/VERSION``, ``NAME@ALIAS``) resolved in ``registry`` (a
    Registry, its root, or None for the default root)."""
    if names_bundle(model):
        if not (Path(model) / MANIFEST).is_file():
            raise InvalidInput(f"model {os.fspath(model)!r} is not a model bundle (it has no "
                               f"{MANIFEST}); a NAME, NAME/VERSION or NAME@ALIAS names a "
                               "registered model")
        return Path(model), None
    from mlserve.registry import Registry

    reg = registry if isinstance(registry, Registry) else Registry(registry)
    version = reg.resolve(str(model))
    return Path(version.path), dict(version.manifest)


def load_model(model: str | os.PathLike[str], registry: Any = None) -> ModelBundle:
    """The verified bundle of ``model`` (:func:`locate`); a registered one's manifest checked
    against the registry (waiting out an ``add_artifact`` commit, :func:`retry_on_mismatch`)."""
    def load() -> ModelBundle:
        path, registered = locate(model, registry)
        return ModelBundle.load(path, registered=registered)

    return retry_on_mismatch(load)


@dataclass(frozen=True)
class ModelBundle:
    """A loaded (and verified) bundle directory."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True,
             registered: Mapping[str, Any] | None = None) -> ModelBundle:
        """Reads ``path``'s manifest and (``verify``) checks every artifact's sha256.

        ``registered``: the registry's record of this version's manifest; the file must equal
        it (a bundle in a registry whose ``mlserve.json`` was changed, or left ahead of the
        database by a killed ``add_artifact``, is refused with the repair hint).
        """
        root = Path(path)
        file = root / MANIFEST
        if not file.is_file():
            raise InvalidInput(f"{str(root)!r} is not a model bundle: it has no {MANIFEST}")
        try:
            manifest = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise InvalidInput(f"{file} is not valid JSON: {e}") from None
        if registered is not None and manifest != registered:
            from mlserve.registry.records import VERIFY_HINT

            raise ManifestMismatch(f"{file} differs from the registry's record of this "
                                   f"version; {VERIFY_HINT}")
        if not isinstance(manifest, dict) or "preprocessing" not in manifest:
            raise InvalidInput(f"{file} has no 'preprocessing' plan; is it an mlserve bundle?")
        fmt = manifest.get("format_version", FORMAT_VERSION)
        if fmt not in READABLE_FORMAT_VERSIONS:
            raise InvalidInput(
                f"{file} has format_version {fmt}; this mlserve reads "
                f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}: upgrade mlserve or re-export "
                "the bundle"
            )
        bundle = cls(root, manifest)
        bundle.category_encoders()  # a bad unknown-category policy fails the load, not a request
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Checks every listed artifact exists and matches its sha256 (InvalidInput if not)."""
        for name, info in self.artifacts.items():
            file = self.path / name
            if not file.is_file():
                raise InvalidInput(f"bundle {self.ref}: artifact {name!r} is missing")
            digest = sha256_file(file)
            if digest != info.get("sha256"):
                raise InvalidInput(
                    f"bundle {self.ref}: artifact {name!r} does not match its sha256 "
                    f"(expected {info.get('sha256')}, found {digest}); the files were changed "
                    "after export: re-export or re-register the model"
                )

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.path.name)

    @property
    def version(self) -> int | None:
        v = self.manifest.get("version")
        return int(v) if v is not None else None

    @property
    def ref(self) -> str:
        return self.name if self.version is None else f"{self.name}/{self.version}"

    @property
    def task(self) -> str:
        return str(self.manifest.get("task", "binary"))

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest.get("artifacts", {}))

    @property
    def signature(self) -> dict[str, Any]:
        return dict(self.manifest.get("signature", {}))

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics", {}))

    @property
    def reference(self) -> dict[str, Any]:
        return dict(self.manifest.get("reference", {}))

    def category_encoders(self) -> list[CategoryEncoder | None]:
        """Per signature input, its category mapping and unknown-category policy (None for a
        numeric input); InvalidInput for a policy the input cannot have."""
        features = list(self.manifest["preprocessing"].get("features") or [])
        inputs = list(self.signature.get("inputs") or [])
        return [
            CategoryEncoder.for_input(spec, features[j] if j < len(features) else None)
            for j, spec in enumerate(inputs)
        ]

    def plan(self) -> FeaturePlan:
        """The compiled feature plan of this bundle."""
        return FeaturePlan(self.manifest["preprocessing"])

    def artifact(self, name: str) -> Path:
        """Path of an artifact listed in the manifest."""
        if name not in self.artifacts:
            have = ", ".join(sorted(self.artifacts)) or "none"
            raise InvalidInput(f"bundle {self.ref} has no artifact {name!r} (it has: {have})")
        return self.path / name

    def model_for(self, backend: str) -> Path:
        """The model file the given execution backend runs."""
        if backend not in BACKEND_ARTIFACTS:
            raise InvalidInput(
                f"backend {backend!r} cannot run a bundle; choose one of "
                f"{', '.join(BACKEND_ARTIFACTS)}"
            )
        name = BACKEND_ARTIFACTS[backend]
        if backend == "tensorrt" and name not in self.artifacts:
            raise InvalidInput(
                f"bundle {self.ref} has no TensorRT engine ({name}); build one on the serving GPU "
                f"with `mlserve build-engine {self.ref}`"
            )
        return self.artifact(name)
