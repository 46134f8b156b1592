"""Hypothesis strategies for valid feature plans (docs/feature_plan.md) and inputs that stress them.

plan_specs() draws plan dicts: numeric features with random op chains and optional histogram
edges (outer edges possibly -inf/+inf), categorical features with an optional impute and one
encoding, and an optional output_order that is a permuted subset. Parameters are drawn as float32
values so that "rounded to float32" never changes a plan's meaning. plan_inputs(spec) draws
float32 batches for a plan: n in {0, 1, a few, a few hundred}, mixing ordinary values with NaN,
+-inf, huge and negative values, values sitting exactly on edges and bounds, out-of-vocabulary
and fractional codes and big integer ids. Small batches are drawn element by element (so they
shrink); large ones from a numpy generator seeded by hypothesis. Nothing here imports mlserve.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from reference import encoding_op, onehot_size

F32_MAX = float(np.finfo(np.float32).max)
INF = float("inf")
NAN = float("nan")

#: Values every numeric column may see.
NUMERIC_SPECIALS = (
    NAN,
    INF,
    -INF,
    0.0,
    -0.0,
    1.0,
    -1.0,
    -0.5,
    -2.0,
    1e-30,
    -1e-30,
    1e30,
    -1e30,
    F32_MAX,
    -F32_MAX,
    3.4e38,
    65504.0,
)
#: Codes every categorical column may see (2**63 and -2**63 are exactly float32).
CODE_SPECIALS = (
    NAN,
    INF,
    -INF,
    -0.0,
    -1.0,
    -2.0,
    0.5,
    2.5,
    -3.5,
    1e30,
    -1e30,
    F32_MAX,
    2.0**62,
    -(2.0**62),
    2.0**63,
    -(2.0**63),
    2.0**40,
    -(2.0**40),
    16777217.0,
    123456789.0,
    4294967296.0,
)

NAMES = ("amount", "age_days", "channel", "merchant_id", "x", "score", "zip code", "e\u0301t\u00e9")


def f32(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Finite, normal float32 values in [lo, hi], as Python floats."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if lo32 < lo:
        lo32 = np.nextafter(lo32, np.float32(np.inf))
    if hi32 > hi:
        hi32 = np.nextafter(hi32, np.float32(-np.inf))
    return st.floats(
        float(lo32),
        float(hi32),
        width=32,
        allow_nan=False,
        allow_infinity=False,
        allow_subnormal=False,
    )


def f64(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Finite doubles in [lo, hi]: parameters that rounding to float32 changes."""
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def _ordered_pair(lo: float, hi: float, min_gap: float) -> st.SearchStrategy[tuple[float, float]]:
    values = st.one_of(f32(lo, hi), st.integers(-10, 10).map(float))
    pairs = st.tuples(values, values).map(sorted).map(tuple)
    return pairs.filter(lambda p: p[1] - p[0] >= min_gap)


def impute_ops() -> st.SearchStrategy[dict[str, Any]]:
    value = st.one_of(st.sampled_from([0.0, -1.0, 1.0, 100.0, 0.1]), f32(-1e6, 1e6), f64(-1e6, 1e6))
    return st.builds(lambda v: {"op": "impute", "value": v}, value)


def clip_ops() -> st.SearchStrategy[dict[str, Any]]:
    return _ordered_pair(-1e6, 1e6, 1e-3).map(lambda p: {"op": "clip", "lo": p[0], "hi": p[1]})


def log1p_ops() -> st.SearchStrategy[dict[str, Any]]:
    return st.just({"op": "log1p"})


def standardize_ops() -> st.SearchStrategy[dict[str, Any]]:
    mean = st.one_of(st.sampled_from([0.0, 3.2, -1.0]), f32(-1e4, 1e4), f64(-1e4, 1e4))
    std = st.one_of(st.sampled_from([1.0, 1.1, 3.0, 0.5]), f32(1e-3, 1e4), f64(1e-3, 1e4))
    return st.builds(lambda m, s: {"op": "standardize", "mean": m, "std": s}, mean, std)


def minmax_ops() -> st.SearchStrategy[dict[str, Any]]:
    return _ordered_pair(-1e6, 1e6, 1e-3).map(lambda p: {"op": "minmax", "lo": p[0], "hi": p[1]})


