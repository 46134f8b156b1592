"""Pure-numpy reference of the feature plan (docs/feature_plan.md), written from the doc alone.

The property tests compare ``mlserve.FeaturePlan`` against these functions, so this module must
never import mlserve. It follows the doc literally: numeric ops run in float32 on parameters
rounded to float32 (``1/std`` and ``1/(hi - lo)`` computed in float64, then rounded), categorical
codes are encoded from the float32 value left after the optional impute, and histograms are taken
on the raw float32 input. It does not validate plans (that is the core's job): give it valid
specs only. Every function is pure and vectorised over rows; nothing is shared or cached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Spec = Mapping[str, Any]
Feature = Mapping[str, Any]

ENCODINGS = ("onehot", "hash_bucket")

_SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_SPLITMIX_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_SPLITMIX_MUL2 = np.uint64(0x94D049BB133111EB)
# float32 holds 2**63 exactly, so comparing float32 codes against it is exact.
_TWO_POW_63 = np.float32(2.0**63)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer of the doc on a uint64 array, arithmetic mod 2**64."""
    x = np.array(x, dtype=np.uint64)
    # uint64 products wrap by design; numpy only warns for 0-d operands, silence it there.
    with np.errstate(over="ignore"):
        x = x + _SPLITMIX_GAMMA
        x = (x ^ (x >> np.uint64(30))) * _SPLITMIX_MUL1
        x = (x ^ (x >> np.uint64(27))) * _SPLITMIX_MUL2
        return np.asarray(x ^ (x >> np.uint64(31)), dtype=np.uint64)


def as_input(x: Any) -> np.ndarray:
    """Converts an input batch as the API does: C-contiguous float32, 2-D."""
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2:
        raise ValueError(f"input must be 2-D, got shape {arr.shape}")
    return arr


def encoding_op(feature: Feature) -> Mapping[str, Any] | None:
    """The encoding op of a categorical feature (its last op), or None for a numeric one."""
    if feature["kind"] != "categorical":
        return None
    op = feature["ops"][-1]
    assert op["op"] in ENCODINGS, f"feature {feature['name']!r}: last op must be an encoding"
    return op


def onehot_size(op: Mapping[str, Any]) -> int:
    """Vocabulary size of a onehot op: len(vocabulary) when given, else size."""
    if "vocabulary" in op:
        return len(op["vocabulary"])
    return int(op["size"])


def feature_width(feature: Feature) -> int:
    """Output columns of a feature when it is in the output."""
    op = encoding_op(feature)
    if op is None:
        return 1
    if op["op"] == "onehot":
        return onehot_size(op) + 1
    return int(op["n"])


def output_order(spec: Spec) -> list[str]:
    """Names of the features that make the output, in output order."""
    if spec.get("output_order") is not None:
        return list(spec["output_order"])
    return [f["name"] for f in spec["features"]]


def _features_by_name(spec: Spec) -> dict[str, tuple[int, Feature]]:
    return {f["name"]: (i, f) for i, f in enumerate(spec["features"])}


def output_names(spec: Spec) -> list[str]:
    """Column names as in docs/python_api.md: amount, channel=web, channel=<oov>, id#3."""
    by_name = _features_by_name(spec)
    names: list[str] = []
    for name in output_order(spec):
        feature = by_name[name][1]
        op = encoding_op(feature)
        if op is None:
            names.append(name)
        elif op["op"] == "onehot":
            if "vocabulary" in op:
                names.extend(f"{name}={word}" for word in op["vocabulary"])
            else:
                names.extend(f"{name}={slot}" for slot in range(onehot_size(op)))
            names.append(f"{name}=<oov>")
        else:
            names.extend(f"{name}#{bucket}" for bucket in range(int(op["n"])))
    return names


def f_out(spec: Spec) -> int:
    by_name = _features_by_name(spec)
    return sum(feature_width(by_name[name][1]) for name in output_order(spec))


def _nudge(v: np.ndarray, ulps: int) -> np.ndarray:
    """Moves finite values ``ulps`` float32 steps up (ulps > 0) or down (ulps < 0)."""
    target = np.float32(np.inf if ulps > 0 else -np.inf)
    out = v
    for _ in range(abs(ulps)):
        out = np.where(np.isfinite(out), np.nextafter(out, target), out)
    return out


