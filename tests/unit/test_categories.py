"""Unknown-category policies (mlserve.categories) against a plain-Python reference, and their
use by the server's row building (ServedVersion.rows) and by bundle loading."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlserve import FeaturePlan
from mlserve.bundle import MANIFEST, ModelBundle
from mlserve.categories import UNKNOWN_POLICIES, CategoryEncoder, parse_feature_policies
from mlserve.errors import InvalidInput
from mlserve.server.codecs import Tensor
from mlserve.server.models import ServedVersion

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Short strings over an alphabet with the awkward cases: NUL (numpy drops trailing NULs), a
#: multi-byte character, and the empty string.
TEXT = st.text(alphabet=st.sampled_from(["a", "b", "\x00", "é", "€", " "]), max_size=4)


class Unknown(Exception):
    """The reference's "error" outcome, with the unknown values."""


def reference_codes(
    values: list[Any], vocabulary: list[str], policy: str, empty_is_missing: bool
) -> list[float]:
    """The mapping in plain Python: a dict, one lookup per value."""
    index = {v: float(i) for i, v in enumerate(vocabulary)}
    out: list[float] = []
    unknown: list[str] = []
    for value in values:
        key = value.decode("utf-8") if isinstance(value, bytes) else value
        if key in index:
            out.append(index[key])
        elif empty_is_missing and key == "":
            out.append(math.nan)
        else:
            unknown.append(key)
            out.append(-1.0 if policy == "oov" else math.nan)
    if unknown and policy == "error":
        raise Unknown(unknown)
    return out


def assert_codes_equal(got: np.ndarray, want: list[float]) -> None:
    assert got.dtype == np.float32 and got.shape == (len(want),)
    np.testing.assert_array_equal(got, np.array(want, dtype=np.float32))


@PROPERTY
@given(
    vocabulary=st.lists(TEXT, min_size=1, max_size=6),
    extra=st.lists(TEXT, max_size=4),
    data=st.data(),
    policy=st.sampled_from(UNKNOWN_POLICIES),
    empty_is_missing=st.booleans(),
    as_bytes=st.booleans(),
    as_numpy_strings=st.booleans(),
)
def test_encode_strings_matches_the_reference(
    vocabulary: list[str],
    extra: list[str],
    data: st.DataObject,
    policy: str,
    empty_is_missing: bool,
    as_bytes: bool,
    as_numpy_strings: bool,
) -> None:
    values = data.draw(st.lists(st.sampled_from(vocabulary + extra + [""]), max_size=40))
    items: list[Any] = [v.encode("utf-8") for v in values] if as_bytes else list(values)
    array = np.array(items, dtype=object)
    if as_numpy_strings and not any(v.endswith("\x00") for v in values):
        array = np.array(items, dtype=bytes if as_bytes else str)  # numpy's fixed-width form
    encoder = CategoryEncoder("channel", vocabulary=vocabulary, unknown=policy)
    try:
        want = reference_codes(items, vocabulary, policy, empty_is_missing)
    except Unknown as exc:
        with pytest.raises(InvalidInput, match="input 'channel': unknown categor") as info:
            encoder.encode_strings(array, empty_is_missing=empty_is_missing)
        assert any(repr(u) in str(info.value) for u in exc.args[0])
        return
    assert_codes_equal(encoder.encode_strings(array, empty_is_missing=empty_is_missing), want)


@PROPERTY
@given(
    vocabulary=st.lists(st.integers(-3, 3).map(str), min_size=1, max_size=4),
    values=st.lists(st.integers(-5, 5), max_size=30),
    policy=st.sampled_from(UNKNOWN_POLICIES),
)
def test_integer_category_values_match_the_reference(
    vocabulary: list[str], values: list[int], policy: str
) -> None:
    encoder = CategoryEncoder("k", vocabulary=vocabulary, unknown=policy)
    try:
        want = reference_codes([str(v) for v in values], vocabulary, policy, False)
    except Unknown:
        with pytest.raises(InvalidInput, match="input 'k'"):
            encoder.encode_integers(np.array(values, dtype=np.int64))
        return
    assert_codes_equal(encoder.encode_integers(np.array(values, dtype=np.int64)), want)


CODES = st.sampled_from([0.0, 1.0, 2.0, 3.0, -1.0, 1.5, 7.0, math.nan, math.inf, -math.inf])


