"""The one registry: protocol ids mapped to what serves them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeAlias, TypeVar

from stack.errors import InvalidConfiguration, ProtocolError
from stack.negotiation import validate_protocol_id

if TYPE_CHECKING:
    from stack.stream import MuxedStream

__all__ = ["ProtocolRegistry", "StreamHandler"]

#: An application protocol handler: serves one negotiated inbound stream.
StreamHandler: TypeAlias = "Callable[[MuxedStream], Awaitable[None]]"

H = TypeVar("H")


class ProtocolRegistry(Generic[H]):
    """Protocol id → handler, in registration order, with optional match functions.

    ``register("/app/1.0.0", h, match=lambda p: p.startswith("/app/1."))`` also
    serves other ids the match function accepts (e.g. minor versions).
    """

    def __init__(self) -> None:
        self._handlers: dict[str, H] = {}
        self._matchers: list[tuple[Callable[[str], bool], str]] = []

    def register(
        self, protocol_id: str, handler: H, *, match: Callable[[str], bool] | None = None
    ) -> None:
        """Register ``handler`` for ``protocol_id`` (replacing an earlier one)."""
        try:
            validate_protocol_id(protocol_id)
        except ProtocolError as exc:
            raise InvalidConfiguration(str(exc)) from None
        if not protocol_id.startswith("/"):
            raise InvalidConfiguration(f"protocol id {protocol_id!r} must start with '/'")
        self._handlers[protocol_id] = handler
        self._matchers = [(m, p) for m, p in self._matchers if p != protocol_id]
        if match is not None:
            self._matchers.append((match, protocol_id))

    def unregister(self, protocol_id: str) -> None:
        """Forget ``protocol_id`` (no error if unknown)."""
        self._handlers.pop(protocol_id, None)
        self._matchers = [(m, p) for m, p in self._matchers if p != protocol_id]

    def get(self, protocol_id: str) -> H | None:
        """The handler serving ``protocol_id``, exactly or through a match function."""
        handler = self._handlers.get(protocol_id)
        if handler is not None:
            return handler
        for match, registered in self._matchers:
            if match(protocol_id):
                return self._handlers[registered]
        return None

    def __contains__(self, protocol_id: object) -> bool:
        return isinstance(protocol_id, str) and self.get(protocol_id) is not None

    def protocols(self) -> list[str]:
        """Registered protocol ids in registration order."""
        return list(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)
