"""The realistic feature plan the scenarios use, synthetic rows for it, and a numpy version.

``realistic_plan_spec()`` is a plan as a tabular fraud/credit model would ship it (docs/
feature_plan.md): 16 numeric features with impute/clip/log1p/standardize (or minmax) chains,
half of them with histogram edges, and 4 categorical ones (onehot of sizes 4, 12 and 30, one
hash_bucket of 32): f_in = 20, f_out = 97. ``NumpyPlan`` is the baseline: the same plan written
as a user would in vectorized numpy (np.where, np.clip, np.log1p, arithmetic, one-hot by
indexing), with histograms by searchsorted + bincount. NumpyPlan holds its histogram counters
without a lock: use one instance per thread.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_NUMERIC = (
    "amount",
    "balance",
    "credit_limit",
    "income",
    "age_days",
    "tenure_days",
    "n_txn_1h",
    "n_txn_24h",
    "n_txn_7d",
    "avg_amount_7d",
    "max_amount_7d",
    "distance_km",
    "device_age_days",
    "failed_logins_24h",
    "session_seconds",
    "risk_score",
)
_CATEGORICAL_ONEHOT = (("channel", 4), ("country_group", 12), ("mcc_group", 30))
_HASHED = ("merchant_id", 32)
_NAN_FRACTION = 0.02


def realistic_plan_spec() -> dict[str, Any]:
    """The plan spec (a JSON-able dict); deterministic."""
    features: list[dict[str, Any]] = []
    for i, name in enumerate(_NUMERIC):
        scale = 10.0 ** (1 + i % 4)
        kind = i % 4
        ops: list[dict[str, Any]]
        if kind == 0:  # money-like: heavy tail
            ops = [
                {"op": "impute", "value": 0.0},
                {"op": "clip", "lo": 0.0, "hi": 50.0 * scale},
                {"op": "log1p"},
                {"op": "standardize", "mean": math.log1p(scale), "std": 1.3},
            ]
        elif kind == 1:  # bounded duration
            ops = [{"op": "impute", "value": scale}, {"op": "minmax", "lo": 0.0, "hi": 10 * scale}]
        elif kind == 2:  # counts
            ops = [
                {"op": "impute", "value": 0.0},
                {"op": "clip", "lo": 0.0, "hi": 100.0 * scale},
                {"op": "log1p"},
            ]
        else:  # roughly normal
            ops = [
                {"op": "clip", "lo": -5.0 * scale, "hi": 5.0 * scale},
                {"op": "standardize", "mean": 0.5 * scale, "std": scale},
                {"op": "impute", "value": 0.0},
            ]
        feature: dict[str, Any] = {"name": name, "kind": "numeric", "ops": ops}
        if i % 2 == 0:
            edges = [-math.inf, *(scale * 10.0 ** (k - 2) for k in range(5)), math.inf]
            feature["histogram"] = {"edges": edges}
        features.append(feature)
    for j, (name, size) in enumerate(_CATEGORICAL_ONEHOT):
        cat: dict[str, Any] = {
            "name": name,
            "kind": "categorical",
            "ops": [{"op": "impute", "value": 0}, {"op": "onehot", "size": size}],
        }
        if j != 1:
            cat["histogram"] = True
        features.append(cat)
    features.append(
        {
            "name": _HASHED[0],
            "kind": "categorical",
            "ops": [{"op": "hash_bucket", "n": _HASHED[1]}],
            "histogram": True,
        }
    )
    return {"features": features}


def make_rows(spec: dict[str, Any], n: int, seed: int = 0) -> np.ndarray:
    """``n`` raw rows for ``spec``: float32 [n, f_in], C-contiguous, about 2% NaN per column,
    numeric values spread across the clip bounds, codes partly out of vocabulary."""
    rng = np.random.default_rng(seed)
    feats = spec["features"]
    x = np.empty((n, len(feats)), dtype=np.float32)
    for j, f in enumerate(feats):
        if f["kind"] == "numeric":
            scale = 10.0 ** (1 + j % 4)
            col = rng.lognormal(mean=math.log(scale), sigma=1.5, size=n)
            col[rng.random(n) < 0.05] *= -1.0
        else:
            enc = f["ops"][-1]
            if enc["op"] == "onehot":
                col = rng.integers(0, enc["size"] + 2, size=n).astype(np.float64)
            else:
                col = rng.integers(0, 1_000_000, size=n).astype(np.float64)
        col[rng.random(n) < _NAN_FRACTION] = np.nan
        x[:, j] = col
    return x


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = x ^ (x >> np.uint64(31))
    return out


class NumpyPlan:
    """The plan of ``spec`` in plain vectorized numpy: the baseline of the scenarios."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.features: list[dict[str, Any]] = list(spec["features"])
        names = [f["name"] for f in self.features]
        self.output_order: list[int] = [
            names.index(name) for name in spec.get("output_order", names)
        ]
        self.f_in = len(self.features)
        self.counters: dict[str, np.ndarray] = {}
        self.rows_counted = 0

    def transform(self, x: np.ndarray, histograms: bool = False) -> np.ndarray:
        """float32 [n, f_out] of raw rows ``x`` (float32 [n, f_in])."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        blocks: list[np.ndarray] = []
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for j in self.output_order:
                blocks.append(self._feature(self.features[j], x[:, j]))
            if histograms:
                self._count(x)
        return np.concatenate(blocks, axis=1)

    def _feature(self, f: dict[str, Any], v: np.ndarray) -> np.ndarray:
        n = v.shape[0]
        for op in f["ops"]:
            name = op["op"]
            if name == "impute":
                v = np.where(np.isnan(v), np.float32(op["value"]), v)
            elif name == "clip":
                v = np.clip(v, np.float32(op["lo"]), np.float32(op["hi"]))
            elif name == "log1p":
                v = np.log1p(v)
            elif name == "standardize":
                v = (v - np.float32(op["mean"])) * np.float32(1.0 / op["std"])
            elif name == "minmax":
                v = (v - np.float32(op["lo"])) * np.float32(1.0 / (op["hi"] - op["lo"]))
            elif name == "onehot":
                size = int(op.get("size", len(op.get("vocabulary", ()))))
                ok = (v >= 0) & (v < size) & (v == np.floor(v))
                slot = np.where(ok, v, size).astype(np.int64)
                out = np.zeros((n, size + 1), dtype=np.float32)
                out[np.arange(n), slot] = 1.0
                return out
            elif name == "hash_bucket":
                return self._hash_bucket(v, int(op["n"]))
            else:
                raise ValueError(f"feature {f['name']!r}: unknown op {name!r}")
        return v.reshape(n, 1)

    @staticmethod
    def _hash_slots(v: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
        ok = np.isfinite(v) & (v == np.floor(v)) & (np.abs(v) < 2.0**63)
        codes = np.where(ok, v, 0).astype(np.int64).astype(np.uint64)
        return ok, (_splitmix64(codes) % np.uint64(buckets)).astype(np.int64)

    def _hash_bucket(self, v: np.ndarray, buckets: int) -> np.ndarray:
        ok, slot = self._hash_slots(v, buckets)
        out = np.zeros((v.shape[0], buckets), dtype=np.float32)
        rows = np.nonzero(ok)[0]
        out[rows, slot[rows]] = 1.0
        return out

    def _count(self, x: np.ndarray) -> None:
        self.rows_counted += x.shape[0]
        for j, f in enumerate(self.features):
            hist = f.get("histogram")
            if not hist:
                continue
            v = x[:, j]
            if f["kind"] == "numeric":
                edges = np.asarray(hist["edges"], dtype=np.float32)
                nan = np.isnan(v)
                # bin 0 = underflow, 1..k = counts, k+1 = overflow, k+2 = nan
                idx = np.searchsorted(edges, v, side="right")
                idx[nan] = len(edges) + 1
                counts = np.bincount(idx, minlength=len(edges) + 2)
            else:
                enc = f["ops"][-1]
                nan = np.isnan(v)
                if enc["op"] == "onehot":
                    size = int(enc.get("size", len(enc.get("vocabulary", ()))))
                    ok = (v >= 0) & (v < size) & (v == np.floor(v))
                    slot = np.where(ok, v, size).astype(np.int64)
                    slot[nan] = size + 1  # last bin: missing
                    counts = np.bincount(slot, minlength=size + 2)
                else:
                    buckets = int(enc["n"])
                    ok, slot = self._hash_slots(v, buckets)
                    slot[~ok] = buckets
                    counts = np.bincount(slot, minlength=buckets + 1)
            prev = self.counters.get(f["name"])
            self.counters[f["name"]] = counts if prev is None else prev + counts
