"""Configuration of a node: timeouts, sizes and limits, with defaults and env overrides.

:meth:`NetworkConfig.from_env` reads ``SWITCHY_<FIELD>`` variables; a ``SWITCHY_*``
variable that is neither a field nor one of :data:`OTHER_ENV_VARIABLES` (read elsewhere)
is most likely a typo: it is logged as a warning once, naming the closest known name.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from switchy.stack.addresses import normalized_ip
from switchy.stack.errors import InvalidConfiguration

__all__ = ["ENV_PREFIX", "OTHER_ENV_VARIABLES", "NetworkConfig", "unknown_env_variables"]

log = logging.getLogger(__name__)

#: Environment variables read by :meth:`NetworkConfig.from_env` start with this prefix.
ENV_PREFIX = "SWITCHY_"
#: ``SWITCHY_*`` variables read elsewhere than :class:`NetworkConfig` (the command line's
#: log level, the HTTP parser, the example's transport switch, the tests and benchmarks):
#: known, so never warned about.
OTHER_ENV_VARIABLES: Final = frozenset(
    {
        "SWITCHY_LOG_LEVEL",  # switchy.cli
        "SWITCHY_HTTP_PARSER",  # switchy.protocols.http.core
        "SWITCHY_TRANSPORT",  # examples/tunnel_migration
        "SWITCHY_BENCH_LOOP",  # bench/common.py
        "SWITCHY_SKIP_INTEROP",  # tests/interop
        "SWITCHY_FUZZ_SECONDS",  # tests/test_fuzz.py
    }
)
#: Unknown variables already warned about (each is warned about once per process).
_warned: set[str] = set()

KiB = 1024
MiB = 1024 * KiB


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise InvalidConfiguration(f"{attribute.name} must be > 0, got {value!r}")


def _not_negative(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise InvalidConfiguration(f"{attribute.name} must be >= 0, got {value!r}")


def _str_tuple(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _networks(values: tuple[str, ...]) -> None:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except (ValueError, TypeError):
            raise InvalidConfiguration(f"public_networks: {v!r} is not an IP network") from None


#: Distinct ``public_networks`` tuples whose parsed networks are remembered.
_NETWORKS_CACHE_SIZE = 64


@functools.lru_cache(maxsize=_NETWORKS_CACHE_SIZE)
def _parsed_networks(
    values: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``public_networks`` parsed once (the validator has checked each)."""
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise InvalidConfiguration(f"{name}={raw!r} is not a valid boolean (use 1/0, true/false)")


