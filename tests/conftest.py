"""Shared test configuration."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.register_profile("ci", parent=settings.get_profile("default"), max_examples=100)
settings.load_profile("default")


# In-process pytester runs (the conformance tests) restore sys.modules afterwards, so a
# module first imported inside such a run is imported again later, and two copies of a
# class break isinstance checks (cryptography's Rust core: "curve must be an
# EllipticCurve instance", "Extension not supported").  Load the whole package (and
# what it imports) before any such run.
def _import_the_package() -> None:
    import importlib
    import pkgutil

    import switchy

    for module in pkgutil.walk_packages(switchy.__path__, "switchy."):
        if ".conformance.test_" not in module.name:
            importlib.import_module(module.name)


_import_the_package()


@pytest.fixture(autouse=True)
def _private_config_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The CLI's default key file (``$XDG_CONFIG_HOME/switchy``) goes to a temporary
    folder: tests never read or write the user's identity (subprocesses inherit it)."""
    saved = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("XDG_CONFIG_HOME", None)
        else:
            os.environ["XDG_CONFIG_HOME"] = saved


@pytest.fixture(autouse=True, scope="session")
def _no_unknown_variable_warnings() -> Iterator[None]:
    """The suite sets ``SWITCHY_*`` variables, never an unknown one: no test may make
    ``NetworkConfig.from_env`` warn about a typo (tests that check the warning swap in
    their own record of warned names)."""
    from switchy.stack import config

    yield
    assert not config._warned, f"unknown SWITCHY_* variables were warned about: {config._warned}"


#: Test modules of HTTP over switchy: each of their tests runs with both HTTP/1.1 parsers.
_HTTP_TEST_MODULES = ("test_http_", "test_example_migration", "test_tunnel_baseline")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the HTTP tests with h11 and with httptools (when installed)."""
    name = metafunc.module.__name__.rpartition(".")[2]
    both = name.startswith(_HTTP_TEST_MODULES) and name != "test_http_fast"  # that one: both
    if "http_parser" in metafunc.fixturenames and both:
        metafunc.parametrize("http_parser", ["h11", "httptools"], indirect=True)


@pytest.fixture(autouse=True)
def http_parser(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The HTTP/1.1 parser of this test (``None``: left as it is); subprocesses (the CLI
    tests) get it through ``SWITCHY_HTTP_PARSER``."""
    wanted = getattr(request, "param", None)
    if wanted is None:
        yield None
        return
    from switchy.protocols.http import core

    if wanted == "httptools":
        pytest.importorskip("httptools")
    saved, saved_env = core.HTTP_PARSER, os.environ.get(core.HTTP_PARSER_ENV)
    core.HTTP_PARSER = wanted
    os.environ[core.HTTP_PARSER_ENV] = wanted
    try:
        yield wanted
    finally:
        core.HTTP_PARSER = saved
        if saved_env is None:
            os.environ.pop(core.HTTP_PARSER_ENV, None)
        else:
            os.environ[core.HTTP_PARSER_ENV] = saved_env
