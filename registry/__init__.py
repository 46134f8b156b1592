"""mlserve.registry: versioned, checksummed model bundles with aliases, tags, runs and an audit
history (issue 3).

Public surface: :class:`Registry`, the value types :class:`ModelVersion`, :class:`ModelSummary`,
:class:`HistoryEvent`, :class:`Run`, and :func:`parse_ref` / :class:`Ref` for references
(``NAME``, ``NAME/3``, ``NAME@alias``). Storage layout and crash safety: ``registry.py``.
"""

from __future__ import annotations

from .records import HistoryEvent, ModelSummary, ModelVersion, Run
from .refs import Ref, parse_ref
from .registry import Registry

__all__ = [
    "HistoryEvent",
    "ModelSummary",
    "ModelVersion",
    "Ref",
    "Registry",
    "Run",
    "parse_ref",
]
