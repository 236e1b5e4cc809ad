"""Static file service (never outside its folder) and the ``switchy serve`` / ``request`` CLI."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from switchy.cli import main
from switchy.presets import default_node
from switchy.protocols.router import Request, Response, Router
from switchy.protocols.router.static import StaticFiles
from switchy.stack.errors import InvalidConfiguration

SWITCHY = [sys.executable, "-m", "switchy.cli"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "public"
    root.mkdir()
    (root / "a.txt").write_bytes(b"hello")
    (root / "big.bin").write_bytes(os.urandom(700_000))
    (root / ".secret").write_bytes(b"hidden")
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner")
    (tmp_path / "outside.txt").write_bytes(b"private")
    (root / "link-out").symlink_to(tmp_path / "outside.txt")
    (root / "link-in").symlink_to(root / "a.txt")
    (root / "link-dir").symlink_to(tmp_path)
    return root


def get(router: Router, path: str) -> Response:
    async def run() -> Response:
        resp = await router.dispatch(Request("GET", path))
        await resp.read(limit=10**7)
        return resp

    return asyncio.run(run())


def test_static_serves_files_and_lists_them(folder: Path) -> None:
    router = Router().with_service(StaticFiles(folder))
    resp = get(router, "/files/a.txt")
    assert (resp.status, resp.body, resp.length) == (200, b"hello", 5)
    big = get(router, "/files/big.bin")
    assert big.body == (folder / "big.bin").read_bytes()
    assert get(router, "/files/link-in").body == b"hello"  # a link that stays inside: fine
    listing = get(router, "/files").json()
    assert listing == [
        {"name": "a.txt", "size": 5},
        {"name": "big.bin", "size": 700_000},
        {"name": "link-in", "size": 5},
    ]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/files/..", 403),
        ("/files/.", 403),
        ("/files/../outside.txt", 404),  # not one segment: no route
        ("/files/..%2Foutside.txt", 403),
        ("/files/..%2foutside.txt", 403),
        ("/files/%2e%2e", 403),
        ("/files/..%5Coutside.txt", 403),
        ("/files/..\\outside.txt", 403),
        ("/files/%2Fetc%2Fpasswd", 403),
        ("/files//etc/passwd", 404),  # absolute path: empty segment, no route
        ("/files/.secret", 403),
        ("/files/link-out", 403),  # symlink pointing out of the folder
        ("/files/link-dir", 403),
        ("/files/sub", 404),  # a folder is not a file
        ("/files/nothing", 404),
        ("/files/a.txt\x00", 403),
    ],
)
def test_static_never_serves_outside_its_folder(folder: Path, path: str, status: int) -> None:
    router = Router().with_service(StaticFiles(folder))
    resp = get(router, path)
    assert resp.status == status, resp.body
    assert isinstance(resp.body, bytes)
    assert b"private" not in resp.body and b"hidden" not in resp.body


def test_static_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfiguration):
        StaticFiles(tmp_path / "missing")


def test_serve_and_request_commands(folder: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*SWITCHY, "serve", "--static", str(folder), "/ip4/127.0.0.1/tcp/0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        addr = proc.stdout.readline().strip()
        assert "/p2p/12D3KooW" in addr

        def request(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*SWITCHY, "request", addr, *args],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )

        out = tmp_path / "download.bin"
        ok = request("GET", "/files/big.bin", "--output", str(out))
        assert ok.returncode == 0, ok.stderr
        assert out.read_bytes() == (folder / "big.bin").read_bytes()
        listing = request("GET", "/files")
        assert listing.returncode == 0 and '"name":"a.txt"' in listing.stdout
        missing = request("GET", "/files/nothing")
        assert missing.returncode == 1
        assert missing.stderr.startswith("404 Not Found")
        escape = request("GET", "/files/link-out")
        assert escape.returncode == 1 and escape.stderr.startswith("403 Forbidden")
        assert "private" not in escape.stdout + escape.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    assert proc.returncode == 0


@contextmanager
def thread_server(router: Router) -> Iterator[str]:
    """A node serving ``router`` in its own thread and loop; yields its address."""
    addrs: queue.Queue[str] = queue.Queue()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        async with default_node(services=[router], listen=["/ip4/127.0.0.1/tcp/0"]) as node:
            addrs.put(str(node.full_addrs[0]))
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        yield addrs.get(timeout=30)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def test_request_sends_headers_and_data(tmp_path: Path) -> None:
    router = Router()

    @router.post("/echo", stream=True)
    async def echo(req: Request) -> Response:
        data = await req.read(limit=10**7)
        return Response.ok(data, headers={"x-got": req.headers.get("x-kind", "")})

    @router.put("/fail")
    def fail(req: Request) -> Response:
        return Response.error(429, "slow down")

    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(300_000))
    out = tmp_path / "out.bin"
    with thread_server(router) as addr:
        args = ["request", addr, "post", "/echo", "--header", "X-Kind: file"]
        assert main([*args, "--data", f"@{source}", "--output", str(out)]) == 0
        assert out.read_bytes() == source.read_bytes()
        assert main([*args, "--data", "some text", "--output", str(out)]) == 0
        assert out.read_bytes() == b"some text"
        assert main(["request", addr, "PUT", "/fail"]) == 1
        assert main([*args, "--header", "nocolon"]) == 2
        assert main([*args, "--data", f"@{tmp_path / 'missing'}"]) == 2


def test_request_status_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    router = Router()
    router.get("/x")(lambda req: Response.error(429, "slow down"))
    with thread_server(router) as addr:
        assert main(["request", addr, "GET", "/x"]) == 1
    assert capsys.readouterr().err.strip() == "429 Too Many Requests: slow down"


def test_progress_display(capsys: pytest.CaptureFixture[str]) -> None:
    from switchy.cli import _Progress

    quiet = _Progress(100, enabled=False)
    quiet.update(50)
    quiet.finish()
    assert capsys.readouterr().err == ""
    shown = _Progress(200, enabled=True)
    shown.update(100)
    shown.update(100)
    shown.finish()
    err = capsys.readouterr().err
    assert err.startswith("\r[" + "#" * 30 + "] 100.0% 200/200 B")
    assert err.endswith("MB/s\n")
    unknown = _Progress(None, enabled=True)
    unknown.update(5)
    unknown.finish()
    assert capsys.readouterr().err.startswith("\r5 B ")
