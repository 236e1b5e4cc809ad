"""Circuit relay v2 (libp2p ``relay/circuit-v2.md``): relay service, client transport, codecs.

* :class:`RelayService` — the hop service a relay node runs (reservations,
  relayed connections, limits);
* :class:`AutoRelay` — reserves on relays by itself while the node is private;
* :class:`RelayTransport` — the client: dial and listen through relays
  (``…/p2p/<relay>/p2p-circuit[/p2p/<peer>]``) and the stop protocol;
* :mod:`switchy.transports.relay.pb` — the messages (sans-IO codecs);
* :class:`RelayResources` — the relay's bookkeeping as a pure state machine.

Modules: :mod:`switchy.transports.relay.service` (relay side),
:mod:`switchy.transports.relay.transport` (client side), :mod:`switchy.transports.relay.pb`,
:mod:`switchy.transports.relay.resources`, :mod:`switchy.transports.relay.config` (limits
and timings), :mod:`switchy.transports.relay.voucher` (reservation vouchers),
:mod:`switchy.transports.relay.autorelay` (automatic reservations),
:mod:`switchy.transports.relay.metrics` (the service's ``libp2p_relaysvc_*`` metrics).
"""

from __future__ import annotations

from switchy.transports.relay.autorelay import AutoRelay
from switchy.transports.relay.config import RelayClientConfig, RelayConfig
from switchy.transports.relay.pb import HOP_PROTOCOL, STOP_PROTOCOL, Limit, Status
from switchy.transports.relay.resources import RelayResources
from switchy.transports.relay.service import Circuit, RelayService
from switchy.transports.relay.transport import (
    CIRCUIT,
    ActiveReservation,
    RelayedConnection,
    RelayListener,
    RelayTransport,
    parse_circuit,
)

__all__ = [
    "CIRCUIT",
    "HOP_PROTOCOL",
    "STOP_PROTOCOL",
    "ActiveReservation",
    "AutoRelay",
    "Circuit",
    "Limit",
    "RelayClientConfig",
    "RelayConfig",
    "RelayListener",
    "RelayResources",
    "RelayService",
    "RelayTransport",
    "RelayedConnection",
    "Status",
    "parse_circuit",
]
