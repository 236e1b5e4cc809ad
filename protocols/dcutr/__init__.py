"""DCUtR (``/libp2p/dcutr``): relayed connections become direct ones by hole punching.

:class:`~.service.DCUtRService` is the service; :mod:`.core` holds the sans-IO
state machines and address choice, :mod:`.pb` the ``HolePunch`` codec.
"""

from switchy.protocols.dcutr.core import MAX_ATTEMPTS, MAX_PUNCH_ADDRS, PunchBackoff, Role
from switchy.protocols.dcutr.pb import DCUTR_PROTOCOL, HolePunch, HolePunchType
from switchy.protocols.dcutr.service import (
    DCUtRConfig,
    DCUtRService,
    PunchEvent,
    candidate_addrs,
)

__all__ = [
    "DCUTR_PROTOCOL",
    "MAX_ATTEMPTS",
    "MAX_PUNCH_ADDRS",
    "DCUtRConfig",
    "DCUtRService",
    "HolePunch",
    "HolePunchType",
    "PunchBackoff",
    "PunchEvent",
    "Role",
    "candidate_addrs",
]
