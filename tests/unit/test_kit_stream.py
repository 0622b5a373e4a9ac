"""chat_kit.stream without a server: settings from the environment, the
config they give, and what counts as a difference from a live stream."""

from __future__ import annotations

import dataclasses

import pytest
from nats.js.api import RePublish

from chat_contract import subjects
from chat_kit.settings import SettingsError
from chat_kit.stream import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_BYTES,
    StreamSettings,
    chat_stream_config,
    differences,
)


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHAT_STREAM_REPLICAS", "CHAT_STREAM_MAX_AGE", "CHAT_STREAM_MAX_BYTES"):
        monkeypatch.delenv(name, raising=False)
    assert StreamSettings.from_env() == StreamSettings(1, DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES)
    assert (DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES) == (7 * 86400, 1 << 30)
    monkeypatch.setenv("CHAT_STREAM_REPLICAS", "3")
    monkeypatch.setenv("CHAT_STREAM_MAX_AGE", "3600")
    monkeypatch.setenv("CHAT_STREAM_MAX_BYTES", "0")
    assert StreamSettings.from_env() == StreamSettings(3, 3600.0, 0)
    monkeypatch.setenv("CHAT_STREAM_MAX_BYTES", "-5")
    with pytest.raises(SettingsError, match="CHAT_STREAM_MAX_BYTES"):
        StreamSettings.from_env()


def test_config_is_a_bounded_window_that_never_refuses_a_send() -> None:
    config = chat_stream_config(StreamSettings(3, 3600.0, 1024))
    assert (config.num_replicas, config.max_age, config.max_bytes) == (3, 3600.0, 1024)
    assert config.discard is not None and config.discard.value == "old"
    assert config.duplicate_window == 120.0
    unlimited = chat_stream_config(StreamSettings(1, 0, 0))
    assert unlimited.max_age is None and unlimited.max_bytes == -1
    # JetStream refuses a duplicate window longer than max_age.
    assert chat_stream_config(StreamSettings(1, 5.0, 0)).duplicate_window == 5.0


def test_differences_ignore_spelling_and_name_each_change() -> None:
    wanted = chat_stream_config(StreamSettings(1, 0, 0))
    # What the server sends back for "no limit" is 0 / -1, not None.
    live = dataclasses.replace(wanted, max_age=0.0, max_bytes=-1,
                               subjects=list(wanted.subjects or []))
    assert differences(live, wanted) == {}
    live = dataclasses.replace(wanted, num_replicas=3, max_bytes=4096,
                               republish=RePublish(src=">", dest="x.>"))
    assert set(differences(live, wanted)) == {"num_replicas", "max_bytes", "republish"}
    assert differences(live, wanted)["num_replicas"] == {"live": 3, "configured": 1}


def test_one_stream_holds_every_room_by_default() -> None:
    one = StreamSettings()
    assert one.names() == [subjects.CHAT_STREAM]
    assert one.stream_for_room("general") == one.stream_for_room("dm-a-b") == subjects.CHAT_STREAM