def numeric_op_chains() -> st.SearchStrategy[list[dict[str, Any]]]:
    op = st.one_of(impute_ops(), clip_ops(), log1p_ops(), standardize_ops(), minmax_ops())
    return st.lists(op, min_size=0, max_size=5)


@st.composite
def histogram_edges(draw: st.DrawFn) -> list[float]:
    """k + 1 strictly increasing edges, k >= 1; outer edges may be -inf / +inf.

    Some edges are not float32 values (e.g. 0.7), so that rounding them to float32 matters for
    inputs sitting on float32(edge); they stay strictly increasing after rounding.
    """
    value = st.one_of(
        f32(-1e4, 1e4),
        st.integers(-5, 5).map(float),
        f64(-1e4, 1e4),
        st.sampled_from([0.1, 0.7, -0.3]),
    )
    edges = sorted(draw(st.sets(value, min_size=2, max_size=8)))
    rounded = np.asarray(edges, dtype=np.float32)
    keep = np.concatenate([[True], rounded[1:] > rounded[:-1]])
    edges = [e for e, k in zip(edges, keep, strict=True) if k]
    if len(edges) < 2:
        edges = [edges[0], edges[0] + 1.0]
    if draw(st.booleans()):
        edges[0] = -INF
    if draw(st.booleans()):
        edges[-1] = INF
    return edges


@st.composite
def numeric_features(draw: st.DrawFn, name: str) -> dict[str, Any]:
    feature: dict[str, Any] = {"name": name, "kind": "numeric", "ops": draw(numeric_op_chains())}
    if draw(st.booleans()):
        feature["histogram"] = {"edges": draw(histogram_edges())}
    return feature


_WORDS = st.text(alphabet="abcxyz_019-=#\u00e9 ", min_size=1, max_size=6)


@st.composite
def encoding_ops(draw: st.DrawFn) -> dict[str, Any]:
    choice = draw(st.sampled_from(["size", "vocabulary", "both", "hash"]))
    if choice == "hash":
        return {"op": "hash_bucket", "n": draw(st.one_of(st.integers(1, 16), st.just(1024)))}
    if choice == "size":
        return {"op": "onehot", "size": draw(st.integers(1, 8))}
    vocabulary = draw(st.lists(_WORDS, min_size=1, max_size=6, unique=True))
    if choice == "both":
        return {"op": "onehot", "size": len(vocabulary), "vocabulary": vocabulary}
    return {"op": "onehot", "vocabulary": vocabulary}


@st.composite
def categorical_features(draw: st.DrawFn, name: str) -> dict[str, Any]:
    encoding = draw(encoding_ops())
    ops: list[dict[str, Any]] = []
    if draw(st.booleans()):
        top = onehot_size(encoding) + 2 if encoding["op"] == "onehot" else 2**31
        code = st.one_of(st.integers(-2, 3), st.integers(-2, top))
        ops.append({"op": "impute", "value": float(draw(code))})
    ops.append(encoding)
    feature: dict[str, Any] = {"name": name, "kind": "categorical", "ops": ops}
    if draw(st.booleans()):
        feature["histogram"] = True
    return feature


@st.composite
def plan_specs(draw: st.DrawFn, max_features: int = 6) -> dict[str, Any]:
    """A valid plan dict with 1..max_features features."""
    n_features = draw(st.integers(1, max_features))
    features = []
    for i in range(n_features):
        name = f"{draw(st.sampled_from(NAMES))}_{i}"
        if draw(st.booleans()):
            features.append(draw(numeric_features(name)))
        else:
            features.append(draw(categorical_features(name)))
    spec: dict[str, Any] = {"features": features}
    if draw(st.booleans()):
        names = draw(st.permutations([f["name"] for f in features]))
        spec["output_order"] = names[: draw(st.integers(1, len(names)))]
    return spec


# ---- inputs --------------------------------------------------------------------------------------


def _column_specials(feature: dict[str, Any]) -> list[float]:
    """Values that sit on the feature's own boundaries: edges, clip/minmax bounds, vocab ends."""
    values: list[float] = []
    op = encoding_op(feature)
    if op is None:
        values.extend(NUMERIC_SPECIALS)
        hist = feature.get("histogram")
        if isinstance(hist, dict):
            values.extend(e for e in hist["edges"] if np.isfinite(e))
        for num_op in feature["ops"]:
            values.extend(v for k, v in num_op.items() if k in ("lo", "hi", "mean", "value"))
    else:
        values.extend(CODE_SPECIALS)
        top = onehot_size(op) if op["op"] == "onehot" else int(op["n"])
        values.extend(float(c) for c in (0, top - 1, top, top + 1))
    return values


