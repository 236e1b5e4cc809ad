"""Limits and timings of the relay service and the relay client, with defaults."""

from __future__ import annotations

from typing import Any

import attrs

from switchy.stack.errors import InvalidConfiguration

__all__ = ["RelayClientConfig", "RelayConfig"]

KiB = 1024
#: Default of ``circuit_window`` (relay and client): what a circuit's stream may buffer
#: per direction at each hop.
CIRCUIT_WINDOW = 256 * KiB
#: Default longest life of one relayed connection (seconds): two hours of music.
DEFAULT_LIMIT_DURATION = 2 * 3600
#: Default bytes per direction of one relayed connection: two hours of lossless audio.
DEFAULT_LIMIT_DATA = 1024 * 1024 * KiB


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise InvalidConfiguration(f"{attribute.name} must be >= 0, got {value!r}")


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise InvalidConfiguration(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class RelayConfig:
    """What a relay (hop service) grants.  Durations in seconds, sizes in bytes.

    Per-connection defaults: 2 hours and 1 GiB in each direction
    (:data:`DEFAULT_LIMIT_DURATION`, :data:`DEFAULT_LIMIT_DATA`).  A relay is the
    last resort of two devices behind NATs, and what they run over it is often
    a music stream: at 320 kbit/s an hour is 144 MB, CD-quality lossless
    (1.4 Mbit/s) is about 630 MB an hour.  go-libp2p's and js-libp2p's 2 minutes
    / 128 KiB (meant for hole-punch coordination) would cut a stream off after
    about 3 seconds of 320 kbit/s audio.  Relays stay bounded by
    ``max_circuits`` and the per-circuit window; set a limit to 0 to disable it.
    """

    #: Life of a reservation; clients renew before it ends.
    reservation_ttl: float = attrs.field(default=3600.0, validator=_positive)
    #: Longest life of one relayed connection (0: no limit).
    limit_duration: int = attrs.field(default=DEFAULT_LIMIT_DURATION, validator=_non_negative)
    #: Bytes a relayed connection may carry in each direction (0: no limit).
    limit_data: int = attrs.field(default=DEFAULT_LIMIT_DATA, validator=_non_negative)
    #: Reservations held at once, all peers together.
    max_reservations: int = attrs.field(default=128, validator=_positive)
    #: Reservations held at once by peers connecting from one IP address.
    max_reservations_per_ip: int = attrs.field(default=8, validator=_positive)
    #: Relayed connections open at once, all peers together.
    max_circuits: int = attrs.field(default=256, validator=_positive)
    #: Relayed connections open at once from or to one peer.
    max_circuits_per_peer: int = attrs.field(default=16, validator=_positive)
    #: Relayed connections open at once from sources at one IP address (fresh identities
    #: are free: a per-peer limit alone lets one host take every circuit to a target).
    max_circuits_per_ip: int = attrs.field(default=8, validator=_positive)
    #: A circuit that forwards no byte either way for this long is closed (0: never).
    circuit_idle_timeout: float = attrs.field(default=60.0, validator=_non_negative)
    #: Hop requests being read or answered at once from one peer (streams that never send).
    max_pending_per_peer: int = attrs.field(default=8, validator=_positive)
    #: Time allowed for reading a request and for the target's stop answer.
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Bytes read per forwarding step.
    buffer_size: int = attrs.field(default=64 * KiB, validator=_positive)
    #: Bytes a circuit's streams may buffer here per direction: receive window and unsent
    #: backlog of each (``MuxedStream.limit_buffering``).  Kept small so that the slower
    #: leg's backpressure reaches the sender, and a small message never waits behind
    #: seconds of bulk data queued at the relay.
    circuit_window: int = attrs.field(default=CIRCUIT_WINDOW, validator=_positive)


@attrs.frozen(kw_only=True)
class RelayClientConfig:
    """How a relay client keeps its reservations."""

    #: Renew a reservation once this fraction of its lifetime has passed.
    renew_fraction: float = attrs.field(default=0.75, validator=_positive)
    #: Pause between rounds of attempts when no configured relay accepts us.
    retry_interval: float = attrs.field(default=5.0, validator=_positive)
    #: Time allowed for a relay's answer (reservation, connect) and for a stop request.
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Bytes the stream carrying a relayed connection may buffer here per direction
    #: (``MuxedStream.limit_buffering``): a deep queue under bulk data would delay every
    #: other stream of the relayed connection.
    circuit_window: int = attrs.field(default=CIRCUIT_WINDOW, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.renew_fraction >= 1:
            raise InvalidConfiguration(
                f"renew_fraction must be < 1 to renew before expiry, got {self.renew_fraction}"
            )
