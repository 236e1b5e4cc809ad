"""HTTP over switchy (``/http/1.1``, the libp2p HTTP spec): ASGI server, httpx client, proxies.

* :mod:`.core`: the sans-IO core (h11 with explicit limits), constants.
* :mod:`.server`: :class:`HttpService` / :func:`serve_asgi` serve an ASGI application.
* :mod:`.client`: :class:`~switchy.protocols.http.client.SwitchyTransport` for httpx
  (the ``http`` extra).
"""

from switchy.protocols.http.core import (
    HTTP_PROTOCOL,
    PEER_ID_HEADER,
    WELL_KNOWN_PROTOCOLS_PATH,
    HttpError,
    HttpLimits,
)
from switchy.protocols.http.server import ClientDisconnected, HttpService, serve_asgi

__all__ = [
    "HTTP_PROTOCOL",
    "PEER_ID_HEADER",
    "WELL_KNOWN_PROTOCOLS_PATH",
    "ClientDisconnected",
    "HttpError",
    "HttpLimits",
    "HttpService",
    "serve_asgi",
]
