"""ServerSettings: the environment round trip that --workers N relies on, and bounds."""

from __future__ import annotations

import pytest
from mlserve.errors import InvalidInput
from mlserve.server.settings import ServerSettings


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
