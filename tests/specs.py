"""Plan specs shared by the tests (no mlserve import: the numpy reference uses them too)."""

from __future__ import annotations

import copy
from typing import Any

#: The example plan of docs/feature_plan.md, exactly.
_DOC_SPEC: dict[str, Any] = {
    "features": [
        {
            "name": "amount",
            "kind": "numeric",
            "ops": [
                {"op": "impute", "value": 0.0},
                {"op": "clip", "lo": 0.0, "hi": 5000.0},
                {"op": "log1p"},
                {"op": "standardize", "mean": 3.2, "std": 1.1},
            ],
            "histogram": {"edges": [float("-inf"), 1.0, 10.0, 100.0, float("inf")]},
        },
        {"name": "age_days", "kind": "numeric", "ops": [{"op": "minmax", "lo": 0, "hi": 3650}]},
        {
            "name": "channel",
            "kind": "categorical",
            "ops": [
                {"op": "impute", "value": 0},
                {"op": "onehot", "vocabulary": ["web", "pos", "app"]},
            ],
            "histogram": True,
        },
        {"name": "merchant_id", "kind": "categorical", "ops": [{"op": "hash_bucket", "n": 16}]},
    ],
    "output_order": ["amount", "age_days", "channel", "merchant_id"],
}


def doc_spec(*, histograms: bool | None = None) -> dict[str, Any]:
    """A fresh copy of the docs' example plan.

    histograms: None keeps the doc's histograms; True also counts every categorical feature
    (merchant_id); False removes them all.
    """
    spec = copy.deepcopy(_DOC_SPEC)
    if histograms is not None:
        for f in spec["features"]:
            if histograms is False:
                f.pop("histogram", None)
            elif f["kind"] == "categorical":
                f["histogram"] = True
    return spec
