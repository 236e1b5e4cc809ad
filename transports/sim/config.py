"""Settings of the network simulator, with defaults and ``SIMULATOR_*`` environment overrides.

The five settings and their variables:

============================  ========================================  =========
field                         environment variable                      default
============================  ========================================  =========
``default_latency_ms``        ``SIMULATOR_DEFAULT_LATENCY_MS``          50
``default_packet_loss``       ``SIMULATOR_DEFAULT_PACKET_LOSS``         0.01
``discovery_delay_ms``        ``SIMULATOR_DISCOVERY_DELAY_MS``          100
``connection_timeout_secs``   ``SIMULATOR_CONNECTION_TIMEOUT_SECS``     30
``max_message_size``          ``SIMULATOR_MAX_MESSAGE_SIZE``            1 MiB
============================  ========================================  =========
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, Final

import attrs

from switchy.stack.errors import InvalidConfiguration

__all__ = ["ENV_PREFIX", "SimConfig"]

#: Prefix of the environment variables read by :meth:`SimConfig.from_env`.
ENV_PREFIX: Final = "SIMULATOR_"


def _finite_non_negative(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise InvalidConfiguration(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _probability(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise InvalidConfiguration(f"{attribute.name} must be within [0, 1], got {value!r}")


def _finite_positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InvalidConfiguration(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _positive_int(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise InvalidConfiguration(f"{attribute.name} must be an integer > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class SimConfig:
    """Defaults of a simulated network (immutable; derive copies with :func:`attrs.evolve`)."""

    #: One-way latency of a link created without an explicit latency, in milliseconds.
    default_latency_ms: float = attrs.field(default=50.0, validator=_finite_non_negative)
    #: Loss probability of a link created without an explicit loss rate, in [0, 1].
    default_packet_loss: float = attrs.field(default=0.01, validator=_probability)
    #: Time a name-service lookup takes, in milliseconds.
    discovery_delay_ms: float = attrs.field(default=100.0, validator=_finite_non_negative)
    #: How long a connection attempt or a stalled connection may go without getting
    #: through before it fails, in seconds.
    connection_timeout_secs: float = attrs.field(default=30.0, validator=_finite_positive)
    #: Largest datagram the datagram service carries, in bytes.
    max_message_size: int = attrs.field(default=1024 * 1024, validator=_positive_int)

    @property
    def default_latency(self) -> float:
        """:attr:`default_latency_ms` in seconds."""
        return self.default_latency_ms / 1000.0

    @property
    def discovery_delay(self) -> float:
        """:attr:`discovery_delay_ms` in seconds."""
        return self.discovery_delay_ms / 1000.0

    @property
    def connection_timeout(self) -> float:
        """:attr:`connection_timeout_secs` (seconds)."""
        return self.connection_timeout_secs

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> SimConfig:
        """Defaults, then ``SIMULATOR_<FIELD>`` variables, then ``overrides``.

        A variable that does not parse, or whose value is out of range, raises
        :class:`~switchy.stack.errors.InvalidConfiguration` naming the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            name = ENV_PREFIX + field.name.upper()
            raw = env.get(name)
            if raw is None:
                continue
            kind: type[int] | type[float] = int if field.name == "max_message_size" else float
            try:
                value: Any = kind(raw.strip())
            except ValueError:
                raise InvalidConfiguration(
                    f"{name}={raw!r} is not a valid {kind.__name__}"
                ) from None
            try:
                cls(**{field.name: value})
            except InvalidConfiguration as exc:
                raise InvalidConfiguration(f"{name}={raw!r}: {exc}") from None
            values[field.name] = value
        values.update(overrides)
        try:
            return cls(**values)
        except TypeError as exc:
            raise InvalidConfiguration(str(exc)) from None
