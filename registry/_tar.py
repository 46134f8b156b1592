"""Bundle tar files: writing (export) and safe extraction (import).

Extraction accepts only regular files with relative paths, no ``..``, no links or devices, no
duplicates, and copies bytes itself instead of calling ``extractall``. Thread-safe.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath

from mlserve.errors import InvalidInput

from ._files import remove_tree


def write_bundle_tar(bundle_dir: Path, files: list[str], tar_path: Path) -> Path:
    """Writes ``files`` of ``bundle_dir`` to ``tar_path`` atomically (temp name, rename)."""
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tar_path.with_name(f".{tar_path.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w") as tar:
            for file in files:
                # Every member a regular file with its bytes: artifacts with the same content
                # are hardlinks of one blob in the registry, which gettarinfo would write as
                # tar hardlinks (and import refuses links).
                st = os.stat(bundle_dir / file)
                info = tarfile.TarInfo(file)
                info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o644
                with open(bundle_dir / file, "rb") as f:
                    tar.addfile(info, f)
        os.replace(tmp, tar_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tar_path


def _safe_member_path(name: str, tar_path: Path) -> PurePosixPath:
    p = PurePosixPath(name)
    if (not name or p.is_absolute() or name.startswith(("/", "\\")) or "\\" in name
            or any(part in ("..", "") for part in p.parts) or ":" in p.parts[0]):
        raise InvalidInput(f"{tar_path}: refusing unsafe member path {name!r}")
    return p


def extract_bundle_tar(tar_path: Path, dest: Path) -> None:
    """Extracts the regular files of ``tar_path`` into the new directory ``dest``."""
    if not tar_path.is_file():
        raise InvalidInput(f"{tar_path} does not exist or is not a file")
    dest.mkdir(parents=True)
    seen: set[str] = set()
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar:
                if member.isdir():
                    _safe_member_path(member.name.rstrip("/"), tar_path)
                    continue
                if not member.isfile():
                    raise InvalidInput(
                        f"{tar_path}: refusing member {member.name!r}: only regular files are "
                        "allowed in a bundle (no links, devices or fifos)")
                rel = _safe_member_path(member.name, tar_path)
                key = rel.as_posix()
                if key in seen:
                    raise InvalidInput(f"{tar_path}: member {key!r} appears twice")
                seen.add(key)
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:
                    raise InvalidInput(f"{tar_path}: cannot read member {key!r}")
                with src, open(target, "xb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
    except tarfile.TarError as exc:
        remove_tree(dest)
        raise InvalidInput(f"{tar_path} is not a readable tar file: {exc}") from None
    except BaseException:
        remove_tree(dest)
        raise
