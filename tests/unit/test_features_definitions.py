"""Feature definitions: validation, the TOML form, and the versioned definitions registry.

A schema change makes a new version and the old one stays readable (with its own data); TTL,
source and description change in place; services pin view versions; apply is all-or-nothing;
bad definitions fail with InvalidInput saying what and where.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlserve.errors import DefinitionNotFound, InvalidInput
from mlserve.features import (
    Column,
    Entity,
    FeatureService,
    FeatureStore,
    FeatureView,
    ViewSelection,
    load_definitions,
)

TOML = """
[[entity]]
name = "user"
join_keys = ["user_id"]
dtype = "int64"

[[feature_view]]
name = "user_stats"
entity = "user"
ttl_seconds = 3600
source = "data/user_stats.csv"
columns = { tx_count = "int", avg_amount = "float" }

[[feature_view]]
name = "user_home"
entity = "user"
columns = [{ name = "country", dtype = "categorical", vocabulary = ["US", "GB"] }]

[[feature_service]]
name = "fraud"
views = ["user_stats", { view = "user_home", columns = ["country"] }]
"""


def test_toml_declarations(tmp_path: Path) -> None:
    path = tmp_path / "defs.toml"
    path.write_text(TOML)
    entity, stats, home, service = load_definitions(path)
    assert entity == Entity("user", ["user_id"], "int64")
    assert isinstance(stats, FeatureView) and stats.entity == "user"
    assert stats.columns == (Column("tx_count", "int"), Column("avg_amount", "float"))
    assert stats.ttl_seconds == 3600.0 and stats.ttl_ns == 3600 * 10**9
    assert stats.source == str(tmp_path / "data" / "user_stats.csv")  # relative to the file
    assert isinstance(home, FeatureView)
    assert home.columns[0].vocabulary == ("US", "GB")
    assert isinstance(service, FeatureService)
    assert service.selections == (ViewSelection("user_stats"),
                                  ViewSelection("user_home", ("country",)))


@pytest.mark.parametrize(("text", "message"), [
    ("[[entity]]\nname = 'user'\njoin_keys = ['id']\ndtyp = 'int64'\n", "unknown key.*'dtyp'"),
    ("[[entity]]\nname = 'user'\njoin_keys = ['id']\ndtype = 'float'\n", "key dtype 'float'"),
    ("[[entity]]\nname = 'user'\n", "'join_keys' is required"),
    ("[[entities]]\nname = 'user'\n", "unknown section.*'entities'"),
    ("[entity]\nname = 'user'\n", r"write \[\[entity\]\]"),
    ("[[feature_view]]\nname = 'v'\nentity = 'u'\ncolumns = { a = 'double' }\n",
     "column 'a': dtype 'double'"),
    ("[[feature_view]]\nname = 'v'\nentity = 'u'\ncolumns = { event_ts = 'float' }\n",
     "reserved column name"),
    ("[[feature_view]]\nname = 'v'\nentity = 'u'\ncolumns = {}\n", "at least one column"),
    ("[[feature_view]]\nname = 'v'\nentity = 'u'\nttl_seconds = -1\ncolumns = { a = 'int' }\n",
     "ttl_seconds must be a positive number"),
    ("[[feature_view]]\nname = 'a__b'\nentity = 'u'\ncolumns = { a = 'int' }\n",
     "must not contain '__'"),
    ("[[feature_view]]\nname = '1v'\nentity = 'u'\ncolumns = { a = 'int' }\n",
     "name '1v'"),
    ("[[feature_view]]\nname = 'v'\nentity = 'u'\n"
     "columns = [{ name = 'a', dtype = 'int', vocabulary = ['x'] }]\n",
     "only categorical columns take a vocabulary"),
    ("[[feature_service]]\nname = 's'\nviews = ['a', 'a']\n", "selected more than once"),
    ("not toml =", "not valid TOML"),
    ("", "no definitions"),
])
def test_bad_declarations_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "defs.toml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=message) as info:
        load_definitions(path)
    assert str(path) in str(info.value)


def test_python_definitions_validate() -> None:
    with pytest.raises(InvalidInput, match="2 dtypes for 1 join keys"):
        Entity("user", "user_id", ["int64", "string"])
    with pytest.raises(InvalidInput, match="join keys repeat"):
        Entity("user", ["id", "id"])
    with pytest.raises(InvalidInput, match="are join keys of entity 'user'"):
        FeatureView("v", Entity("user", "user_id"), {"user_id": "int"})
    with pytest.raises(InvalidInput, match="declared more than once"):
        FeatureView("v", "user", [("a", "int"), ("a", "float")])
    with pytest.raises(InvalidInput, match="is not resolved"):
        FeatureView("v", "user", {"a": "int"}).schema()
    with pytest.raises(InvalidInput, match="NAME or NAME/VERSION"):
        FeatureService("s", ["v/zero"])
    assert Entity("pair", ["a", "b"], "string").key_dtypes == ("string", "string")


def test_apply_versions_and_old_versions_stay_readable(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    user = Entity("user", "user_id")
    v1 = FeatureView("stats", user, {"amount": "float"}, ttl_seconds=60)
    changes = store.apply([user, v1, FeatureService("svc", ["stats"])])
    assert [(c.kind, c.name, c.version, c.action) for c in changes] == [
        ("entity", "user", 1, "created"), ("view", "stats", 1, "created"),
        ("service", "svc", 1, "created")]
    store.ingest("stats", pd.DataFrame({"user_id": [1], "event_ts": ["2026-01-01T00:00:00Z"],
                                        "amount": [5.0]}))

    # Same schema, new TTL and description: updated in place, same version.
    again = store.apply([FeatureView("stats", "user", {"amount": "float"}, ttl_seconds=120,
                                     description="spend")])
    assert [(c.version, c.action) for c in again] == [(1, "updated")]
    assert store.view("stats").ttl_seconds == 120
    assert store.apply([FeatureView("stats", "user", {"amount": "float"}, ttl_seconds=120,
                                    description="spend")])[0].action == "unchanged"

    # New column: version 2; the service is re-pinned only when applied again.
    v2 = FeatureView("stats", "user", {"amount": "float", "count": "int"})
    assert store.apply([v2])[0].version == 2
    assert store.service("svc").selections == (ViewSelection("stats", ("amount",), 1),)
    svc2 = store.apply([FeatureService("svc", ["stats"])])[0]
    assert (svc2.version, svc2.action) == (2, "new version")
    assert store.service("svc").selections == (ViewSelection("stats", ("amount", "count"), 2),)
    assert store.service("svc/1").selections[0].version == 1

    # Version 1 and its data stay readable; version 2 has none yet.
    assert store.view("stats/1").column_names == ("amount",)
    entity_df = pd.DataFrame({"user_id": [1], "event_ts": ["2026-01-01T00:01:00Z"]})
    old = store.historical_features(entity_df, "svc/1")
    assert old["stats__amount"].tolist() == [5.0]
    new = store.historical_features(entity_df, "svc")
    assert new["stats__amount"].isna().all()

    listed = store.registry.list("view", all_versions=True)
    assert [(i.name, i.version) for i in listed] == [("stats", 1), ("stats", 2)]
    assert [i.version for i in store.registry.list("view")] == [2]


def test_entity_schema_change_versions_views_that_use_it(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    store.apply([Entity("user", "user_id"), FeatureView("stats", "user", {"a": "float"})])
    changes = store.apply([Entity("user", "user_id", "string"),
                           FeatureView("stats", "user", {"a": "float"})])
    assert [(c.kind, c.version, c.action) for c in changes] == [
        ("entity", 2, "new version"), ("view", 2, "new version")]
    assert store.view("stats/1").resolved_entity.key_dtypes == ("int64",)
    assert store.view("stats").resolved_entity.key_dtypes == ("string",)


def test_apply_checks_references_and_is_all_or_nothing(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    with pytest.raises(InvalidInput, match="unknown entity 'user'"):
        store.apply([FeatureView("stats", "user", {"a": "float"})])
    user = Entity("user", "user_id")
    with pytest.raises(InvalidInput, match=r"view 'stats/1' has no column\(s\) b; columns: a"):
        store.apply([user, FeatureView("stats", user, {"a": "float"}),
                     FeatureService("svc", [("stats", ["b"])])])
    assert store.registry.list("entity") == []  # nothing of the failed batch was recorded
    with pytest.raises(InvalidInput, match="unknown feature view 'other'"):
        store.apply([user, FeatureService("svc", ["other"])])
    text_user = Entity("account", "user_id", "string")
    with pytest.raises(InvalidInput, match="join key 'user_id' is int64 in entity 'user' but "
                       "string in entity 'account'"):
        store.apply([user, text_user, FeatureView("a", user, {"x": "float"}),
                     FeatureView("b", text_user, {"y": "float"}),
                     FeatureService("svc", ["a", "b"])])
    with pytest.raises(InvalidInput, match="declared more than once"):
        store.apply([user, user])
    changes = store.apply([user], dry_run=True)
    assert changes[0].action == "created" and store.registry.list("entity") == []


def test_unknown_definitions_are_not_found(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    with pytest.raises(DefinitionNotFound, match="none is registered"):
        store.view("stats")
    store.apply([Entity("user", "user_id"), FeatureView("stats", "user", {"a": "float"})])
    with pytest.raises(DefinitionNotFound, match="unknown feature view 'stats/3'"):
        store.view("stats/3")
    with pytest.raises(DefinitionNotFound, match="unknown feature service 'svc'"):
        store.service("svc")
    assert DefinitionNotFound.http_status == 404
