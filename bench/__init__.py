"""Benchmark harness of mlserve: ``python -m bench <scenario> [--quick]`` from the repo root.

Each scenario measures mlserve against a baseline timed in the same run and returns a plain
result dict; the harness (``bench.report``) adds the machine description and writes JSON,
Markdown and a PNG under ``bench/results/``. Benchmarks are never assertions in the test suite.
"""

from __future__ import annotations