def apply_numeric_ops(
    ops: Sequence[Mapping[str, Any]], x: np.ndarray, log1p_ulps: int = 0
) -> np.ndarray:
    """Runs a numeric op chain on a float32 column, in float32.

    log1p is computed in float64 and rounded to float32 (the correctly rounded float32 result in
    all but astronomically rare cases). ``log1p_ulps`` moves every finite log1p result that many
    float32 steps; since every op is non-decreasing (std > 0, hi > lo), running the chain with
    -k and +k brackets an implementation whose float32 log1p is within k ulps of ours.
    """
    v = np.array(x, dtype=np.float32)
    # NaN and inf are part of the contract (log1p(x < -1) is NaN, log1p(-1) is -inf, inf - inf).
    with np.errstate(all="ignore"):
        for op in ops:
            kind = op["op"]
            if kind == "impute":
                v = np.where(np.isnan(v), np.float32(op["value"]), v)
            elif kind == "clip":
                v = np.minimum(np.maximum(v, np.float32(op["lo"])), np.float32(op["hi"]))
            elif kind == "log1p":
                v = np.log1p(v.astype(np.float64)).astype(np.float32)
                if log1p_ulps:
                    v = _nudge(v, log1p_ulps)
            elif kind == "standardize":
                mean = np.float32(op["mean"])
                scale = np.float32(1.0 / float(op["std"]))
                v = (v - mean) * scale
            elif kind == "minmax":
                lo = np.float32(op["lo"])
                scale = np.float32(1.0 / (float(op["hi"]) - float(op["lo"])))
                v = (v - lo) * scale
            else:
                raise ValueError(f"not a numeric op: {kind!r}")
            v = np.asarray(v, dtype=np.float32)
    return v


def _integral(code: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(code) & (np.floor(code) == code)


def onehot_slots(code: np.ndarray, size: int) -> np.ndarray:
    """Slot per value: the code when integral and in [0, size), else size (the OOV slot)."""
    code = np.asarray(code, dtype=np.float32)
    ok = _integral(code) & (code >= 0) & (code < size)
    slots = np.full(code.shape, size, dtype=np.int64)
    slots[ok] = code[ok].astype(np.int64)
    return slots


def hash_slots(code: np.ndarray, n: int) -> np.ndarray:
    """Bucket per value: splitmix64(uint64(int64(code))) mod n, or -1 when the code gets none."""
    code = np.asarray(code, dtype=np.float32)
    ok = _integral(code) & (np.abs(code) < _TWO_POW_63)
    slots = np.full(code.shape, -1, dtype=np.int64)
    as_u64 = code[ok].astype(np.int64).view(np.uint64)
    slots[ok] = (splitmix64(as_u64) % np.uint64(n)).astype(np.int64)
    return slots


def _encode(op: Mapping[str, Any], code: np.ndarray) -> np.ndarray:
    n = code.shape[0]
    width = onehot_size(op) + 1 if op["op"] == "onehot" else int(op["n"])
    block = np.zeros((n, width), dtype=np.float32)
    if op["op"] == "onehot":
        slots = onehot_slots(code, onehot_size(op))
    else:
        slots = hash_slots(code, int(op["n"]))
    rows = np.nonzero(slots >= 0)[0]
    block[rows, slots[rows]] = 1.0
    return block


def _feature_block(feature: Feature, column: np.ndarray, log1p_ulps: int) -> np.ndarray:
    op = encoding_op(feature)
    if op is None:
        return apply_numeric_ops(feature["ops"], column, log1p_ulps)[:, None]
    code = apply_numeric_ops(feature["ops"][:-1], column)
    return _encode(op, code)


def _transform(spec: Spec, x: Any, log1p_ulps: int) -> np.ndarray:
    arr = as_input(x)
    by_name = _features_by_name(spec)
    if arr.shape[1] != len(by_name):
        raise ValueError(f"input has {arr.shape[1]} columns, the plan {len(by_name)}")
    blocks = [np.zeros((arr.shape[0], 0), dtype=np.float32)]
    for name in output_order(spec):
        index, feature = by_name[name]
        blocks.append(_feature_block(feature, arr[:, index], log1p_ulps))
    return np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)


def reference_transform(spec: Spec, x: Any) -> np.ndarray:
    """The plan's output for input x: float32 [n, f_out]."""
    return _transform(spec, x, 0)


