"""mlserve.features: the feature store (issue 5). Definitions (entities, feature views,
feature services) in a versioned registry; an offline Parquet store with point-in-time correct
``historical_features``; an online LMDB store with batched, TTL-enforcing lookups.

Public surface: :class:`FeatureStore` (the facade), the definitions :class:`Entity`,
:class:`Column`, :class:`FeatureView`, :class:`FeatureService`, :class:`ViewSelection`,
:func:`load_definitions`, and the results :class:`OnlineFeatures`, :class:`RowStatus`,
:class:`ServiceReader`, :class:`ApplyChange`, :class:`IngestResult`. Importing this package
does not import pandas or pyarrow (the offline side loads them on first use). Design, file
layout and encodings: docs/features.md.
"""

from __future__ import annotations

from .declarations import load_definitions
from .definitions import Column, Entity, FeatureService, FeatureView, ViewSelection, feature_name
from .lookup import OnlineFeatures, ServiceReader
from .online import OnlineStore, RowStatus
from .registry import ApplyChange
from .store import FeatureStore, IngestResult

__all__ = [
    "ApplyChange",
    "Column",
    "Entity",
    "FeatureService",
    "FeatureStore",
    "FeatureView",
    "IngestResult",
    "OnlineFeatures",
    "OnlineStore",
    "RowStatus",
    "ServiceReader",
    "ViewSelection",
    "feature_name",
    "load_definitions",
]
