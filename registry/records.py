"""The registry's value types: ModelVersion, ModelSummary, HistoryEvent and Run.

Immutable snapshots of rows; reading them never touches the database. ``ModelVersion.verify``
reads the version's files. Thread-safe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlserve.bundle import MANIFEST, sha256_file
from mlserve.errors import InvalidInput

VERIFY_HINT = ("the registry may be corrupted: run `mlserve registry verify` (with `--repair` "
               "it fixes what an interrupted write left)")


@dataclass(frozen=True)
class ModelVersion:
    """One registered version; ``path`` is a read-only bundle directory a loader opens."""

    name: str
    version: int
    path: Path
    status: str
    created_at: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``NAME/VERSION``."""
        return f"{self.name}/{self.version}"

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        """``file -> {"sha256", "bytes"}`` from the manifest."""
        artifacts: dict[str, dict[str, Any]] = self.manifest.get("artifacts", {})
        return artifacts

    def verify(self) -> None:
        """Checks mlserve.json and every artifact against the registered sha256.

        Raises InvalidInput naming the file on a missing or mismatching file.
        """
        manifest_path = self.path / MANIFEST
        try:
            on_disk = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInput(
                f"mlserve.json of {self.ref} is unreadable ({exc}); {VERIFY_HINT}"
            ) from None
        if on_disk != self.manifest:
            raise InvalidInput(
                f"mlserve.json of {self.ref} differs from the registered manifest; {VERIFY_HINT}"
            )
        for file, entry in self.artifacts.items():
            path = self.path / file
            if not path.is_file():
                raise InvalidInput(f"artifact {file} of {self.ref} is missing; {VERIFY_HINT}")
            actual = sha256_file(path)
            if actual != entry["sha256"]:
                raise InvalidInput(
                    f"artifact {file} of {self.ref} does not match its sha256 (expected "
                    f"{entry['sha256']}, got {actual}); {VERIFY_HINT}"
                )


@dataclass(frozen=True)
class ModelSummary:
    """One registered model name: how many versions, the latest ready one, its aliases."""

    name: str
    versions: int
    latest_ready: int | None
    aliases: dict[str, int]
    updated_at: str


@dataclass(frozen=True)
class HistoryEvent:
    """One audited change: ``kind`` is register, alias_set, alias_delete, archive, tag_set,
    tag_delete or description. Times are UTC ISO 8601."""

    name: str
    at: str
    kind: str
    alias: str | None
    old_version: int | None
    new_version: int | None
    reason: str


@dataclass(frozen=True)
class Run:
    """A training run: its hyperparameters, metrics, the versions registered from it."""

    run_id: str
    name: str | None
    created_at: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    parent_run: str | None
    versions: list[str] = field(default_factory=list)