@attrs.frozen(kw_only=True)
class NetworkConfig:
    """Settings shared by every layer of a node.

    All durations are in seconds, sizes in bytes.  Instances are immutable;
    use :func:`attrs.evolve` to derive a changed copy.
    """

    #: Time allowed for a transport dial (TCP connect, QUIC handshake).
    dial_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Delay before dialing a peer's next address while earlier attempts are still running
    #: (staggered parallel dials, as in RFC 8305: a blackholed QUIC address does not
    #: hold up TCP for the whole dial timeout).  0 dials every address at once.
    dial_stagger: float = attrs.field(default=0.25, validator=_not_negative)
    #: Time allowed for the security handshake and the muxer negotiation of a new connection.
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Time allowed for multistream-select negotiation of a protocol on a stream.
    negotiation_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Default deadline for a request/response exchange (ping, identify, router).
    request_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: Time each discovery backend is given to resolve a name (``Node.discover``).
    discovery_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Time a graceful close waits for in-flight streams before resetting them.
    close_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: Largest length-prefixed message accepted by ``recv_message`` (1 MiB).
    max_message_size: int = attrs.field(default=1 * MiB, validator=_positive)
    #: Most simultaneous connections a node keeps (inbound + outbound).
    max_connections: int = attrs.field(default=1024, validator=_positive)
    #: Most simultaneous streams on one connection (both directions together).
    max_streams_per_connection: int = attrs.field(default=1024, validator=_positive)
    #: Most inbound streams opened by the remote that are not yet acknowledged.
    max_ack_backlog: int = attrs.field(default=256, validator=_positive)
    #: Initial yamux receive window per stream (the spec's 256 KiB).
    initial_stream_window: int = attrs.field(default=256 * KiB, validator=_positive)
    #: Largest receive window auto-tuning may grow a stream to.
    max_stream_window: int = attrs.field(default=16 * MiB, validator=_positive)
    #: Interval of muxer keep-alive pings; 0 disables them.
    keepalive_interval: float = attrs.field(default=30.0)
    #: IP networks (CIDR strings) that count as public besides the globally routable
    #: ones: a lab or a private network where peers reach each other directly
    #: (``SWITCHY_PUBLIC_NETWORKS=10.0.0.0/8,fd00::/8``).  AutoNAT tests and serves
    #: only public addresses.
    public_networks: tuple[str, ...] = attrs.field(
        default=(), converter=_str_tuple, validator=lambda _i, _a, v: _networks(v)
    )

    #: Whether a node made by ``switchy.presets.default_node`` turns the relayed
    #: connections it accepts into direct ones by hole punching (DCUtR);
    #: ``SWITCHY_HOLE_PUNCHING=0`` turns it off.
    hole_punching: bool = attrs.field(default=True, converter=bool)

    # --- resource manager (switchy.stack.limits) ------------------------------------
    #: Overrides of the resource manager's limits, ``scope.resource=value`` each:
    #: ``SWITCHY_LIMITS=system.conns=2000,peer.streams=1024,peer.memory=32MiB``
    #: (see :meth:`switchy.stack.limits.LimitConfig.with_overrides`).
    limits: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    #: Memory budget the default limits are scaled to (bytes); 0: an eighth of the RAM.
    limits_memory: int = attrs.field(default=0, validator=_not_negative)
    #: File descriptors the default limits are scaled to; 0: half of ``RLIMIT_NOFILE``.
    limits_fds: int = attrs.field(default=0, validator=_not_negative)
    #: Most inbound connections from one IP address.
    max_inbound_per_ip: int = attrs.field(default=64, validator=_positive)
    #: Most outbound connections to one IP address (relayed ones count for no IP).
    max_outbound_per_ip: int = attrs.field(default=64, validator=_positive)
    #: New inbound connections per second allowed from one IP (0: no rate limit), and
    #: the burst allowed above that rate.
    inbound_rate_per_ip: float = attrs.field(default=16.0, validator=_not_negative)
    inbound_burst_per_ip: int = attrs.field(default=64, validator=_positive)
    #: Loopback addresses skip the per-IP limits (by default they count like any other).
    limits_exempt_loopback: bool = False
    #: IP networks (CIDR) and peer ids whose connections are never refused by the limits.
    limits_allowlist: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)

    # --- connection manager (switchy.stack.connmgr) --------------------------------
    #: Trimming brings the connections down to ``conn_low_water`` when there are more
    #: than ``conn_high_water``; connections younger than ``conn_grace_period`` stay.
    conn_low_water: int = attrs.field(default=160, validator=_not_negative)
    conn_high_water: int = attrs.field(default=192, validator=_positive)
    conn_grace_period: float = attrs.field(default=20.0, validator=_not_negative)
    #: Close connections without streams after this many seconds; 0: never.
    idle_timeout: float = attrs.field(default=0.0, validator=_not_negative)

    def is_public_ip(self, ip: str) -> bool:
        """Whether ``ip`` is globally routable or in :attr:`public_networks`."""
        addr = normalized_ip(ip)
        if addr is None:
            return False
        if addr.is_global:
            return True
        return any(addr in n for n in _parsed_networks(self.public_networks))

    def __attrs_post_init__(self) -> None:
        if self.max_stream_window < self.initial_stream_window:
            raise InvalidConfiguration(
                "max_stream_window must be >= initial_stream_window "
                f"({self.max_stream_window} < {self.initial_stream_window})"
            )
        if self.keepalive_interval < 0:
            raise InvalidConfiguration(
                f"keepalive_interval must be >= 0, got {self.keepalive_interval!r}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> NetworkConfig:
        """Build a config from defaults, ``SWITCHY_<FIELD>`` variables, then ``overrides``.

        ``SWITCHY_MAX_MESSAGE_SIZE=2097152`` sets ``max_message_size``.  A value
        that does not parse raises :class:`InvalidConfiguration` naming the variable; an
        unknown ``SWITCHY_*`` variable is logged as a warning (once per name, see
        :func:`unknown_env_variables`).
        """
        env = os.environ if environ is None else environ
        for name, hint in unknown_env_variables(env).items():
            if name not in _warned:
                _warned.add(name)
                suggestion = f" (did you mean {hint}?)" if hint else ""
                log.warning("unknown environment variable %s ignored%s", name, suggestion)
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            name = ENV_PREFIX + field.name.upper()
            raw = env.get(name)
            if raw is None:
                continue
            if isinstance(field.default, tuple):
                values[field.name] = tuple(x.strip() for x in raw.split(",") if x.strip())
                continue
            if isinstance(field.default, bool):
                values[field.name] = _parse_bool(name, raw)
                continue
            kind = int if isinstance(field.default, int) else float
            try:
                values[field.name] = kind(raw)
            except ValueError:
                raise InvalidConfiguration(
                    f"{name}={raw!r} is not a valid {kind.__name__}"
                ) from None
        values.update(overrides)
        try:
            return cls(**values)
        except TypeError as exc:  # an unknown field
            raise InvalidConfiguration(str(exc)) from None


def unknown_env_variables(environ: Mapping[str, str]) -> dict[str, str | None]:
    """The ``SWITCHY_*`` variables of ``environ`` that nothing reads, each with the closest
    known name (a field of :class:`NetworkConfig` or one of :data:`OTHER_ENV_VARIABLES`),
    or ``None`` when none is close."""
    known = {ENV_PREFIX + f.name.upper() for f in attrs.fields(NetworkConfig)}
    known |= OTHER_ENV_VARIABLES
    # compared without the prefix they all share (it would make every name look close)
    suffixes = {k[len(ENV_PREFIX) :]: k for k in known}
    out: dict[str, str | None] = {}
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name[len(ENV_PREFIX) :], suffixes, n=1, cutoff=0.7)
            out[name] = suffixes[close[0]] if close else None
    return out
