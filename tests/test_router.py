"""Router without a network: registration, matching, conflicts, services, middleware, results."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchy.protocols.router import RateLimit, Request, Response, Router, allow_peers
from switchy.protocols.router.messages import CONTENT_JSON, CONTENT_MSGPACK, CONTENT_TEXT
from switchy.protocols.router.router import Next
from switchy.stack.errors import InvalidConfiguration, ProtocolError, SerializationError
from switchy.stack.identity import KeyPair


def call(router: Router, method: str, path: str, **kw: object) -> Response:
    return asyncio.run(router.dispatch(Request(method, path, **kw)))  # type: ignore[arg-type]


def make_router() -> Router:
    r = Router()

    @r.get("/tracks")
    def tracks(req: Request) -> Response:
        return Response.from_json(["a", "b"])

    @r.get("/tracks/{track_id}")
    async def track(req: Request) -> Response:
        return Response.ok(f"track {req.params['track_id']} route {req.route}")

    @r.get("/tracks/latest")
    def latest(req: Request) -> str:
        return "latest"

    @r.delete("/tracks/{id}")
    def remove(req: Request) -> None:
        return None

    @r.post("/tracks")
    async def add(req: Request) -> Response:
        return Response.created(await req.read())

    @r.put("/tracks/{track_id}/tags/{tag}")
    def tag(req: Request) -> dict[str, str]:
        return dict(req.params)

    @r.patch("/tracks/{track_id}")
    def edit(req: Request) -> bytes:
        return b"patched"

    return r


def test_methods_params_and_results() -> None:
    r = make_router()
    resp = call(r, "GET", "/tracks")
    assert (resp.status, resp.json(), resp.content_type) == (200, ["a", "b"], CONTENT_JSON)
    assert call(r, "GET", "/tracks/7").text() == "track 7 route /tracks/{track_id}"
    assert call(r, "GET", "/tracks/latest").text() == "latest"  # a literal beats a parameter
    assert call(r, "DELETE", "/tracks/latest").status == 204  # ... unless it lacks the method
    assert call(r, "POST", "/tracks", body=b"new").status == 201
    assert call(r, "POST", "/tracks", body=b"new").body == b"new"
    assert call(r, "PUT", "/tracks/9/tags/rock").json() == {"track_id": "9", "tag": "rock"}
    patched = call(r, "PATCH", "/tracks/9")
    assert (patched.body, patched.content_type) == (b"patched", "application/octet-stream")


def test_not_found_and_method_not_allowed() -> None:
    r = make_router()
    for path in ("/", "/track", "/tracks/", "/Tracks", "/tracks/1/2", "/tracks//tags/x", ""):
        assert call(r, "GET", path).status == 404, path
    resp = call(r, "POST", "/tracks/7")
    assert resp.status == 405
    assert resp.headers["allow"] == "GET, DELETE, PATCH"
    assert call(r, "PATCH", "/tracks").headers["allow"] == "GET, POST"
    assert call(r, "BREW", "/tracks").status == 405


def test_conflicts_are_refused_at_registration() -> None:
    r = make_router()
    with pytest.raises(InvalidConfiguration, match=r"GET /tracks/\{x\} conflicts with GET"):
        r.route("GET", "/tracks/{x}", lambda req: None)
    with pytest.raises(InvalidConfiguration, match="conflicts"):
        r.route("GET", "/tracks", lambda req: None)
    r.route("POST", "/tracks/{x}", lambda req: None)  # other method: fine
    r.route("GET", "/tracks/{x}/more", lambda req: None)  # other shape: fine
    count = len(r.routes)
    with pytest.raises(InvalidConfiguration):
        r.route("POST", "/tracks/{y}", lambda req: None)
    assert len(r.routes) == count


@pytest.mark.parametrize(
    ("method", "path", "match"),
    [
        ("GET", "tracks", "start with '/'"),
        ("GET", "/a?b", "'\\?'"),
        ("GET", "/{a}/{a}", "twice"),
        ("GET", "/x{a}", "whole segment"),
        ("GET", "/{1a}", "whole segment"),
        ("HEAD", "/x", "method must be one of"),
        ("get", "/x", "method must be one of"),
    ],
)
def test_invalid_routes(method: str, path: str, match: str) -> None:
    with pytest.raises(InvalidConfiguration, match=match):
        Router().route(method, path, lambda req: None)


def test_handler_must_be_callable() -> None:
    with pytest.raises(InvalidConfiguration, match="not callable"):
        Router().route("GET", "/", "nope")  # type: ignore[arg-type]


class Music:
    def __init__(self) -> None:
        self.played: list[str] = []

    def register_routes(self, router: Router) -> None:
        router.get("/tracks")(self.tracks)
        router.post("/play")(self.play)

    def tracks(self, req: Request) -> list[str]:
        return ["t1"]

    async def play(self, req: Request) -> Response:
        self.played.append(req.text())
        return Response.no_content()


class Clash:
    def register_routes(self, router: Router) -> None:
        router.get("/other")(lambda req: "other")
        router.get("/tracks")(lambda req: "clash")


def test_services_register_all_or_nothing() -> None:
    music = Music()
    r = Router().with_service(music)
    assert call(r, "GET", "/tracks").json() == ["t1"]
    assert call(r, "POST", "/play", body=b"t1").status == 204
    assert music.played == ["t1"]
    with pytest.raises(InvalidConfiguration, match="GET /tracks conflicts"):
        r.register_service(Clash())
    assert call(r, "GET", "/other").status == 404  # nothing of the clashing service was added
    with pytest.raises(InvalidConfiguration, match="register_routes"):
        r.register_service(object())  # type: ignore[arg-type]


def test_mount_with_prefix_and_scoped_middleware() -> None:
    seen: list[str] = []
    api = Router()

    @api.use
    async def tag(req: Request, call_next: Next) -> Response:
        seen.append("api:" + req.path)
        resp = await call_next(req)
        resp.headers["x-api"] = "1"
        return resp

    api.get("/items/{n}")(lambda req: req.params["n"])
    api.get("/")(lambda req: "root")
    root = Router()
    root.get("/health")(lambda req: "ok")

    @root.use
    async def outer(req: Request, call_next: Next) -> Response:
        seen.append("root:" + req.path)
        return await call_next(req)

    root.mount("/api/v1/", api)
    resp = call(root, "GET", "/api/v1/items/3")
    assert (resp.text(), resp.headers["x-api"]) == ("3", "1")
    assert call(root, "GET", "/api/v1/").text() == "root"
    health = call(root, "GET", "/health")
    assert "x-api" not in health.headers
    assert seen == [
        "root:/api/v1/items/3",
        "api:/api/v1/items/3",
        "root:/api/v1/",
        "api:/api/v1/",
        "root:/health",
    ]
    seen.clear()
    assert call(root, "GET", "/api/v1/nothing").status == 404
    assert seen == ["root:/api/v1/nothing"]  # the router's middleware sees 404s too
    with pytest.raises(InvalidConfiguration, match="conflicts"):
        root.mount("/api/v1", api)
    with pytest.raises(InvalidConfiguration, match="prefix"):
        root.mount("api", api)


def test_middleware_allow_peers_and_rate_limit() -> None:
    good, bad = KeyPair.generate().peer_id, KeyPair.generate().peer_id
    r = Router()
    r.use(allow_peers([good]))
    r.use(RateLimit(rate=0.001, burst=2))
    r.get("/x")(lambda req: "x")

    async def run() -> list[int]:
        statuses = []
        for peer in (bad, good, good, good):
            resp = await r.dispatch(Request("GET", "/x", remote_peer=peer))
            statuses.append(resp.status)
        return statuses

    assert asyncio.run(run()) == [403, 200, 200, 429]
    with pytest.raises(InvalidConfiguration):
        RateLimit(rate=0, burst=1)


def test_handler_errors_give_a_generic_500(caplog: pytest.LogCaptureFixture) -> None:
    r = Router()

    @r.get("/boom")
    def boom(req: Request) -> Response:
        raise RuntimeError("the secret detail")

    r.route("GET", "/weird", lambda req: 42)  # type: ignore[arg-type,return-value]
    with caplog.at_level(logging.ERROR):
        resp = call(r, "GET", "/boom")
    assert (resp.status, resp.text()) == (500, "internal server error")
    assert "the secret detail" in caplog.text  # logged, not sent
    assert call(r, "GET", "/weird").status == 500


@pytest.mark.parametrize(
    ("decode", "body", "what"),
    [
        ("json", b"{not json", "not JSON"),
        ("text", b"\xff", "not UTF-8"),
        ("msgpack", b"\xc1", "msgpack"),
    ],
)
def test_a_body_that_does_not_decode_gives_400_without_a_traceback(
    caplog: pytest.LogCaptureFixture, decode: str, body: bytes, what: str
) -> None:
    r = Router()

    @r.post("/tracks")
    def add(req: Request) -> dict[str, Any]:
        return {"got": getattr(req, decode)()}

    @r.post("/inner")
    def inner(req: Request) -> dict[str, Any]:
        return dict(Response.ok(b"{").json())  # the server's own decoding bug: still a 500

    with caplog.at_level(logging.DEBUG):
        resp = call(r, "POST", "/tracks", body=body)
    assert resp.status == 400, resp.text()
    assert resp.text().startswith("bad request body:") and what in resp.text()
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert "Traceback" not in caplog.text
    assert (
        call(r, "POST", "/tracks", body=b'"ok"' if decode != "msgpack" else b"\xa2ok").status == 200
    )
    with caplog.at_level(logging.ERROR):
        assert call(r, "POST", "/inner", body=b"{}").status == 500


def test_handler_timeout_gives_503() -> None:
    r = Router(handler_timeout=0.01)
    never = asyncio.Event

    @r.get("/slow")
    async def slow(req: Request) -> Response:
        await never().wait()
        return Response.ok()

    @r.get("/own-timeout")
    async def own(req: Request) -> Response:
        raise TimeoutError("the handler's own")

    assert call(r, "GET", "/slow").status == 503
    assert call(r, "GET", "/own-timeout").status == 500  # not ours: a handler error


def test_response_helpers_and_decoders() -> None:
    assert Response.ok("hé").content_type == CONTENT_TEXT
    assert Response.ok("hé").text() == "hé"
    assert Response.from_msgpack({"a": [1]}).msgpack() == {"a": [1]}
    assert Response.from_msgpack({}).content_type == CONTENT_MSGPACK
    assert Response.from_json({"a": 1}, status=201).status == 201
    nf = Response.not_found()
    assert (nf.status, nf.status_line, nf.is_success) == (404, "404 Not Found", False)
    assert Response.error(503).text() == "Service Unavailable"
    assert Response(599).status_line == "599"
    assert Response.no_content().is_success
    with pytest.raises(SerializationError):
        Response.ok(b"\xff").text()
    with pytest.raises(SerializationError):
        Response.ok(b"{").json()
    with pytest.raises(SerializationError):
        Response.ok(b"\xc1").msgpack()

    async def chunks() -> object:
        yield b"ab"
        yield b""
        yield b"c"

    async def streamed() -> None:
        resp = Response.ok(chunks())  # type: ignore[arg-type]
        assert resp.is_streamed
        with pytest.raises(ProtocolError, match="read"):
            resp.text()
        assert await resp.read() == b"abc"
        assert resp.text() == "abc" and not resp.is_streamed
        assert [c async for c in resp.iter_body()] == [b"abc"]

    asyncio.run(streamed())


segment = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="/?\x00{}"),
    min_size=1,
    max_size=10,
)


@given(st.lists(segment, min_size=1, max_size=6), st.integers(min_value=0, max_value=5))
def test_any_path_matches_its_parameter_pattern(segs: list[str], which: int) -> None:
    """A route with a parameter at any position returns exactly that segment."""
    which %= len(segs)
    pattern_segs = list(segs)
    pattern_segs[which] = "{p}"
    r = Router()
    r.get("/" + "/".join(pattern_segs))(lambda req: Response.from_json(req.params))
    resp = call(r, "GET", "/" + "/".join(segs))
    assert resp.status == 200 and resp.json() == {"p": segs[which]}
    assert call(r, "GET", "/" + "/".join(segs) + "/extra").status == 404
