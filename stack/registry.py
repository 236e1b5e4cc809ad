"""The one protocol registry: protocol ids mapped to what serves them.

A :class:`ProtocolRegistry` is generic in what it maps to, so the same class
holds application stream handlers (:data:`StreamHandler`), security transports
and stream muxers; a node keeps one registry per kind.  It plugs straight into
multistream-select: ``handle_protocol(stream, registry)`` answers with it and
lists ``registry.protocols()`` for ``ls``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeAlias, TypeVar

from switchy.stack.errors import InvalidConfiguration
from switchy.stack.negotiation import MAX_PROTOCOL_ID_LENGTH, validate_protocol_id

if TYPE_CHECKING:
    from switchy.stack.stream import MuxedStream

__all__ = ["MAX_PROTOCOL_ID_LENGTH", "ProtocolRegistry", "StreamHandler", "validate_registered_id"]

log = logging.getLogger(__name__)

#: An application protocol handler: serves one negotiated inbound stream.
StreamHandler: TypeAlias = "Callable[[MuxedStream], Awaitable[None]]"

#: A match function: also serve this (remote-proposed) protocol id?
MatchFunction: TypeAlias = Callable[[str], bool]

H = TypeVar("H")


def validate_registered_id(protocol_id: str) -> None:
    """Raise :class:`InvalidConfiguration` unless ``protocol_id`` can be registered.

    A registered id is non-empty valid UTF-8 text starting with ``/``, without a
    newline, at most :data:`MAX_PROTOCOL_ID_LENGTH` bytes long.
    """
    validate_protocol_id(protocol_id)
    if not protocol_id.startswith("/"):
        raise InvalidConfiguration(f"protocol id {protocol_id!r} must start with '/'")


class ProtocolRegistry(Generic[H]):
    """Protocol id → handler, in registration order, with optional match functions.

    ``register("/app/1.0.0", h, match=lambda p: p.startswith("/app/1."))`` serves
    ``/app/1.0.0`` and also every other id the match function accepts (e.g. later
    minor versions); exact ids are looked up first, then match functions in
    registration order.  A match function that raises counts as "no match" (it
    sees ids chosen by remote peers) and is logged.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, H] = {}
        self._matchers: dict[str, MatchFunction] = {}

    def register(self, protocol_id: str, handler: H, *, match: MatchFunction | None = None) -> None:
        """Serve ``protocol_id`` (and ids ``match`` accepts) with ``handler``.

        Registering an id again replaces its handler and match function but keeps
        its place in :meth:`protocols`.  Raises :class:`InvalidConfiguration` for
        an invalid id or a ``match`` that is not callable.
        """
        validate_registered_id(protocol_id)
        if match is not None and not callable(match):
            raise InvalidConfiguration(f"match for {protocol_id!r} must be callable, not {match!r}")
        self._handlers[protocol_id] = handler
        self._matchers.pop(protocol_id, None)
        if match is not None:
            self._matchers[protocol_id] = match

    def unregister(self, protocol_id: str) -> None:
        """Stop serving ``protocol_id`` and what its match function accepted (no-op if unknown)."""
        self._handlers.pop(protocol_id, None)
        self._matchers.pop(protocol_id, None)

    def resolve(self, protocol_id: str) -> tuple[str, H] | None:
        """``(registered id, handler)`` serving ``protocol_id``, or None."""
        handlers = self._handlers
        if protocol_id in handlers:
            return protocol_id, handlers[protocol_id]
        for registered, match in self._matchers.items():
            try:
                matched = match(protocol_id)
            except Exception:
                log.warning(
                    "match function of %s failed on %r", registered, protocol_id, exc_info=True
                )
                continue
            if matched:
                return registered, self._handlers[registered]
        return None

    def get(self, protocol_id: str) -> H | None:
        """The handler serving ``protocol_id``, exactly or through a match function."""
        found = self.resolve(protocol_id)
        return None if found is None else found[1]

    def __contains__(self, protocol_id: object) -> bool:
        if not isinstance(protocol_id, str):
            return False
        if protocol_id in self._handlers:
            return True
        return bool(self._matchers) and self.resolve(protocol_id) is not None

    def protocols(self) -> list[str]:
        """Registered protocol ids in registration order (what ``ls`` lists)."""
        return list(self._handlers)

    def __iter__(self) -> Iterator[str]:
        return iter(self.protocols())

    def __len__(self) -> int:
        return len(self._handlers)

    def __repr__(self) -> str:
        return f"<ProtocolRegistry {self.protocols()}>"
