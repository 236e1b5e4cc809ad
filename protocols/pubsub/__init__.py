"""Publish/subscribe: gossipsub v1.1/v1.2 (``/meshsub/1.2.0``, ``1.1.0``, ``1.0.0``).

``PubSub`` is the node service (``subscribe(topic)`` / ``await publish(topic, data)``);
``GossipSub`` is its sans-IO router; ``pb`` the RPC codec; ``score`` peer scoring.
"""

from switchy.protocols.pubsub.core import (
    GOSSIPSUB_V10,
    GOSSIPSUB_V11,
    GOSSIPSUB_V12,
    MAX_MESSAGE_SIZE,
    GossipParams,
    GossipSub,
    Received,
    SignaturePolicy,
    ValidationResult,
)
from switchy.protocols.pubsub.score import PeerScoreParams, PeerScoreThresholds, TopicScoreParams
from switchy.protocols.pubsub.service import AsyncValidator, PubSub, Subscription

__all__ = [
    "GOSSIPSUB_V10",
    "GOSSIPSUB_V11",
    "GOSSIPSUB_V12",
    "MAX_MESSAGE_SIZE",
    "AsyncValidator",
    "GossipParams",
    "GossipSub",
    "PeerScoreParams",
    "PeerScoreThresholds",
    "PubSub",
    "Received",
    "SignaturePolicy",
    "Subscription",
    "TopicScoreParams",
    "ValidationResult",
]
