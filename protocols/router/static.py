"""Serving the files of one folder: ``GET /files`` (listing) and ``GET /files/{name}``.

Only regular files directly inside the folder are served.  A name is one path segment;
names that could reach anything else are refused with 403: ``.`` and ``..``, names
starting with ``.`` (hidden files), names holding a separator (``/``, ``\\``), a NUL or
a percent-encoded separator or dot (``%2f``, ``%5c``, ``%2e``), and names whose resolved
path (symlinks followed) is outside the folder.  A name that is not a regular file is 404.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

from switchy.protocols.router.messages import CONTENT_OCTETS, Request, Response
from switchy.stack.errors import InvalidConfiguration

if TYPE_CHECKING:
    from switchy.protocols.router.router import Router

__all__ = ["FILE_CHUNK_SIZE", "MAX_NAME_BYTES", "StaticFiles", "file_response"]

#: Longest file name served (bytes; the usual file-system limit, NAME_MAX).
MAX_NAME_BYTES: Final = 255
#: Bytes read from a file per chunk.
FILE_CHUNK_SIZE: Final = 256 * 1024

_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|2e|00)", re.IGNORECASE)


async def _file_chunks(path: str | os.PathLike[str], size: int) -> AsyncIterator[bytes]:
    # Opened on the first chunk: a response that is never sent holds no file open.
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    try:
        left = size
        while left > 0:
            chunk = await asyncio.to_thread(os.read, fd, min(FILE_CHUNK_SIZE, left))
            if not chunk:
                raise OSError(f"file shrank while being sent ({left} bytes missing)")
            left -= len(chunk)
            yield chunk
    finally:
        os.close(fd)


def file_response(path: str | os.PathLike[str], content_type: str = CONTENT_OCTETS) -> Response:
    """A 200 response streaming the file at ``path`` (its size declared up front).

    Raises :class:`OSError` when the file cannot be found; the file is opened when the
    body is first read.
    """
    size = os.stat(path).st_size
    return Response(200, {"content-type": content_type}, _file_chunks(path, size), size)


class StaticFiles:
    """A router service serving the regular files of ``root`` under ``prefix``."""

    def __init__(self, root: str | os.PathLike[str], prefix: str = "/files") -> None:
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise InvalidConfiguration(f"{root} is not a folder")
        self.prefix = prefix.rstrip("/")

    def register_routes(self, router: Router) -> None:
        """``GET <prefix>`` and ``GET <prefix>/{name}``."""
        router.get(self.prefix)(self.listing)
        router.get(self.prefix + "/{name}")(self.file)

    def resolve(self, name: str) -> Path | Response:
        """The real path of ``name`` inside the folder, or the 403/404 response."""
        if (
            name in (".", "..")
            or name.startswith(".")
            or any(c in name for c in "/\\\x00")
            or _ENCODED_SEPARATOR.search(name)
        ):
            return Response.error(403, "forbidden name")
        try:
            if len(os.fsencode(name)) > MAX_NAME_BYTES:
                return Response.not_found(f"no file {name[:64]}... (name too long)")
            real = Path(os.path.realpath(self.root / name))
            if real.parent != self.root:
                return Response.error(403, "outside the served folder")
            if not real.is_file():
                return Response.not_found(f"no file {name}")
        except (OSError, ValueError):  # a name the file system rejects is a name not served
            return Response.not_found(f"no file {name[:64]}")
        return real

    def listing(self, request: Request) -> Response:
        """The served files as JSON: ``[{"name": ..., "size": ...}]`` sorted by name."""
        files = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            resolved = self.resolve(entry.name)
            if isinstance(resolved, Path):
                files.append({"name": entry.name, "size": resolved.stat().st_size})
        return Response.from_json(files)

    def file(self, request: Request) -> Response:
        """The file named by the ``name`` parameter, streamed."""
        resolved = self.resolve(request.params["name"])
        if isinstance(resolved, Response):
            return resolved
        try:
            return file_response(resolved)
        except OSError:
            return Response.not_found(f"cannot read {request.params['name']}")
