"""Feature definitions declared in a TOML file, the form ``mlserve features apply FILE`` reads.

    [[entity]]
    name = "user"
    join_keys = ["user_id"]
    dtype = "int64"                      # or "string"; a list gives one dtype per join key

    [[feature_view]]
    name = "user_stats"
    entity = "user"
    ttl_seconds = 172800                 # optional; no TTL when absent
    source = "user_stats.parquet"        # optional; what `ingest VIEW` reads by default
    columns = { tx_count_24h = "int", avg_amount_7d = "float" }
    # or: columns = [{ name = "home_country", dtype = "categorical", vocabulary = ["US", "GB"] }]

    [[feature_service]]
    name = "fraud"
    views = ["user_stats", { view = "merchant_stats", columns = ["risk"], version = 2 }]

Relative ``source`` paths are taken relative to the file. Pure functions; thread-safe.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib

from mlserve.errors import InvalidInput

from .definitions import Definition, Entity, FeatureService, FeatureView

_SECTIONS = ("entity", "feature_view", "feature_service")


def parse_definitions(data: Mapping[str, Any], *, base_dir: Path | None = None
                      ) -> list[Definition]:
    """Definitions from a parsed TOML document (entities, then views, then services)."""
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise InvalidInput(f"unknown section(s) {', '.join(map(repr, unknown))}; expected "
                           f"[[entity]], [[feature_view]], [[feature_service]]")
    out: list[Definition] = []
    for section in _SECTIONS:
        items = data.get(section, [])
        if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
            raise InvalidInput(f"[{section}] must be an array of tables: write [[{section}]]")
        for item in items:
            if section == "entity":
                out.append(Entity.from_dict(item))
            elif section == "feature_view":
                source = item.get("source")
                if isinstance(source, str) and base_dir is not None and "://" not in source \
                        and not os.path.isabs(source):
                    item = {**item, "source": str(base_dir / source)}
                out.append(FeatureView.from_dict(item))
            else:
                out.append(FeatureService.from_dict(item))
    if not out:
        raise InvalidInput("no definitions: expected [[entity]], [[feature_view]] or "
                           "[[feature_service]] tables")
    return out


def load_definitions(path: str | os.PathLike[str]) -> list[Definition]:
    """Definitions declared in the TOML file at ``path`` (InvalidInput naming the file)."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"{file}: no such definitions file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{file}: not valid TOML: {exc}") from None
    try:
        return parse_definitions(data, base_dir=file.resolve().parent)
    except InvalidInput as exc:
        raise InvalidInput(f"{file}: {exc}") from None
