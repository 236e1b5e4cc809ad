"""A music service between peers, over the request router (``/switchy/router/1.0.0``).

Server: ``GET /tracks`` (JSON list), ``GET /tracks/{id}`` (streams the file),
``POST /play`` (msgpack ``{"id": n}``) and ``GET /playing``.  Client: connects by address
(there is no discovery yet), lists the tracks, downloads one in chunks, asks to play it.

Usage::

    python examples/music_service.py serve FOLDER [MULTIADDR]   # prints its address
    python examples/music_service.py client MULTIADDR [--save FILE]
    python examples/music_service.py demo                        # both, in one process
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgpack

from switchy.presets import default_node
from switchy.protocols.router import Request, Response, Router, request
from switchy.protocols.router.static import file_response
from switchy.stack.errors import SerializationError
from switchy.stack.node import Node

AUDIO_TYPES = {".ogg": "audio/ogg", ".mp3": "audio/mpeg", ".wav": "audio/wav"}


class MusicService:
    """Serves the audio files of a folder; track ids are their positions in name order."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.tracks = sorted(
            p for p in Path(folder).iterdir() if p.is_file() and p.suffix in AUDIO_TYPES
        )
        self.playing: int | None = None

    def register_routes(self, router: Router) -> None:
        """The service's four routes."""
        router.get("/tracks")(self.list_tracks)
        router.get("/tracks/{track_id}")(self.get_track)
        router.post("/play")(self.play)
        router.get("/playing")(self.now_playing)

    def _track(self, raw: object) -> int | None:
        if isinstance(raw, str) and raw.isascii() and raw.isdigit():
            raw = int(raw)
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(self.tracks):
            return raw
        return None

    def list_tracks(self, request: Request) -> list[dict[str, Any]]:
        """Every track: id, title, size."""
        return [
            {"id": i, "title": p.stem, "size": p.stat().st_size} for i, p in enumerate(self.tracks)
        ]

    def get_track(self, request: Request) -> Response:
        """The track's file, streamed (its size is declared up front)."""
        i = self._track(request.params["track_id"])
        if i is None:
            return Response.not_found(f"no track {request.params['track_id'][:40]}")
        path = self.tracks[i]
        return file_response(path, AUDIO_TYPES[path.suffix])

    def play(self, request: Request) -> Response:
        """Start playing ``{"id": n}`` (msgpack body)."""
        try:
            wanted = request.msgpack()
        except SerializationError:
            return Response.error(400, "body must be msgpack {'id': n}")
        i = self._track(wanted.get("id") if isinstance(wanted, dict) else None)
        if i is None:
            return Response.not_found("no such track")
        self.playing = i
        return Response.from_msgpack({"playing": self.tracks[i].stem})

    def now_playing(self, request: Request) -> Response:
        """What is playing (204 when nothing)."""
        if self.playing is None:
            return Response.no_content()
        return Response.from_msgpack({"playing": self.tracks[self.playing].stem})


async def run_client(node: Node, addr: str, save: str | None = None) -> dict[str, Any]:
    """List, download the first track (streamed), play it; return what happened."""
    listing = await request(node, addr, "GET", "/tracks")
    tracks = listing.json()
    print(f"{len(tracks)} tracks: {', '.join(t['title'] for t in tracks)}")
    first = tracks[0]
    digest = hashlib.sha256()
    received = 0
    response = await request(node, addr, "GET", f"/tracks/{first['id']}", stream=True)
    async with response:
        out = open(save, "wb") if save else None  # noqa: SIM115, ASYNC230 - example
        try:
            async for chunk in response.iter_body():
                digest.update(chunk)
                received += len(chunk)
                if out:
                    out.write(chunk)
        finally:
            if out:
                out.close()
    print(f"downloaded {first['title']}: {received} bytes, sha256 {digest.hexdigest()[:16]}")
    played = await request(node, addr, "POST", "/play", body=msgpack.packb({"id": first["id"]}))
    print(f"play -> {played.status_line}: {played.msgpack()}")
    missing = await request(node, addr, "GET", "/tracks/999")
    print(f"GET /tracks/999 -> {missing.status_line}")
    return {
        "tracks": len(tracks),
        "bytes": received,
        "sha256": digest.hexdigest(),
        "play": played.status,
        "missing": missing.status,
    }


def make_demo_tracks(folder: Path) -> None:
    """Three fake tracks (random bytes; a real folder would hold audio files)."""
    for i, name in enumerate(["intro.ogg", "theme.ogg", "outro.mp3"]):
        (folder / name).write_bytes(os.urandom(200_000 * (i + 1)))


async def serve(folder: str, addr: str) -> None:
    """Serve ``folder`` until interrupted."""
    router = Router().with_service(MusicService(folder))
    async with default_node(services=[router], listen=[addr]) as node:
        for a in node.full_addrs:
            print(a, flush=True)
        await asyncio.Event().wait()


async def demo() -> dict[str, Any]:
    """A server and a client node in this process."""
    with tempfile.TemporaryDirectory() as tmp:
        make_demo_tracks(Path(tmp))
        router = Router().with_service(MusicService(tmp))
        async with (
            default_node(services=[router], listen=["/ip4/127.0.0.1/tcp/0"]) as server,
            default_node() as client,
        ):
            addr = str(server.full_addrs[0])
            print(f"server at {addr}")
            result = await run_client(client, addr)
            expected = hashlib.sha256((Path(tmp) / "intro.ogg").read_bytes()).hexdigest()
            assert result["sha256"] == expected, "downloaded track differs"
            print("ok")
            return result


async def client_main(addr: str, save: str | None) -> None:
    """Run the client against ``addr``."""
    async with default_node() as node:
        await run_client(node, addr, save)


def main() -> int:
    """Command line of the example."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("serve")
    s.add_argument("folder")
    s.add_argument("addr", nargs="?", default="/ip4/127.0.0.1/tcp/0")
    c = sub.add_parser("client")
    c.add_argument("addr")
    c.add_argument("--save")
    sub.add_parser("demo")
    args = p.parse_args()
    try:
        if args.cmd == "serve":
            asyncio.run(serve(args.folder, args.addr))
        elif args.cmd == "client":
            asyncio.run(client_main(args.addr, args.save))
        else:
            asyncio.run(demo())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
