"""ServerSettings: the environment round trip that --workers N relies on, and bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlserve.errors import InvalidInput
from mlserve.server.settings import ServerSettings, split_model_spec


def test_settings_survive_the_environment_round_trip() -> None:
    settings = ServerSettings(models=("fraud@champion",), inline_max_compute_us=0,
                              instance_count=2, max_queue_delay_us=50, access_log_sample=0.5,
                              forwarded_allow_ips="10.0.0.1")
    back = ServerSettings.from_env(settings.to_env())
    assert back.inline_max_compute_us == 0
    assert back.batcher_config() == settings.batcher_config()
    assert back.batcher_config().inline_max_compute_us == 0
    assert ServerSettings.from_env({}).batcher_config().inline_max_compute_us == 1000


def test_negative_inline_bound_is_refused() -> None:
    with pytest.raises(InvalidInput, match="inline_max_compute_us"):
        ServerSettings(inline_max_compute_us=-1)


def test_model_specs_of_bundle_paths(tmp_path: Path) -> None:
    bundle = tmp_path / "run:3"
    bundle.mkdir()
    # An existing bundle directory is one ref, whatever ':' it holds; a backend suffix still
    # parses after a path that does not exist as written.
    assert split_model_spec(str(bundle)) == (str(bundle), None)
    assert split_model_spec(f"{tmp_path / 'b'}:torch") == (str(tmp_path / "b"), "torch")
    assert split_model_spec("fraud@champion:cpu") == ("fraud@champion", "cpu")
    # Worker processes get the refs comma-joined: a ',' cannot travel there.
    ServerSettings(models=("/models/a,b",))
    with pytest.raises(InvalidInput, match="cannot contain ','"):
        ServerSettings(models=("/models/a,b",), workers=2)


def test_prediction_log_settings_survive_the_round_trip_and_are_checked() -> None:
    settings = ServerSettings(prediction_log="s3://bucket/log", prediction_log_flush_s=2.5,
                              prediction_log_sample=0.25)
    back = ServerSettings.from_env(settings.to_env())
    assert (back.prediction_log, back.prediction_log_flush_s, back.prediction_log_sample) == (
        "s3://bucket/log", 2.5, 0.25)
    assert ServerSettings.from_env({}).prediction_log is None
    with pytest.raises(InvalidInput, match="prediction_log_sample"):
        ServerSettings(prediction_log_sample=0.0)
    with pytest.raises(InvalidInput, match="prediction_log_flush_s"):
        ServerSettings(prediction_log_flush_s=0.0)