@PROPERTY
@given(
    codes=st.lists(CODES, max_size=30),
    size=st.integers(1, 4),
    policy=st.sampled_from(UNKNOWN_POLICIES),
)
def test_check_codes_matches_the_reference(codes: list[float], size: int, policy: str) -> None:
    encoder = CategoryEncoder("c", size=size, unknown=policy)
    x = np.array(codes, dtype=np.float32)
    unknown = [not math.isnan(c) and c not in range(size) for c in codes]
    if policy == "error" and any(unknown):
        outside = rf"input 'c': category codes? .* outside 0\.\.{size - 1}"
        with pytest.raises(InvalidInput, match=outside):
            encoder.check_codes(x)
        return
    got = encoder.check_codes(x)
    if policy == "oov" or not any(unknown):
        assert got is x  # nothing to change: no copy
        return
    want = [math.nan if u else c for c, u in zip(codes, unknown, strict=True)]
    np.testing.assert_array_equal(got, np.array(want, dtype=np.float32))


def test_error_message_names_values_truncated_and_some_known_ones() -> None:
    vocabulary = [f"v{i}" for i in range(12)]
    encoder = CategoryEncoder("country", vocabulary=vocabulary, unknown="error")
    values = np.array([b"v1", b"X" * 100, *[f"u{i}".encode() for i in range(7)]], dtype=object)
    with pytest.raises(InvalidInput) as info:
        encoder.encode_strings(values)
    message = str(info.value)
    assert message.startswith("input 'country': unknown categories ")
    assert "'" + "X" * 39 + "…'" in message and "X" * 41 not in message
    assert "and 3 more" in message and "in 8 of 9 rows" in message
    assert "known categories: 'v0', 'v1', 'v2', 'v3', 'v4' and 7 more" in message


def test_bytes_that_are_not_utf8_are_refused_under_every_policy() -> None:
    for policy in UNKNOWN_POLICIES:
        encoder = CategoryEncoder("c", vocabulary=["a"], unknown=policy)
        with pytest.raises(InvalidInput, match="UTF-8"):
            encoder.encode_strings(np.array([b"a", b"\xff"], dtype=object))
        with pytest.raises(InvalidInput, match="UTF-8"):
            encoder.encode_strings(np.array([b"a", 3], dtype=object))


def test_mixed_and_unhashable_string_objects_map_by_their_text() -> None:
    encoder = CategoryEncoder("c", vocabulary=["a", "b"], unknown="missing")
    mixed = np.array([b"a", "b", bytearray(b"b"), memoryview(b"a"), "z"], dtype=object)
    np.testing.assert_array_equal(encoder.encode_strings(mixed), [0.0, 1.0, 1.0, 0.0, np.nan])


def test_policies_that_do_not_fit_their_input_are_refused() -> None:
    with pytest.raises(InvalidInput, match="choose one of oov, missing, error"):
        CategoryEncoder("c", vocabulary=["a"], unknown="drop")
    with pytest.raises(InvalidInput, match="not nullable"):
        CategoryEncoder("c", vocabulary=["a"], unknown="missing", nullable=False)
    hashed = {"name": "m", "kind": "categorical", "ops": [{"op": "hash_bucket", "n": 8}]}
    with pytest.raises(InvalidInput, match="hash_bucket"):
        CategoryEncoder.for_input({"name": "m", "kind": "categorical", "unknown": "error"}, hashed)
    assert CategoryEncoder.for_input({"name": "m", "kind": "categorical"}, hashed) is not None
    with pytest.raises(InvalidInput, match="numeric"):
        CategoryEncoder.for_input({"name": "x", "kind": "numeric", "unknown": "oov"})
    assert parse_feature_policies("a:error, b=missing", "w") == {"a": "error", "b": "missing"}
    with pytest.raises(InvalidInput, match="named twice"):
        parse_feature_policies(["a:error", "a:oov"], "w")
    with pytest.raises(InvalidInput, match="FEATURE:POLICY"):
        parse_feature_policies("a", "w")


# ---- the server's row building -----------------------------------------------------------------

PLAN: dict[str, Any] = {
    "features": [
        {"name": "amount", "kind": "numeric", "ops": [{"op": "impute", "value": 0.0}]},
        {"name": "channel", "kind": "categorical",
         "ops": [{"op": "onehot", "vocabulary": ["web", "pos", "app"]}]},
        {"name": "level", "kind": "categorical", "ops": [{"op": "onehot", "size": 4}]},
    ]
}


def served(channel: str | None, level: str | None, *, fmt: int = 2) -> ServedVersion:
    """A ServedVersion over PLAN whose signature gives these policies (None: no field)."""
    inputs: list[dict[str, Any]] = [
        {"name": "amount", "dtype": "float32", "kind": "numeric", "nullable": True},
        {"name": "channel", "dtype": "string", "kind": "categorical", "nullable": True,
         "vocabulary": ["web", "pos", "app"]},
        {"name": "level", "dtype": "int64", "kind": "categorical", "nullable": True},
    ]
    for spec, policy in zip(inputs[1:], (channel, level), strict=True):
        if policy is not None:
            spec["unknown"] = policy
    manifest = {"format_version": fmt, "preprocessing": PLAN, "signature": {"inputs": inputs}}
    engine = SimpleNamespace(bundle=ModelBundle(Path("."), manifest), plan=FeaturePlan(PLAN))
    return ServedVersion(engine, "m", "1", "m")  # type: ignore[arg-type]


