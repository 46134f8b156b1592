"""Consistency checks and garbage collection of a registry's files against its database.

Callers hold the SQLite write lock (``BEGIN IMMEDIATE``), so no registration can rename a
version directory into place or commit rows meanwhile; temp entries of live processes are
left alone (their names carry the writer's pid).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from mlserve._tempfiles import temp_owner_alive
from mlserve.bundle import MANIFEST, sha256_file

from ._files import (
    Layout,
    blob_path,
    manifest_bytes,
    remove_tree,
    replace_manifest,
)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _restore_manifest(vdir: Path, registered: dict[str, Any], on_disk: Any) -> None:
    """Rewrites ``vdir``'s mlserve.json from the registered (committed) manifest, and removes
    the artifact files only the on-disk one names: what an ``add_artifact`` killed between its
    file writes and its commit leaves behind."""
    known = set(registered.get("artifacts", {}))
    stray = [f for f in (on_disk.get("artifacts", {}) if isinstance(on_disk, dict) else {})
             if f not in known]
    dirs = [vdir, *{(vdir / f).parent for f in stray}]
    for d in dirs:
        if d.is_dir():
            os.chmod(d, 0o755)
    try:
        for f in stray:
            path = vdir / f
            if path.is_file() and path.resolve().is_relative_to(vdir.resolve()):
                path.unlink()
        for d in sorted(dirs[1:], key=lambda d: len(d.parts), reverse=True):
            if d != vdir and d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        replace_manifest(vdir, manifest_bytes(registered))
    finally:
        for d in dirs:
            if d.is_dir():
                os.chmod(d, 0o555)


def _check_versions(conn: sqlite3.Connection, layout: Layout, repair: bool = False
                    ) -> list[str]:
    problems: list[str] = []
    hashed: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in hashed:
            hashed[path] = sha256_file(path)
        return hashed[path]

    for row in conn.execute("SELECT name, version, manifest FROM versions ORDER BY name, "
                            "version").fetchall():
        ref = f"{row['name']}/{row['version']}"
        vdir = layout.version_dir(row["name"], int(row["version"]))
        if not vdir.is_dir():
            problems.append(f"{ref}: version directory {vdir} is missing")
            continue
        registered = json.loads(row["manifest"])
        on_disk: Any = None
        try:
            on_disk = json.loads((vdir / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            message = f"{ref}: mlserve.json is unreadable ({exc})"
        else:
            message = (f"{ref}: mlserve.json differs from the registered manifest"
                       if on_disk != registered else "")
        if message and repair:
            _restore_manifest(vdir, registered, on_disk)
            message += " (repaired: rewritten from the registered manifest)"
        if message:
            problems.append(message)
        for art in conn.execute("SELECT file, sha256 FROM artifacts WHERE name = ? AND "
                                "version = ?", (row["name"], row["version"])).fetchall():
            blob = blob_path(layout.blobs, art["sha256"])
            file = vdir / art["file"]
            if not blob.is_file():
                problems.append(f"{ref}: blob of artifact {art['file']} ({blob}) is missing")
            elif digest(blob) != art["sha256"]:
                problems.append(f"{ref}: blob of artifact {art['file']} ({blob}) does not "
                                "match its sha256")
            if not file.is_file():
                problems.append(f"{ref}: artifact {art['file']} is missing from {vdir}")
            elif _same_file(blob, file):
                pass  # one inode: the blob check above covers the version's file
            elif digest(file) != art["sha256"]:
                problems.append(f"{ref}: artifact {art['file']} does not match its sha256")
    return problems


def _dangling_aliases(conn: sqlite3.Connection, repair: bool) -> list[str]:
    rows = conn.execute(
        "SELECT a.name, a.alias, a.version FROM aliases a LEFT JOIN versions v "
        "ON a.name = v.name AND a.version = v.version WHERE v.version IS NULL").fetchall()
    problems = []
    for r in rows:
        msg = f"alias {r['name']}@{r['alias']} points at missing version {r['version']}"
        if repair:
            conn.execute("DELETE FROM aliases WHERE name = ? AND alias = ?",
                         (r["name"], r["alias"]))
            msg += " (repaired)"
        problems.append(msg)
    return problems


def _leftovers(conn: sqlite3.Connection, layout: Layout) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    if layout.tmp.is_dir():
        for entry in sorted(layout.tmp.iterdir()):
            if not temp_owner_alive(entry):
                found.append((f"leftover temp entry {entry}", entry))
    committed = {(r[0], str(r[1])) for r in conn.execute("SELECT name, version FROM versions")}
    if layout.models.is_dir():
        for model_dir in sorted(layout.models.iterdir()):
            for vdir in sorted(model_dir.iterdir()) if model_dir.is_dir() else []:
                if (model_dir.name, vdir.name) not in committed:
                    found.append((f"uncommitted version directory {vdir} (interrupted "
                                  "registration)", vdir))
    referenced = {r[0] for r in conn.execute("SELECT DISTINCT sha256 FROM artifacts")}
    if layout.blobs.is_dir():
        for shard in sorted(layout.blobs.iterdir()):
            for blob in sorted(shard.iterdir()) if shard.is_dir() else []:
                if blob.name not in referenced:
                    found.append((f"unreferenced blob {blob}", blob))
    return found


def remove_leftovers(conn: sqlite3.Connection, layout: Layout) -> list[str]:
    """Removes leftovers of interrupted writes; returns one line per removed entry."""
    removed = []
    for msg, path in _leftovers(conn, layout):
        remove_tree(path)
        removed.append(msg)
    return removed


def check(conn: sqlite3.Connection, layout: Layout, *, repair: bool) -> list[str]:
    """All problems of the registry; with ``repair``, fixes what can be fixed safely."""
    problems = _check_versions(conn, layout, repair)
    problems += _dangling_aliases(conn, repair)
    if repair:
        problems += [f"{m} (repaired)" for m in remove_leftovers(conn, layout)]
    else:
        problems += [m for m, _ in _leftovers(conn, layout)]
    return problems
