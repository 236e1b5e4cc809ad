"""NetworkConfig defaults, environment and validation."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from switchy.stack import config as config_module
from switchy.stack.config import (
    ENV_PREFIX,
    OTHER_ENV_VARIABLES,
    NetworkConfig,
    unknown_env_variables,
)
from switchy.stack.errors import InvalidConfiguration

ROOT = Path(__file__).resolve().parent.parent


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


def _unknown_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "switchy.stack.config" and r.levelno == logging.WARNING
    ]


def test_an_unknown_variable_warns_once_naming_the_closest_known_one(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_module, "_warned", set())
    env = {"SWITCHY_DIAL_TIMOUT": "5", "SWITCHY_ZZZZZZ": "1", "SWITCHY_DIAL_TIMEOUT": "2"}
    with caplog.at_level(logging.WARNING, logger="switchy.stack.config"):
        c = NetworkConfig.from_env(env)
        NetworkConfig.from_env(env)  # the same names again: no second warning
    assert c.dial_timeout == 2.0  # the known one is read, the typo ignored
    assert _unknown_warnings(caplog) == [
        "unknown environment variable SWITCHY_DIAL_TIMOUT ignored "
        "(did you mean SWITCHY_DIAL_TIMEOUT?)",
        "unknown environment variable SWITCHY_ZZZZZZ ignored",
    ]
    assert unknown_env_variables({"SWITCHY_LOGLEVEL": "x", "OTHER_THING": "y"}) == {
        "SWITCHY_LOGLEVEL": "SWITCHY_LOG_LEVEL"
    }


def test_known_variables_never_warn(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every field's variable and every variable read elsewhere is known (values valid)."""
    monkeypatch.setattr(config_module, "_warned", set())
    env = {ENV_PREFIX + f.name.upper(): "" for f in attrs.fields(NetworkConfig)}
    env |= dict.fromkeys(OTHER_ENV_VARIABLES, "1")
    assert unknown_env_variables(env) == {}
    with caplog.at_level(logging.WARNING, logger="switchy.stack.config"):
        NetworkConfig.from_env({name: "1" for name in OTHER_ENV_VARIABLES})
    assert _unknown_warnings(caplog) == []


#: A ``SWITCHY_*`` name used as a variable: quoted, in backticks, or assigned (``X=1``).
_NAMED = re.compile(r"(?:(?<=[\"'`])(SWITCHY_[A-Z0-9_]+))|(?:\b(SWITCHY_[A-Z0-9_]+)(?==))")


def test_every_variable_the_code_base_reads_or_documents_is_known() -> None:
    """No ``SWITCHY_*`` name in the sources, tests, benchmarks, examples or docs would be
    warned about: a variable read somewhere new must join OTHER_ENV_VARIABLES (and the
    test suite, which sets such variables, warns about none)."""
    suffixes = {".py", ".md", ".sh", ".toml", ".yml"}
    files = [ROOT / ".ci" / "run"]
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__")) and d not in {"build", "dist"}]
        files += [Path(folder, n) for n in names if Path(n).suffix in suffixes]
    files.remove(Path(__file__).resolve())  # the typos the tests above make on purpose
    named: dict[str, str] = {}
    for path in files:
        for m in _NAMED.finditer(path.read_text(errors="replace")):
            named.setdefault(m.group(1) or m.group(2), str(path.relative_to(ROOT)))
    assert "SWITCHY_LOG_LEVEL" in named and "SWITCHY_LIMITS" in named  # the scan sees them
    unknown = {n: where for n, where in named.items() if n in unknown_env_variables(named)}
    assert unknown == {}


def test_the_command_line_warns_about_a_mistyped_variable() -> None:
    env = {"PATH": "/usr/bin:/bin", "SWITCHY_MAX_OUTBOUND_PER_I": "3"}
    r = subprocess.run(
        [sys.executable, "-m", "switchy", "limits", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("SWITCHY_MAX_OUTBOUND_PER_I ") == 1
    assert "did you mean SWITCHY_MAX_OUTBOUND_PER_IP?" in r.stderr
