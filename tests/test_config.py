"""NetworkConfig defaults, environment and validation."""

from __future__ import annotations

import attrs
import pytest

from switchy.stack.config import NetworkConfig
from switchy.stack.errors import InvalidConfiguration


def test_defaults() -> None:
    c = NetworkConfig()
    assert c.max_message_size == 1024 * 1024
    assert c.initial_stream_window == 256 * 1024
    assert c.dial_timeout > 0


def test_from_env_reads_prefixed_variables() -> None:
    c = NetworkConfig.from_env({"SWITCHY_MAX_MESSAGE_SIZE": "2048", "SWITCHY_DIAL_TIMEOUT": "2.5"})
    assert c.max_message_size == 2048
    assert c.dial_timeout == 2.5


def test_overrides_win_over_env() -> None:
    c = NetworkConfig.from_env({"SWITCHY_MAX_MESSAGE_SIZE": "2048"}, max_message_size=7)
    assert c.max_message_size == 7


@pytest.mark.parametrize(
    "env",
    [
        {"SWITCHY_DIAL_TIMEOUT": "soon"},
        {"SWITCHY_MAX_MESSAGE_SIZE": "1.5"},
        {"SWITCHY_MAX_MESSAGE_SIZE": "0"},
        {"SWITCHY_DIAL_TIMEOUT": "-1"},
        {"SWITCHY_MAX_STREAM_WINDOW": "1"},
    ],
)
def test_bad_values_name_the_problem(env: dict[str, str]) -> None:
    with pytest.raises(InvalidConfiguration):
        NetworkConfig.from_env(env)


def test_unknown_override_is_a_configuration_error() -> None:
    with pytest.raises(InvalidConfiguration):
        NetworkConfig.from_env({}, no_such_field=1)


def test_evolve_validates() -> None:
    with pytest.raises(InvalidConfiguration):
        attrs.evolve(NetworkConfig(), close_timeout=0)
