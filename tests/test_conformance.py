"""The conformance suite proves itself: green on every built-in part, red (with the
right contract named) on each deliberately broken one.  The suite runs the way a
third party runs it: ``pytest --pyargs switchy.stack.conformance switchy.conformance -p
<fixture module>`` (the core's suites, then the protocols')."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import settings

# pytester's in-process runs drop the modules a run imported; cryptography's x509 classes
# must not be imported twice (its compiled core keeps the first ones), so import them here.
import switchy.transports.quic  # noqa: F401
from tests.conformance_broken import BROKEN

pytest_plugins = ["pytester"]

# Each test here runs whole suites in-process (dozens of inner tests, some over QUIC on the
# simulator, CPU-bound): the project's 120 s per-test limit is a hang detector sized for
# one test, and a whole QUIC suite passed it on a loaded 2-core machine (150-300 s).
pytestmark = pytest.mark.timeout(900)

REMOTE_TESTS = 9
SUITE_SIZES = {
    "test_transport": 18,
    "test_security": 9,
    "test_muxer": 21,
    "test_node": 8,
    "test_router": 5,
    "test_discovery": 5,
}


CORE_SUITES = {"test_transport", "test_security", "test_muxer", "test_node"}


def _suite(name: str) -> str:
    """The module of a suite: the core's in switchy.stack.conformance, the rest above."""
    package = "switchy.stack.conformance" if name in CORE_SUITES else "switchy.conformance"
    return f"{package}.{name}"


def _run(
    pytester: pytest.Pytester, fixtures: str, *suites: str, failing: bool = False
) -> pytest.RunResult:
    """Run ``suites`` with the harness fixtures ``fixtures``.

    ``failing`` runs report failures as plain Python tracebacks: pytest's own format
    parses the source of every frame, and CPython 3.11.7 can then fail with
    "SystemError: AST constructor recursion depth mismatch" (an INTERNALERROR that hides
    the contract's message) for the deep simulator tracebacks of broken parts.
    """
    pytester.makepyfile(my_fixtures=textwrap.dedent(fixtures))
    pytester.syspathinsert()
    targets = [_suite(s) for s in suites] or ["switchy.stack.conformance", "switchy.conformance"]
    args = ["--pyargs", *targets, "-p", "my_fixtures", "-p", "no:cacheprovider", "-q"]
    if failing:
        args.append("--tb=native")
    return pytester.runpytest_inprocess(*args)


BUILTIN_SIM = """
    import pytest
    from switchy.conformance import (
        NoiseHarness, RegistryDiscoveryHarness, SimNodeHarness, SimTransportHarness,
        StaticFilesHarness, YamuxHarness,
    )

    @pytest.fixture
    def transport_harness(): return SimTransportHarness()
    @pytest.fixture
    def security_harness(): return NoiseHarness()
    @pytest.fixture
    def muxer_harness(): return YamuxHarness()
    @pytest.fixture
    def node_harness(): return SimNodeHarness()
    @pytest.fixture
    def router_harness(): return StaticFilesHarness()
    @pytest.fixture
    def discovery_harness(): return RegistryDiscoveryHarness()
"""

BUILTIN_TCP = """
    import pytest
    from switchy.conformance import TcpNodeHarness, TcpTransportHarness

    @pytest.fixture
    def transport_harness(): return TcpTransportHarness()
    @pytest.fixture
    def node_harness(): return TcpNodeHarness()
"""


def test_builtin_parts_on_the_simulator_pass_every_suite(pytester: pytest.Pytester) -> None:
    result = _run(pytester, BUILTIN_SIM)
    # test_remote needs a running remote peer: see tests/interop/test_interop_conformance.py.
    result.assert_outcomes(passed=sum(SUITE_SIZES.values()), skipped=REMOTE_TESTS)