def per_input(channel: list[bytes], level: list[int]) -> list[Tensor]:
    n = len(channel)
    return [
        Tensor("amount", "FP32", [n], np.ones(n, np.float32)),
        Tensor("channel", "BYTES", [n], np.array(channel, dtype=object)),
        Tensor("level", "INT64", [n], np.array(level, dtype=np.int64)),
    ]


def test_rows_apply_each_inputs_policy() -> None:
    # Without the field (a version 1 bundle): unseen strings and codes go to the OOV slot.
    x = served(None, None, fmt=1).rows(per_input([b"pos", b"tv", b""], [1, 9, -1]))
    np.testing.assert_array_equal(x[:, 1], [1.0, -1.0, np.nan])  # "" is missing
    np.testing.assert_array_equal(x[:, 2], [1.0, 9.0, -1.0])  # codes pass, the plan's OOV
    # "missing": NaN, exactly as if the caller had sent a missing value.
    x = served("missing", "missing").rows(per_input([b"pos", b"tv", b""], [1, 9, -1]))
    np.testing.assert_array_equal(x[:, 1], [1.0, np.nan, np.nan])
    np.testing.assert_array_equal(x[:, 2], [1.0, np.nan, np.nan])
    # "error": refused, naming the input and the value; known values still pass.
    strict = served("error", "error")
    with pytest.raises(InvalidInput, match=r"input 'channel': unknown category 'tv' .*'web'"):
        strict.rows(per_input([b"pos", b"tv"], [1, 2]))
    with pytest.raises(InvalidInput, match=r"input 'level': category code 9 .* outside 0\.\.3"):
        strict.rows(per_input([b"pos", b"app"], [1, 9]))
    np.testing.assert_array_equal(strict.rows(per_input([b"app"], [3]))[0], [1.0, 2.0, 3.0])
    # Integer category values of a vocabulary input follow the policy too.
    ints = [Tensor("amount", "FP32", [1], np.ones(1, np.float32)),
            Tensor("channel", "INT32", [1], np.array([5], np.int32)),
            Tensor("level", "INT64", [1], np.array([0], np.int64))]
    with pytest.raises(InvalidInput, match="unknown category '5'"):
        strict.rows(ints)


def test_matrix_codes_follow_the_policy_without_touching_the_request() -> None:
    codes = np.array([[1.0, 0.0, 3.0], [2.0, 7.0, -1.0], [3.0, np.nan, 1.5]], np.float32)
    codes.setflags(write=False)  # like a tensor decoded from the request body
    matrix = [Tensor("rows", "FP32", [3, 3], codes)]
    np.testing.assert_array_equal(served("oov", "oov").rows(matrix), codes)
    x = served("missing", "missing").rows(matrix)
    np.testing.assert_array_equal(x[:, 1:], [[0.0, 3.0], [np.nan, np.nan], [np.nan, np.nan]])
    with pytest.raises(InvalidInput, match=r"input 'channel': category code 7 in 1 of 3 rows"):
        served("error", "oov").rows(matrix)
    assert served("error", "oov").metadata(["1"])["inputs"][1]["parameters"] == {
        "kind": "categorical", "nullable": True, "unknown": "error"}


def test_bundle_formats_and_policies_at_load(tmp_path: Path) -> None:
    def write(manifest: dict[str, Any]) -> Path:
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        root.mkdir()
        (root / MANIFEST).write_text(json.dumps({"preprocessing": PLAN, "artifacts": {},
                                                 **manifest}))
        return root

    inputs = [{"name": "amount", "kind": "numeric"},
              {"name": "channel", "kind": "categorical", "vocabulary": ["web", "pos", "app"]},
              {"name": "level", "kind": "categorical"}]
    old = ModelBundle.load(write({"format_version": 1, "signature": {"inputs": inputs}}))
    assert [e.unknown if e else None for e in old.category_encoders()] == [None, "oov", "oov"]
    with pytest.raises(InvalidInput, match="format_version 3; this mlserve reads 1, 2"):
        ModelBundle.load(write({"format_version": 3}))
    bad = [inputs[0], {**inputs[1], "unknown": "ignore"}, inputs[2]]
    with pytest.raises(InvalidInput, match="input 'channel': unknown-category policy 'ignore'"):
        ModelBundle.load(write({"format_version": 2, "signature": {"inputs": bad}}))
