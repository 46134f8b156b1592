"""Runs a registered scenario at a level and writes its record (JSON, Markdown, PNG).

The one entry point shared by the command line (``bench.__main__``) and the smoke test.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import time
from pathlib import Path
from typing import Any

from bench import registry, report

logger = logging.getLogger(__name__)


def run_scenario(
    name: str, level: str, out_dir: Path = report.DEFAULT_OUT
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Runs scenario ``name`` at ``level`` (see ``registry.LEVELS``); returns (record, paths)."""
    if level not in registry.LEVELS:
        raise ValueError(f"level must be one of {registry.LEVELS}, got {level!r}")
    scenario = registry.get(name)
    started = dt.datetime.now(dt.timezone.utc)
    logger.info("running %s (%s)", name, level)
    gc.collect()
    t0 = time.perf_counter()
    result = scenario.run(level)
    duration_s = time.perf_counter() - t0
    record = report.make_record(name, scenario.summary, level, result, started, duration_s)
    paths = report.write(record, out_dir, report.utc_stamp(started))
    return record, paths