def test_the_simulated_name_service_passes_what_it_promises(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        import pytest
        from switchy.conformance import SimNameDiscoveryHarness

        @pytest.fixture
        def discovery_harness(): return SimNameDiscoveryHarness()
        """,
        "test_discovery",
    )
    # It does not own names: the take-over test is skipped, not failed.
    result.assert_outcomes(passed=SUITE_SIZES["test_discovery"] - 1, skipped=1)


def test_quic_passes_the_transport_suite_on_udp_and_on_the_simulator(
    pytester: pytest.Pytester,
) -> None:
    result = _run(
        pytester,
        """
        import pytest
        from switchy.conformance import QuicTransportHarness, SimQuicNodeHarness

        @pytest.fixture
        def transport_harness(): return QuicTransportHarness()
        @pytest.fixture
        def node_harness(): return SimQuicNodeHarness()
        """,
        "test_transport",
        "test_node",
    )
    result.assert_outcomes(passed=SUITE_SIZES["test_transport"] + SUITE_SIZES["test_node"])
    result = _run(
        pytester,
        """
        import pytest
        from switchy.conformance import SimQuicTransportHarness

        @pytest.fixture
        def transport_harness(): return SimQuicTransportHarness()
        """,
        "test_transport",
    )
    result.assert_outcomes(passed=SUITE_SIZES["test_transport"])


def test_nodes_behind_a_relay_pass_the_node_suite(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        import pytest
        from switchy.conformance import RelayNodeHarness

        @pytest.fixture
        def node_harness(): return RelayNodeHarness()
        """,
        "test_node",
    )
    result.assert_outcomes(passed=SUITE_SIZES["test_node"])


def test_nodes_behind_a_relay_on_quic_legs_pass_the_node_suite(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        import pytest
        from switchy.conformance import RelayQuicNodeHarness

        @pytest.fixture
        def node_harness(): return RelayQuicNodeHarness()
        """,
        "test_node",
    )
    result.assert_outcomes(passed=SUITE_SIZES["test_node"])


def test_tcp_transport_and_tcp_nodes_pass(pytester: pytest.Pytester) -> None:
    result = _run(pytester, BUILTIN_TCP, "test_transport", "test_node")
    # The partition test needs a harness that can partition: skipped on real TCP.
    result.assert_outcomes(
        passed=SUITE_SIZES["test_transport"] + SUITE_SIZES["test_node"] - 1, skipped=1
    )


def test_slow_but_steady_links_pass_the_transport_suite(pytester: pytest.Pytester) -> None:
    """The patience bounds a stall, not a transfer: a busy machine is slow, not broken."""
    fixtures = """
        import pytest
        from tests.conformance_slow import SlowLinkTransportHarness

        @pytest.fixture
        def transport_harness(): return SlowLinkTransportHarness()
    """
    result = _run(pytester, fixtures, "test_transport")
    result.assert_outcomes(passed=SUITE_SIZES["test_transport"])


def test_suites_without_a_fixture_are_skipped_with_its_name(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "import pytest\n", "test_security")
    result.assert_outcomes(skipped=SUITE_SIZES["test_security"])
    result = pytester.runpytest_inprocess(
        "--pyargs", "switchy.stack.conformance.test_security", "-p", "my_fixtures", "-rs"
    )
    result.stdout.fnmatch_lines(["*no 'security_harness' fixture*SecurityHarness*"])


@pytest.mark.parametrize("harness", list(BROKEN), ids=lambda h: h.__name__)
def test_broken_parts_fail_with_the_contract_named(
    pytester: pytest.Pytester, harness: type
) -> None:
    fixture, suite, contract = BROKEN[harness]
    try:
        # Finding the failure is the point, not shrinking it: shrinking reruns whole
        # simulations for a minute or more on a busy machine.
        result = _run(
            pytester,
            f"""
            import pytest
            from hypothesis import Phase, settings
            from tests.conformance_broken import {harness.__name__}

            settings.register_profile(
                "no-shrink",
                parent=settings.get_profile("default"),
                phases=[Phase.explicit, Phase.reuse, Phase.generate],
            )
            settings.load_profile("no-shrink")

            @pytest.fixture
            def {fixture}(): return {harness.__name__}()
            """,
            suite,
            failing=True,
        )
    finally:
        settings.load_profile("default")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 1, result.stdout.str()
    assert f"contract '{contract}' broken" in result.stdout.str()


def test_the_documented_third_party_example_runs() -> None:
    """``examples/conformance``: the README's command, as a user types it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "examples" / "conformance"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--pyargs",
            "switchy.stack.conformance",
            "-p",
            "my_fixtures",
        ],
        cwd=folder,
        env=dict(os.environ, PYTHONPATH=str(folder)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    expected = SUITE_SIZES["test_transport"] + SUITE_SIZES["test_security"]
    expected += SUITE_SIZES["test_muxer"]
    assert f"{expected} passed" in out.stdout
