"""AutoNAT v2 and v1: others dial us back, so we learn which of our addresses are reachable.

Plug it in as a service: ``Node(..., services=[AutoNATService()])``; read
``service.reachability`` (``public`` / ``private`` / ``unknown``) and
``service.addresses``, or pass ``on_reachability_changed``.  :func:`probe` asks
given servers about given addresses (for a ``nat-status`` command).

Protocols (libp2p specs ``autonat/autonat-v2.md`` and ``autonat/autonat-v1.md``):
``/libp2p/autonat/2/dial-request`` and ``/libp2p/autonat/2/dial-back`` (v2),
``/libp2p/autonat/1.0.0`` (v1, spoken by py-libp2p 0.8.1 and js-libp2p 2.x).
A client uses v2 with servers that speak it, else v1.

Our choices (each a named constant in its module)
-------------------------------------------------
Messages (:mod:`.pb`)
    8192 bytes at most (go-libp2p's and js-libp2p's limit); at most 50
    addresses per request, a request with more is refused as a whole; 512
    bytes per address; dial data in chunks of at most 4096 bytes (spec).
Server (:mod:`.server`, :mod:`.service`)
    * v2 dials exactly one address: the first that parses, is public, has a
      comparable host (IP or simulated host; DNS and relayed addresses never)
      and that our dial-back transports can dial.  When its host differs from
      the requester's observed host, the server first asks for dial data: a
      random amount in [30 000, 100 000] bytes (spec: "30k to 100k"), and refuses
      chunks under 100 bytes while more is due; it reads no more than it asked
      for.  Without dial data it never dials a host the requester is not on.
    * v1 dials only addresses on the requester's observed host (at most 8,
      one after the other), as v1 requires; the peer id in the request must be
      the requester's.
    * Requests over relayed (``is_limited``) connections are refused (v2:
      ``E_REQUEST_REJECTED``, v1: ``E_DIAL_REFUSED``) before anything is read.
    * Rate limits (:class:`~.server.ServerLimits`): 12 requests per peer and 60
      overall per 60 s sliding window, 12 needing dial data per 60 s, 2 at once
      per peer and 16 at once overall (close to go-libp2p's defaults).
    * Dial-backs come from new instances of the node's transports
      (:func:`~.service.fresh_dial_transports`), never registered with the node:
      a new connection, TCP from an ephemeral port, QUIC from a socket of its
      own; never the existing connection, never the listen port.  10 s to
      connect, 5 s for the dial-back stream, 30 s per request stream.
Client and reachability (:mod:`.client`, :mod:`.reachability`)
    * One address per request.  A v2 success counts only when our nonce came
      back on a connection of the same transport as the address; an unknown
      nonce is dropped without an answer.  Dial-data requests above 100 000
      bytes are declined (stream reset).
    * Per address, the latest conclusive answer of each of the 5 servers heard
      from most recently counts, for an hour; 3 agreeing servers that outnumber
      the others make it ``public`` or ``private``.  The node is ``public`` when
      one address is, ``private`` when all are.
    * Probing: a first round 5 s after start (and 1 s after each new
      connection), then every 60 s while an address is unknown and every 15 min
      once all are known; a server is asked about an address at most once per
      such interval.  The timers run on the event loop (virtual time in the
      simulator).
"""

from __future__ import annotations

from switchy.protocols.autonat.client import Result, Verdict
from switchy.protocols.autonat.pb import DIAL_BACK_PROTOCOL, DIAL_REQUEST_PROTOCOL, V1_PROTOCOL
from switchy.protocols.autonat.reachability import (
    Reachability,
    ReachabilityChange,
    ReachabilityTracker,
)
from switchy.protocols.autonat.server import RateLimiter, ServerLimits
from switchy.protocols.autonat.service import AutoNATService, DialBackDialer, probe

__all__ = [
    "DIAL_BACK_PROTOCOL",
    "DIAL_REQUEST_PROTOCOL",
    "V1_PROTOCOL",
    "AutoNATService",
    "DialBackDialer",
    "RateLimiter",
    "Reachability",
    "ReachabilityChange",
    "ReachabilityTracker",
    "Result",
    "ServerLimits",
    "Verdict",
    "probe",
]
