"""File helpers of the registry: hashing, atomic content-addressed blobs, process-tagged temp
names (:mod:`mlserve._tempfiles`) in ``<root>/tmp`` and removal of read-only trees. Thread-safe:
functions share no state.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from mlserve._tempfiles import temp_path
from mlserve.bundle import MANIFEST

_CHUNK_BYTES = 1 << 20


def blob_path(blobs_dir: Path, sha256: str) -> Path:
    return blobs_dir / sha256[:2] / sha256


def store_blob(src: Path, blobs_dir: Path, tmp_dir: Path) -> tuple[str, int]:
    """Copies ``src`` into the content-addressed store (atomically: temp file, fsync, rename).

    Returns ``(sha256, bytes)`` of what was stored; the caller compares it with what it expected
    (hashing while copying means the stored bytes are exactly the hashed ones).
    """
    tmp = temp_path(tmp_dir, "blob")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(_CHUNK_BYTES):
                digest.update(chunk)
                fout.write(chunk)
                size += len(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        sha = digest.hexdigest()
        final = blob_path(blobs_dir, sha)
        if final.exists():
            tmp.unlink()
            try:
                os.utime(final)  # in use again: a cache's gc goes by this time
            except OSError:
                pass
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
        return sha, size
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def link_or_copy(src: Path, dst: Path) -> None:
    """Hardlinks ``src`` to ``dst`` (same content, no copy), copying where links are impossible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o444)


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """A version's mlserve.json as the registry writes it."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def replace_manifest(vdir: Path, data: bytes) -> None:
    """Replaces ``vdir``'s mlserve.json with ``data`` in one rename (readers see the old or
    the new one whole), read-only like every version file. ``vdir`` must be writable."""
    tmp = vdir / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_bytes(data)
    os.chmod(tmp, 0o444)
    os.replace(tmp, vdir / MANIFEST)


def make_tree_readonly(root: Path) -> None:
    """Files 0444, directories 0555 (the directory itself last)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o444)
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o555)
    os.chmod(root, 0o555)


def remove_tree(path: Path) -> None:
    """Removes a file or a (possibly read-only) directory tree; missing is fine."""

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    if not path.exists():
        return
    os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR | stat.S_IXUSR)
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            os.chmod(full, os.stat(full).st_mode | stat.S_IWUSR | stat.S_IXUSR)
    shutil.rmtree(path)


class Layout:
    """Where things live under a registry root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "registry.db"
        self.blobs = root / "blobs"
        self.models = root / "models"
        self.tmp = root / "tmp"

    def version_dir(self, name: str, version: int) -> Path:
        return self.models / name / str(version)