def _column_random(feature: dict[str, Any]) -> st.SearchStrategy[float]:
    op = encoding_op(feature)
    if op is None:
        return st.one_of(
            f32(-10.0, 10.0),
            f32(-1e6, 1e6),
            st.floats(width=32, allow_nan=False, allow_infinity=False),
        )
    top = onehot_size(op) if op["op"] == "onehot" else int(op["n"])
    return st.one_of(
        st.integers(-3, top + 3).map(float),
        st.integers(-(2**40), 2**40).map(lambda v: float(np.float32(v))),
        f32(-10.0, 10.0),
    )


def _column_values(feature: dict[str, Any]) -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(_column_specials(feature)), _column_random(feature))


def random_column(feature: dict[str, Any], n: int, rng: np.random.Generator) -> np.ndarray:
    """n float32 values for one feature: ~30% boundary/special values, the rest ordinary."""
    specials = np.asarray(_column_specials(feature), dtype=np.float32)
    op = encoding_op(feature)
    if op is None:
        scale = rng.choice(np.array([1.0, 10.0, 1e4, 1e30]), size=n)
        ordinary = (rng.standard_normal(n) * scale).astype(np.float32)
    else:
        top = onehot_size(op) if op["op"] == "onehot" else int(op["n"])
        small = np.where(
            rng.random(n) < 0.5, rng.integers(0, top, size=n), rng.integers(-3, top + 4, size=n)
        )
        big = rng.integers(-(2**40), 2**40, size=n)
        ordinary = np.where(rng.random(n) < 0.8, small, big).astype(np.float32)
    pick = rng.random(n) < 0.3
    return np.where(pick, specials[rng.integers(0, specials.size, size=n)], ordinary)


def random_input(spec: dict[str, Any], n: int, seed: int) -> np.ndarray:
    """A float32 [n, f_in] batch for spec from a seeded numpy generator (for large n)."""
    rng = np.random.default_rng(seed)
    columns = [random_column(f, n, rng) for f in spec["features"]]
    x = np.stack(columns, axis=1) if columns else np.zeros((n, 0))
    return np.ascontiguousarray(x, dtype=np.float32).reshape(n, len(spec["features"]))


#: Batch sizes: empty, one row, a few rows, a few hundred rows.
ROW_COUNTS = st.integers(0, 9).flatmap(
    lambda k: st.just(k) if k < 2 else st.integers(2, 8) if k < 5 else st.integers(200, 400)
)


@st.composite
def plan_inputs(
    draw: st.DrawFn, spec: dict[str, Any], n: st.SearchStrategy[int] = ROW_COUNTS
) -> np.ndarray:
    """A float32 [n, f_in] batch for spec."""
    rows = draw(n)
    features = spec["features"]
    if rows > 8:
        return random_input(spec, rows, draw(st.integers(0, 2**32 - 1)))
    columns = [draw(st.lists(_column_values(f), min_size=rows, max_size=rows)) for f in features]
    x = np.array(columns, dtype=np.float32).reshape(len(features), rows).T
    return np.ascontiguousarray(x)


@st.composite
def plans_with_inputs(
    draw: st.DrawFn, n: st.SearchStrategy[int] = ROW_COUNTS
) -> tuple[dict[str, Any], np.ndarray]:
    spec = draw(plan_specs())
    return spec, draw(plan_inputs(spec, n))


#: A numeric histogram with more edges than the warp-ballot form takes (kJitBallotMaxEdges = 30):
#: the generated code binary-searches an edge table instead.
WIDE_EDGES_SPEC: dict[str, Any] = {
    "features": [
        {
            "name": "amount",
            "kind": "numeric",
            "ops": [{"op": "clip", "lo": -100.0, "hi": 100.0}, {"op": "log1p"}],
            "histogram": {"edges": [-INF, *np.linspace(-50.0, 50.0, 38).tolist(), INF]},
        },
        {"name": "code", "kind": "categorical", "ops": [{"op": "hash_bucket", "n": 7}],
         "histogram": True},
        {"name": "unused", "kind": "numeric", "ops": [], "histogram": {"edges": [0.0, 1.0]}},
    ],
    "output_order": ["code", "amount"],
}