def reference_transform_bounds(spec: Spec, x: Any, ulps: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper outputs when every log1p is off by ``ulps`` float32 steps down / up.

    Identical to reference_transform for columns without log1p. Used to accept a core whose
    log1pf differs from the correctly rounded value by a few ulps, which long op chains (log1p
    near -1, cancellation in standardize) can amplify beyond any fixed tolerance.
    """
    return _transform(spec, x, -ulps), _transform(spec, x, ulps)


def _numeric_histogram(edges_in: Sequence[float], raw: np.ndarray) -> dict[str, Any]:
    edges = np.asarray(edges_in, dtype=np.float64).astype(np.float32)
    k = edges.shape[0] - 1
    nan = np.isnan(raw)
    bins = np.searchsorted(edges, raw[~nan], side="right") - 1
    inside = (bins >= 0) & (bins < k)
    return {
        "kind": "numeric",
        "edges": edges,
        "counts": np.bincount(bins[inside], minlength=k).astype(np.int64),
        "underflow": int(np.count_nonzero(bins < 0)),
        "overflow": int(np.count_nonzero(bins >= k)),
        "nan": int(np.count_nonzero(nan)),
    }


def _categorical_histogram(op: Mapping[str, Any], raw: np.ndarray) -> dict[str, Any]:
    if op["op"] == "onehot":
        size = onehot_size(op)
        present = ~np.isnan(raw)
        slots = onehot_slots(raw[present], size)
        width = size + 1
    else:
        width = int(op["n"])
        slots = hash_slots(raw, width)
        # No slot: NaN, +-inf, fractional codes and (finite, integral) |code| >= 2**63.
        present = slots >= 0
        slots = slots[present]
    return {
        "kind": "categorical",
        "encoding": op["op"],
        "counts": np.bincount(slots, minlength=width).astype(np.int64),
        "missing": int(np.count_nonzero(~present)),
    }


def has_histogram(feature: Feature) -> bool:
    hist = feature.get("histogram")
    return hist is not None and hist is not False


def reference_histograms(spec: Spec, x: Any) -> dict[str, Any]:
    """The histogram snapshot after one transform of x (format of docs/python_api.md).

    Every feature that declares a histogram is counted on its raw input column, whether or not
    it is in output_order.
    """
    arr = as_input(x)
    features: dict[str, Any] = {}
    for index, feature in enumerate(spec["features"]):
        if not has_histogram(feature):
            continue
        raw = arr[:, index]
        op = encoding_op(feature)
        if op is None:
            features[feature["name"]] = _numeric_histogram(feature["histogram"]["edges"], raw)
        else:
            features[feature["name"]] = _categorical_histogram(op, raw)
    return {"rows": int(arr.shape[0]), "features": features}


def empty_histograms(spec: Spec) -> dict[str, Any]:
    """The snapshot right after a reset: every counter zero."""
    n_features = len(spec["features"])
    return reference_histograms(spec, np.zeros((0, n_features), dtype=np.float32))


def add_histograms(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Sum of two snapshots of the same plan (what two transforms accumulate)."""
    features: dict[str, Any] = {}
    for name, ha in a["features"].items():
        hb = b["features"][name]
        merged = dict(ha)
        merged["counts"] = ha["counts"] + hb["counts"]
        for key in ("underflow", "overflow", "nan", "missing"):
            if key in ha:
                merged[key] = ha[key] + hb[key]
        features[name] = merged
    return {"rows": a["rows"] + b["rows"], "features": features}


def assert_same_histograms(got: Mapping[str, Any], want: Mapping[str, Any]) -> None:
    """Two snapshots (FeaturePlan.histograms() or reference_histograms) count the same."""
    assert int(got["rows"]) == int(want["rows"])
    assert sorted(got["features"]) == sorted(want["features"])
    for name, w in want["features"].items():
        g = got["features"][name]
        assert g["kind"] == w["kind"], name
        np.testing.assert_array_equal(
            np.asarray(g["counts"]), np.asarray(w["counts"]), err_msg=f"{name}: counts"
        )
        for key in ("underflow", "overflow", "nan", "missing"):
            if key in w:
                assert int(g[key]) == int(w[key]), f"{name}: {key}"


def encoded_column_mask(spec: Spec) -> np.ndarray:
    """Per output column: True for onehot/hash_bucket columns (exactly 0.0 or 1.0)."""
    by_name = _features_by_name(spec)
    mask: list[bool] = []
    for name in output_order(spec):
        feature = by_name[name][1]
        mask.extend([encoding_op(feature) is not None] * feature_width(feature))
    return np.array(mask, dtype=bool)


def log1p_column_mask(spec: Spec) -> np.ndarray:
    """Per output column: True for numeric columns whose op chain contains log1p."""
    by_name = _features_by_name(spec)
    mask: list[bool] = []
    for name in output_order(spec):
        feature = by_name[name][1]
        uses_log1p = encoding_op(feature) is None and any(
            op["op"] == "log1p" for op in feature["ops"]
        )
        mask.extend([uses_log1p] * feature_width(feature))
    return np.array(mask, dtype=bool)
