"""Pieces of the entity-keyed serving path that need no server: stored category codes through a
categorical input's vocabulary and policy, and the service a bundle's lineage names."""

from __future__ import annotations

import numpy as np
import pytest
from mlserve.categories import CategoryEncoder
from mlserve.errors import InvalidInput
from mlserve.server.feature_join import _CodeMap, lineage_service


def test_stored_codes_map_through_the_trained_vocabulary() -> None:
    encoder = CategoryEncoder("v__segment", vocabulary=["3", "0", "1"])
    got = _CodeMap(encoder)(np.array([0.0, 3.0, np.nan, 1.0], np.float32))
    np.testing.assert_array_equal(got, np.array([1.0, 0.0, np.nan, 2.0], np.float32))
    # The same as the general path for integer category values.
    want = encoder.encode_integers(np.array([0, 3, 1]))
    np.testing.assert_array_equal(got[[0, 1, 3]], want)


@pytest.mark.parametrize(("policy", "expected"), [("oov", -1.0), ("missing", np.nan)])
def test_unseen_stored_codes_follow_the_unknown_category_policy(policy: str,
                                                                expected: float) -> None:
    encoder = CategoryEncoder("v__segment", vocabulary=["0", "1"], unknown=policy)
    got = _CodeMap(encoder)(np.array([1.0, 7.0, -1.0], np.float32))
    np.testing.assert_array_equal(got, np.array([1.0, expected, expected], np.float32))


def test_unseen_stored_code_with_policy_error_is_a_400() -> None:
    encoder = CategoryEncoder("v__segment", vocabulary=["0", "1"], unknown="error")
    with pytest.raises(InvalidInput, match="input 'v__segment': unknown category '7'"):
        _CodeMap(encoder)(np.array([1.0, 7.0], np.float32))


def test_lineage_service() -> None:
    assert lineage_service({}) is None
    assert lineage_service({"feature_views": []}) is None
    assert lineage_service({"feature_service": {"name": "fraud", "version": 3}}) == "fraud/3"
    with pytest.raises(InvalidInput, match="integer version"):
        lineage_service({"feature_service": {"name": "fraud", "version": "3"}})
