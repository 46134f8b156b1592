"""The scenario registry: name -> function(level) -> result dict.

A scenario registers itself with ``@register``; importing ``bench.scenarios`` registers them all
in a fixed order. Scenario modules import mlserve lazily, so listing works without the
extension. Not thread-safe (registration happens at import time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Sizes of a run: "smoke" (tests, a second or two), "quick" (--quick), "full" (default).
LEVELS = ("smoke", "quick", "full")

ScenarioFn = Callable[[str], dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    """A registered benchmark."""

    name: str
    #: One line for ``--list`` and the report header.
    summary: str
    #: Runs the scenario at a level of ``LEVELS`` and returns its result dict
    #: (see ``bench.report.RESULT_KEYS``).
    run: ScenarioFn


_SCENARIOS: dict[str, Scenario] = {}


def register(name: str, summary: str) -> Callable[[ScenarioFn], ScenarioFn]:
    """Decorator: registers ``fn`` as scenario ``name``."""

    def wrap(fn: ScenarioFn) -> ScenarioFn:
        if name in _SCENARIOS:
            raise ValueError(f"scenario {name!r} is registered twice")
        _SCENARIOS[name] = Scenario(name=name, summary=summary, run=fn)
        return fn

    return wrap


def scenarios() -> dict[str, Scenario]:
    """All scenarios, in registration order."""
    from bench.scenarios import load_all

    load_all()
    return dict(_SCENARIOS)


def get(name: str) -> Scenario:
    """The scenario called ``name``; ``KeyError`` naming the known ones otherwise."""
    known = scenarios()
    if name not in known:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(known)}")
    return known[name]
