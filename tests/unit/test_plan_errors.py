"""Every bad plan of docs/feature_plan.md ("Errors") raises InvalidInput naming the feature.

Each case is a valid two-feature plan with one thing broken in the feature under test, whose
name is distinctive so the message can be matched loosely. Bad inputs to transform (wrong width,
not 2-D) raise InvalidInput too.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import numpy as np
import pytest
from mlserve import FeaturePlan
from mlserve.errors import InvalidInput

BAD = "bad_feature_7"
NAN = float("nan")
INF = float("inf")

_GOOD: dict[str, Any] = {
    "name": "good_feature",
    "kind": "numeric",
    "ops": [{"op": "standardize", "mean": 0.0, "std": 1.0}],
    "histogram": {"edges": [-INF, 0.0, INF]},
}


def _numeric(ops: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"features": [_GOOD, {"name": BAD, "kind": "numeric", "ops": ops, **extra}]}


def _categorical(ops: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"features": [_GOOD, {"name": BAD, "kind": "categorical", "ops": ops, **extra}]}


def _edges(edges: list[float]) -> dict[str, Any]:
    return _numeric([], histogram={"edges": edges})


ONEHOT = {"op": "onehot", "size": 3}
HASH = {"op": "hash_bucket", "n": 8}

BAD_PLANS: dict[str, dict[str, Any]] = {
    # unknown op / kind
    "unknown numeric op": _numeric([{"op": "sqrt"}]),
    "unknown categorical op": _categorical([{"op": "embed", "dim": 4}]),
    "unknown kind": {"features": [_GOOD, {"name": BAD, "kind": "text", "ops": []}]},
    # missing, NaN or inf parameters
    "impute without value": _numeric([{"op": "impute"}]),
    "clip without hi": _numeric([{"op": "clip", "lo": 0.0}]),
    "standardize without std": _numeric([{"op": "standardize", "mean": 1.0}]),
    "minmax without lo": _numeric([{"op": "minmax", "hi": 1.0}]),
    "hash without n": _categorical([{"op": "hash_bucket"}]),
    "onehot without size or vocabulary": _categorical([{"op": "onehot"}]),
    "impute NaN": _numeric([{"op": "impute", "value": NAN}]),
    "impute inf": _numeric([{"op": "impute", "value": INF}]),
    "categorical impute NaN": _categorical([{"op": "impute", "value": NAN}, ONEHOT]),
    "clip lo NaN": _numeric([{"op": "clip", "lo": NAN, "hi": 1.0}]),
    "clip hi -inf": _numeric([{"op": "clip", "lo": 0.0, "hi": -INF}]),
    "clip hi inf": _numeric([{"op": "clip", "lo": 0.0, "hi": INF}]),
    "standardize mean NaN": _numeric([{"op": "standardize", "mean": NAN, "std": 1.0}]),
    "standardize mean inf": _numeric([{"op": "standardize", "mean": -INF, "std": 1.0}]),
    "standardize std inf": _numeric([{"op": "standardize", "mean": 0.0, "std": INF}]),
    "standardize std NaN": _numeric([{"op": "standardize", "mean": 0.0, "std": NAN}]),
    "minmax hi inf": _numeric([{"op": "minmax", "lo": 0.0, "hi": INF}]),
    "minmax lo NaN": _numeric([{"op": "minmax", "lo": NAN, "hi": 1.0}]),
    # std <= 0, lo >= hi
    "std zero": _numeric([{"op": "standardize", "mean": 0.0, "std": 0.0}]),
    "std negative": _numeric([{"op": "standardize", "mean": 0.0, "std": -2.0}]),
    "clip lo == hi": _numeric([{"op": "clip", "lo": 1.0, "hi": 1.0}]),
    "clip lo > hi": _numeric([{"op": "clip", "lo": 2.0, "hi": 1.0}]),
    "minmax lo == hi": _numeric([{"op": "minmax", "lo": 5.0, "hi": 5.0}]),
    "minmax lo > hi": _numeric([{"op": "minmax", "lo": 10.0, "hi": -10.0}]),
    # empty vocabulary / size or n < 1
    "empty vocabulary": _categorical([{"op": "onehot", "vocabulary": []}]),
    "onehot size 0": _categorical([{"op": "onehot", "size": 0}]),
    "onehot size negative": _categorical([{"op": "onehot", "size": -2}]),
    "onehot size != len(vocabulary)": _categorical(
        [{"op": "onehot", "size": 2, "vocabulary": ["a", "b", "c"]}]
    ),
    "hash n 0": _categorical([{"op": "hash_bucket", "n": 0}]),
    "hash n negative": _categorical([{"op": "hash_bucket", "n": -3}]),
    # categorical structure
    "categorical without ops": _categorical([]),
    "categorical with only impute": _categorical([{"op": "impute", "value": 0.0}]),
    "two encodings": _categorical([ONEHOT, HASH]),
    "two onehots": _categorical([ONEHOT, ONEHOT]),
    "clip before onehot": _categorical([{"op": "clip", "lo": 0.0, "hi": 3.0}, ONEHOT]),
    "log1p before hash": _categorical([{"op": "log1p"}, HASH]),
    "standardize before onehot": _categorical(
        [{"op": "impute", "value": 0.0}, {"op": "standardize", "mean": 0.0, "std": 1.0}, ONEHOT]
    ),
    "op after encoding": _categorical([ONEHOT, {"op": "impute", "value": 0.0}]),
    # numeric with an encoding
    "numeric with onehot": _numeric([ONEHOT]),
    "numeric with hash": _numeric([{"op": "log1p"}, HASH]),
    # histogram edges
    "edges equal": _edges([0.0, 1.0, 1.0, 2.0]),
    "edges decreasing": _edges([2.0, 1.0]),
    "edges single": _edges([0.0]),
    "edges empty": _edges([]),
    "edges NaN": _edges([0.0, NAN, 1.0]),
    "edges +inf inside": _edges([0.0, INF, INF]),
    "edges +inf first": _edges([INF, 0.0, 1.0]),
    "edges -inf last": _edges([0.0, 1.0, -INF]),
    "edges -inf twice": _edges([-INF, -INF, 0.0]),
}


@pytest.mark.parametrize("spec", list(BAD_PLANS.values()), ids=list(BAD_PLANS))
def test_bad_plan_names_the_feature(spec: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match=re.escape(BAD)):
        FeaturePlan(copy.deepcopy(spec))


def test_duplicate_feature_names() -> None:
    spec = {
        "features": [
            _GOOD,
            {"name": BAD, "kind": "numeric", "ops": []},
            {"name": BAD, "kind": "numeric", "ops": [{"op": "log1p"}]},
        ]
    }
    with pytest.raises(InvalidInput, match=re.escape(BAD)):
        FeaturePlan(spec)


def test_output_order_unknown_name() -> None:
    spec = {"features": [_GOOD], "output_order": ["good_feature", "ghost_feature_9"]}
    with pytest.raises(InvalidInput, match="ghost_feature_9"):
        FeaturePlan(spec)


def test_output_order_duplicate_name() -> None:
    spec = {
        "features": [_GOOD, {"name": BAD, "kind": "numeric", "ops": []}],
        "output_order": [BAD, "good_feature", BAD],
    }
    with pytest.raises(InvalidInput, match=re.escape(BAD)):
        FeaturePlan(spec)


def test_bad_plan_from_json_string() -> None:
    with pytest.raises(InvalidInput, match=re.escape(BAD)):
        FeaturePlan(
            json.dumps(
                {
                    "features": [
                        {
                            "name": BAD,
                            "kind": "numeric",
                            "ops": [{"op": "standardize", "mean": 0, "std": 0}],
                        }
                    ]
                }
            )
        )


def test_valid_plans_still_build() -> None:
    # The helpers above build valid plans when nothing is broken.
    plan = FeaturePlan(_numeric([{"op": "clip", "lo": 0.0, "hi": 1.0}]))
    assert plan.f_in == 2 and plan.f_out == 2
    plan = FeaturePlan(_categorical([{"op": "impute", "value": 0.0}, ONEHOT], histogram=True))
    assert plan.f_out == 1 + 4


@pytest.fixture(scope="module")
def plan() -> FeaturePlan:
    return FeaturePlan(_categorical([HASH], histogram=True))


@pytest.mark.parametrize("shape", [(4, 1), (4, 3), (0, 3), (1, 0), (0, 0)])
def test_transform_wrong_width(plan: FeaturePlan, shape: tuple[int, int]) -> None:
    with pytest.raises(InvalidInput):
        plan.transform(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("shape", [(2,), (0,), (), (2, 2, 1), (1, 1, 2)])
def test_transform_not_2d(plan: FeaturePlan, shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInput):
        plan.transform(np.zeros(shape, dtype=np.float32))
    with pytest.raises(InvalidInput):
        plan.transform(np.zeros(shape, dtype=np.float32), histograms=True)


def test_failed_transform_counts_nothing(plan: FeaturePlan) -> None:
    plan.histograms(reset=True)
    with pytest.raises(InvalidInput):
        plan.transform(np.zeros((5, 3), dtype=np.float32), histograms=True)
    snap = plan.histograms(reset=True)
    assert snap["rows"] == 0
    assert int(np.asarray(snap["features"][BAD]["counts"]).sum()) == 0
