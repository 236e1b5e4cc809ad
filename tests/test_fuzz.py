"""A short run of every fuzz harness in fuzz/ (atheris, coverage-guided), from its seeds.

Each harness runs in its own process for ``SWITCHY_FUZZ_SECONDS`` seconds (default 12)
and must not find an input that raises anything but the library's own errors
(``P2PError``).  Longer runs: ``python fuzz/run.py --seconds 600``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))
from run import harnesses, run_harness  # noqa: E402

SECONDS = float(os.environ.get("SWITCHY_FUZZ_SECONDS", "12"))

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (pip install -e '.[fuzz]'; it has wheels for "
    "CPython on Linux only)",
)


def test_every_parser_has_a_harness_and_seeds() -> None:
    names = harnesses()
    assert {
        "negotiation",
        "noise",
        "yamux",
        "identify",
        "envelope",
        "relay",
        "discovery",
        "router",
        "quic",
        "tls",
        "mdns",
    } <= set(names)
    for name in names:
        assert any((FUZZ / "corpus" / name).iterdir()), f"no seeds for {name}"


@pytest.mark.timeout(SECONDS + 180)
@pytest.mark.parametrize("name", harnesses())
def test_harness_finds_no_crash(name: str) -> None:
    result = run_harness(name, SECONDS)
    print(f"{name}: {result.executions} executions, cov {result.coverage}, ft {result.features}")
    assert not result.crashed, result.output[-8000:]
    assert result.executions > 0 and result.coverage > 0, result.output[-4000:]
