"""Request router (``/switchy/router/1.0.0``): REST-like requests between peers.

Server: :class:`Router` (routes, decorators, services, sub-routers, middleware), served
on a node as a protocol service.  Client: :func:`request`
(``request(node, target, method, path, ...)``; also ``switchy.request``).
Wire format: ``specs/router.md``; sans-IO core: :mod:`switchy.protocols.router.core`.
"""

from switchy.protocols.router.client import request
from switchy.protocols.router.core import (
    DEFAULT_MAX_BODY_SIZE,
    METHODS,
    ROUTER_PROTOCOL,
    STATUS_REASONS,
)
from switchy.protocols.router.messages import Request, Response
from switchy.protocols.router.router import (
    Handler,
    Middleware,
    Next,
    RateLimit,
    Route,
    Router,
    Service,
    allow_peers,
)

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "METHODS",
    "ROUTER_PROTOCOL",
    "STATUS_REASONS",
    "Handler",
    "Middleware",
    "Next",
    "RateLimit",
    "Request",
    "Response",
    "Route",
    "Router",
    "Service",
    "allow_peers",
    "request",
]
