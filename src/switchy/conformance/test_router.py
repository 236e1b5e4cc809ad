"""Router contract: services register without conflicts (and a second registration of
the same routes is refused), good requests answer 2xx over the network, hostile
requests never crash a handler (no 500) nor hang, concurrent requests all complete,
and a stateful model test of route registration and matching (404/405, static
segments before parameters, conflicts detected at registration time).

Needs a ``router_harness`` fixture returning a
:class:`~switchy.conformance.harness.RouterHarness`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from switchy.conformance.harness import RouterHarness, SimNodeHarness
from switchy.protocols.router import Response, Router, request
from switchy.stack.conformance import strategies
from switchy.stack.conformance._util import require, within
from switchy.stack.errors import InvalidConfiguration, P2PError

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]


def _serve(
    h: RouterHarness, body: Callable[[Any, Any], Awaitable[None]]
) -> Callable[[], Awaitable[None]]:
    """A coroutine function running ``body(client, server_addr)`` with the router served."""

    async def main() -> None:

        router: Router = h.make_router()
        for service in h.services():
            router.register_service(service)
        nodes = SimNodeHarness.inside(h.simulation)
        async with (
            nodes.make_node("server", services=[router]) as server,
            nodes.make_node("client") as client,
        ):
            await body(client, server.full_addrs[0])

    return main


def test_services_register_and_conflict_on_a_second_registration(
    router_part: RouterHarness,
) -> None:
    services = router_part.services()
    router = router_part.make_router()
    for service in services:
        router.register_service(service)
    routes = {(r.method, r.pattern) for r in router.routes}
    require(
        all(m in METHODS and p.startswith("/") for m, p in routes),
        "router.registration",
        f"routes with a bad method or path: {sorted(routes)}",
    )
    if routes:
        try:
            for service in router_part.services():
                router.register_service(service)
        except InvalidConfiguration:
            pass
        else:
            require(
                False,
                "router.conflicts",
                "registering the same routes twice did not raise InvalidConfiguration",
            )


def test_good_requests_answer_2xx(router_part: RouterHarness) -> None:
    async def body(client: Any, addr: Any) -> None:
        for method, path, data in router_part.good_requests():
            resp = await within(
                router_part,
                request(client, addr, method, path, body=data),
                "router.request",
                f"{method} {path}",
            )
            require(
                200 <= resp.status < 300,
                "router.good-requests",
                f"{method} {path} answered {resp.status_line}",
            )
        resp = await request(client, addr, "GET", "/conformance/surely/not/a/route/0")
        require(resp.status == 404, "router.not-found", f"an unknown path gave {resp.status}")

    router_part.run(_serve(router_part, body))


def test_concurrent_requests_all_complete(router_part: RouterHarness) -> None:
    async def body(client: Any, addr: Any) -> None:
        reqs = router_part.good_requests() * 10 or [("GET", "/none", b"")] * 20
        resps = await within(
            router_part,
            asyncio.gather(*(request(client, addr, m, p, body=b) for m, p, b in reqs)),
            "router.concurrency",
            f"{len(reqs)} concurrent requests",
        )
        statuses = sorted({r.status for r in resps})
        require(
            all(r.status < 500 for r in resps),
            "router.concurrency",
            f"concurrent requests answered {statuses}",
        )

    router_part.run(_serve(router_part, body))


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    reqs=st.lists(
        st.tuples(
            st.sampled_from(METHODS),
            strategies.paths(),
            st.binary(max_size=2000),
            st.dictionaries(
                st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=10),
                st.text(max_size=30),
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_hostile_requests_never_crash_a_handler(
    router_part: RouterHarness, reqs: list[tuple[str, str, bytes, dict[str, str]]]
) -> None:
    # Also aim at the registered routes: fill their parameters with arbitrary text.
    good = router_part.good_requests()

    async def body(client: Any, addr: Any) -> None:
        targets = list(reqs)
        for i, (_method, path, data, headers) in enumerate(reqs):
            if good:
                m, p, _ = good[i % len(good)]
                targets.append((m, p.rsplit("/", 1)[0] + path, data, headers))
        for method, path, data, headers in targets:
            try:
                resp = await within(
                    router_part,
                    request(client, addr, method, path, body=data, headers=headers),
                    "router.robustness",
                    f"an answer to {method} {path!r}",
                )
            except P2PError:
                continue  # refused by the client or protocol layer: not the handler's doing
            require(
                resp.status != 500 and 100 <= resp.status <= 599,
                "router.robustness",
                f"{method} {path!r} with a {len(data)}-byte body answered {resp.status_line}",
            )

    router_part.run(_serve(router_part, body))


# --- stateful model of registration and matching ------------------------------------------

_SEGMENTS = ["a", "b", "{x}", "{y}"]
_PATH_SEGMENTS = ["a", "b", "c", ""]


def _shape(pattern: str) -> tuple[str | None, ...]:
    return tuple(None if s.startswith("{") else s for s in pattern.split("/")[1:])


def _matches(pattern: str, path: str) -> bool:
    pat, segs = pattern.split("/")[1:], path.split("/")[1:]
    return len(pat) == len(segs) and all(
        (p.startswith("{") and s != "") or p == s for p, s in zip(pat, segs, strict=True)
    )


class RouterModel(RuleBasedStateMachine):
    """Routes registered at random; every lookup agrees with a simple model."""

    harness: RouterHarness

    @initialize()
    def start(self) -> None:
        self.router = self.harness.make_router()
        self.model: dict[tuple[str, tuple[str | None, ...]], str] = {}

    @rule(
        method=st.sampled_from(METHODS[:2]),
        segs=st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=3),
    )
    def register(self, method: str, segs: list[str]) -> None:
        if segs.count("{x}") > 1 or segs.count("{y}") > 1:
            return
        pattern = "/" + "/".join(segs)
        key = (method, _shape(pattern))

        async def handler(request: Any) -> Any:
            return None

        try:
            self.router.route(method, pattern, handler)
        except InvalidConfiguration:
            require(
                key in self.model,
                "router.conflicts",
                f"{method} {pattern} was refused but conflicts with nothing",
            )
            return
        require(
            key not in self.model,
            "router.conflicts",
            f"{method} {pattern} was accepted although {self.model.get(key)} has its shape",
        )
        self.model[key] = pattern

    @rule(
        method=st.sampled_from(METHODS[:3]),
        segs=st.lists(st.sampled_from(_PATH_SEGMENTS), min_size=1, max_size=3),
    )
    def lookup(self, method: str, segs: list[str]) -> None:
        path = "/" + "/".join(segs)
        candidates = [
            (tuple(0 if s is not None else 1 for s in shape), m, pattern)
            for (m, shape), pattern in self.model.items()
            if _matches(pattern, path)
        ]
        got = self.router.match(method, path)
        with_method = sorted(c for c in candidates if c[1] == method)
        if with_method:
            want = with_method[0][2]
            require(
                not isinstance(got, Response) and got[0].pattern == want,
                "router.matching",
                f"{method} {path} should go to {want}, got "
                + (got.status_line if isinstance(got, Response) else got[0].pattern),
            )
        elif candidates:
            require(
                isinstance(got, Response) and got.status == 405,
                "router.matching",
                f"{method} {path} matches only other methods' routes: expected 405",
            )
        else:
            require(
                isinstance(got, Response) and got.status == 404,
                "router.matching",
                f"{method} {path} matches no route: expected 404",
            )

    @invariant()
    def routes_listed(self) -> None:
        if hasattr(self, "router"):
            require(
                len(self.router.routes) == len(self.model),
                "router.registration",
                f"{len(self.router.routes)} routes listed, {len(self.model)} registered",
            )


def test_registration_and_matching_follow_the_model(router_part: RouterHarness) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    class Machine(RouterModel):
        harness = router_part

    run_state_machine_as_test(
        Machine, settings=settings(max_examples=50, stateful_step_count=30, deadline=None)
    )
