"""mlserve.tensorrt_engine type-checked by mypy against the published TensorRT type stubs.

TensorRT cannot be installed where the tests run (no GPU, wheels from NVIDIA's index), and its
wheels hold only the compiled module. ``tensorrt-stubs`` (PyPI, generated from TensorRT 10.13's
bindings) publishes its API as stubs; ``make setup`` installs them without their runtime
dependencies. As published they do not parse: a few plugin classes use ``in`` as a parameter
name, and the ``tensorrt`` folder has no ``py.typed``. This test copies them into a stub-only
package, replacing every top-level block that does not parse (plugin interfaces mlserve does not
use) by an opaque class, and runs mypy (strict, the project's settings) on
mlserve/tensorrt_engine.py with it: every Builder, OnnxParser, IBuilderConfig,
IOptimizationProfile, Runtime, ICudaEngine and IExecutionContext call is checked against
NVIDIA's signatures as the stubs record them.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]


def _stub_dirs() -> tuple[Path, Path] | None:
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindings = Path(next(iter(spec.submodule_search_locations)))
    package = bindings.parent / "tensorrt"
    if not (bindings / "tensorrt.pyi").is_file() or not (package / "__init__.pyi").is_file():
        return None
    return bindings, package


def _drop_broken_members(block: str) -> tuple[str, list[str]]:
    """A class block with each member whose line does not parse removed (with its decorators
    and docstring), until the block parses; returns it and the removed members' names."""
    dropped: list[str] = []
    lines = block.splitlines(keepends=True)
    while True:
        try:
            ast.parse("".join(lines))
            return "".join(lines), dropped
        except SyntaxError as e:
            bad = (e.lineno or 1) - 1
        start = next((k for k in range(min(bad, len(lines) - 1), 0, -1)
                      if re.match(r"    def ", lines[k])), None)
        if start is None:
            raise SyntaxError(f"cannot repair: {lines[bad]!r}")
        end = start + 1
        while start > 1 and lines[start - 1].startswith("    @"):
            start -= 1
        while end < len(lines) and not re.match(r"    [@\w]", lines[end]):
            end += 1
        name = re.search(r"def (\w+)", "".join(lines[start:end]))
        dropped.append(name.group(1) if name else "?")
        del lines[start:end]


def _repaired(text: str) -> tuple[str, list[str]]:
    """The stub text, each top-level block that does not parse repaired: a class loses the
    members that do not parse (as ``Class.member``), anything else fails."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line[:1] not in ("", " ", "\t", "\n", "#")]
    starts.append(len(lines))
    out, dropped = [], []
    for a, b in itertools.pairwise(starts):
        block = "".join(lines[a:b])
        try:
            ast.parse(block)
            out.append(block)
        except SyntaxError:
            name = re.match(r"class (\w+)", block)
            if name is None:
                raise
            fixed, members = _drop_broken_members(block)
            dropped.extend(f"{name.group(1)}.{m}" for m in members)
            out.append(fixed)
    return "".join(lines[: starts[0]]) + "".join(out), dropped


def test_repair_keeps_valid_classes_and_only_replaces_broken_ones() -> None:
    text = ("import typing\n"
            "class Good:\n    def f(self, x: int) -> int: ...\n"
            "class Bad:\n    @typing.overload\n    def g(self, in: int) -> None:\n"
            "        \"\"\"doc\n\n        more\"\"\"\n"
            "    def k(self) -> int: ...\n"
            "def h() -> None: ...\n")
    repaired, dropped = _repaired(text)
    assert dropped == ["Bad.g"]
    assert "def f(self, x: int) -> int" in repaired and "def h() -> None" in repaired
    assert "def k(self) -> int" in repaired and "overload" not in repaired
    ast.parse(repaired)


@pytest.mark.skipif(_stub_dirs() is None,
                    reason="tensorrt-stubs not installed (make setup installs it with --no-deps)")
def test_tensorrt_engine_type_checks_against_the_published_stubs(tmp_path: Path) -> None:
    found = _stub_dirs()
    assert found is not None
    bindings, package = found
    stubs = tmp_path / "stubs"
    (stubs / "tensorrt_bindings").mkdir(parents=True)
    (stubs / "tensorrt").mkdir()
    text, dropped = _repaired((bindings / "tensorrt.pyi").read_text())
    # Only members mlserve does not call may be lost (plugin interfaces, add_scale_nd, ...).
    source = (ROOT / "python" / "mlserve" / "tensorrt_engine.py").read_text()
    called = set(re.findall(r"\.(\w+)\(", source))
    assert not {d.split(".")[1] for d in dropped} & called, dropped
    (stubs / "tensorrt_bindings" / "tensorrt.pyi").write_text(text)
    for name in ("__init__.pyi",):
        (stubs / "tensorrt_bindings" / name).write_text(
            (bindings / name).read_text() if (bindings / name).is_file() else "")
    (stubs / "tensorrt" / "__init__.pyi").write_text((package / "__init__.pyi").read_text())

    # The project's mypy settings (pyproject.toml), with the stubs on the path and their own
    # style (untyped dunders, pybind11 leftovers) not reported.
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    ini = tmp_path / "mypy.ini"
    ini.write_text(
        "[mypy]\n"
        f"python_version = {settings['python_version']}\n"
        f"mypy_path = {ROOT / settings['mypy_path']}:{stubs}\n"
        f"strict = {settings['strict']}\n"
        f"ignore_missing_imports = {settings['ignore_missing_imports']}\n"
        "follow_imports = silent\n"
        "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]\n"
        "ignore_errors = True\n")
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ini), "--cache-dir",
           str(tmp_path / "mypy-cache"), str(ROOT / "python" / "mlserve" / "tensorrt_engine.py")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    # The stubs were used (a call that contradicts them fails): checked once by hand, and here
    # by the reveal of one of their types.
    probe = tmp_path / "probe.py"
    probe.write_text("from __future__ import annotations\nimport tensorrt as trt\n"
                     "def f(c: trt.IExecutionContext) -> None:\n"
                     "    c.set_tensor_address('x', 'not an address')\n")
    bad = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ini),
                          "--cache-dir", str(tmp_path / "mypy-cache"), str(probe)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "set_tensor_address" in bad.stdout, bad.stdout
