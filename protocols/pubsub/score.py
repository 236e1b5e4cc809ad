"""Gossipsub v1.1 peer scoring (``pubsub/gossipsub/gossipsub-v1.1.md``, "Peer Scoring").

The score of a peer is::

    min(topic_score_cap, Σ_topics topic_weight · (w1·P1 + w2·P2 + w3·P3 + w3b·P3b + w4·P4))
        + w5·P5 + w6·P6 + w7·P7

with P1 time in mesh, P2 first message deliveries, P3 the square of the mesh
message delivery deficit, P3b the mesh failure penalty, P4 the square of invalid
messages, P5 an application-specific score, P6 the IP colocation factor (the
square of the number of scored peers sharing one of the peer's IP addresses beyond
``ip_colocation_factor_threshold``; addresses in ``ip_colocation_factor_whitelist``
never count; the adapter tells the IPs with :meth:`PeerScore.add_peer`) and P7 the
square of the behaviour penalty above its threshold.  Counters decay every
``decay_interval``; a peer
that disconnects keeps its counters for ``retain_score`` seconds so that it
cannot reset a bad score by reconnecting.

Pure state, driven by the router with explicit ``now`` values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Final

import attrs

from switchy.stack.errors import InvalidConfiguration
from switchy.stack.identity import PeerId

__all__ = [
    "PeerScore",
    "PeerScoreParams",
    "PeerScoreThresholds",
    "TopicScoreParams",
    "default_score_params",
]

#: Most peers whose score counters are kept, connected or retained.
MAX_SCORED_PEERS: Final = 10_000
#: Most IP addresses counted for one peer (P6).
MAX_IPS_PER_PEER: Final = 8

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The default P6 whitelist: loopback (peers on this machine share its address by
#: nature; a local test mesh is not a sybil attack).
LOOPBACK_NETWORKS: Final[tuple[IpNetwork, ...]] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


def _networks(value: Iterable[str | IpNetwork]) -> tuple[IpNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(v) for v in value)
    except ValueError as exc:
        raise InvalidConfiguration(f"ip_colocation_factor_whitelist: {exc}") from None


@attrs.frozen
class TopicScoreParams:
    """Per-topic score parameters (the spec's names; weights of penalties are negative)."""

    topic_weight: float = 1.0
    time_in_mesh_weight: float = 0.01
    time_in_mesh_quantum: float = 1.0
    time_in_mesh_cap: float = 3600.0
    first_message_deliveries_weight: float = 1.0
    first_message_deliveries_decay: float = 0.5
    first_message_deliveries_cap: float = 100.0
    mesh_message_deliveries_weight: float = 0.0
    mesh_message_deliveries_decay: float = 0.5
    mesh_message_deliveries_cap: float = 100.0
    mesh_message_deliveries_threshold: float = 1.0
    mesh_message_deliveries_window: float = 0.01
    mesh_message_deliveries_activation: float = 5.0
    mesh_failure_penalty_weight: float = 0.0
    mesh_failure_penalty_decay: float = 0.5
    invalid_message_deliveries_weight: float = -10.0
    invalid_message_deliveries_decay: float = 0.99

    def __attrs_post_init__(self) -> None:
        if self.topic_weight < 0:
            raise InvalidConfiguration("topic_weight must be >= 0")
        if self.time_in_mesh_weight < 0 or self.first_message_deliveries_weight < 0:
            raise InvalidConfiguration("P1 and P2 weights must be >= 0")
        if self.mesh_message_deliveries_weight > 0 or self.mesh_failure_penalty_weight > 0:
            raise InvalidConfiguration("P3 and P3b weights must be <= 0")
        if self.invalid_message_deliveries_weight > 0:
            raise InvalidConfiguration("the P4 weight must be <= 0")
        if self.time_in_mesh_quantum <= 0:
            raise InvalidConfiguration("time_in_mesh_quantum must be > 0")
        for name in (
            "first_message_deliveries_decay",
            "mesh_message_deliveries_decay",
            "mesh_failure_penalty_decay",
            "invalid_message_deliveries_decay",
        ):
            if not 0 < getattr(self, name) < 1:
                raise InvalidConfiguration(f"{name} must be in (0, 1)")


@attrs.frozen
class PeerScoreParams:
    """Score parameters for all topics (``topics``; others use ``default_topic``)."""

    topics: dict[str, TopicScoreParams] = attrs.field(factory=dict)
    default_topic: TopicScoreParams | None = attrs.field(factory=TopicScoreParams)
    topic_score_cap: float = 100.0
    app_specific_weight: float = 1.0
    app_specific_score: Callable[[PeerId], float] | None = None
    #: P6: weight (<= 0; 0 turns P6 off), threshold (peers per IP tolerated) and the
    #: networks whose addresses never count (loopback by default; ``()`` for none).
    ip_colocation_factor_weight: float = -1.0
    ip_colocation_factor_threshold: float = 10.0
    ip_colocation_factor_whitelist: tuple[IpNetwork, ...] = attrs.field(
        default=LOOPBACK_NETWORKS, converter=_networks
    )
    behaviour_penalty_weight: float = -10.0
    behaviour_penalty_threshold: float = 6.0
    behaviour_penalty_decay: float = 0.9
    decay_interval: float = 1.0
    decay_to_zero: float = 0.01
    retain_score: float = 3600.0

    def __attrs_post_init__(self) -> None:
        if self.behaviour_penalty_weight > 0:
            raise InvalidConfiguration("behaviour_penalty_weight must be <= 0")
        if self.ip_colocation_factor_weight > 0:
            raise InvalidConfiguration("ip_colocation_factor_weight must be <= 0")
        if self.ip_colocation_factor_threshold < 1:
            raise InvalidConfiguration("ip_colocation_factor_threshold must be >= 1")
        if not 0 < self.behaviour_penalty_decay < 1:
            raise InvalidConfiguration("behaviour_penalty_decay must be in (0, 1)")
        if self.decay_interval <= 0:
            raise InvalidConfiguration("decay_interval must be > 0")

    def for_topic(self, topic: str) -> TopicScoreParams | None:
        """The parameters of ``topic`` (``None``: the topic is not scored)."""
        return self.topics.get(topic, self.default_topic)


@attrs.frozen
class PeerScoreThresholds:
    """The spec's thresholds: below gossip no gossip, below publish no publishing to the
    peer, below graylist its RPCs are ignored; PX is accepted only from peers above
    ``accept_px``; opportunistic grafting starts when the mesh's median is below
    ``opportunistic_graft``."""

    gossip: float = -10.0
    publish: float = -50.0
    graylist: float = -80.0
    accept_px: float = 10.0
    opportunistic_graft: float = 1.0

    def __attrs_post_init__(self) -> None:
        if not self.gossip <= 0:
            raise InvalidConfiguration("the gossip threshold must be <= 0")
        if not self.graylist <= self.publish <= self.gossip:
            raise InvalidConfiguration("thresholds must satisfy graylist <= publish <= gossip")
        if self.accept_px < 0 or self.opportunistic_graft < 0:
            raise InvalidConfiguration("accept_px and opportunistic_graft must be >= 0")


def default_score_params() -> PeerScoreParams:
    """The parameters :class:`~switchy.protocols.pubsub.core.GossipSub` uses by default."""
    return PeerScoreParams()


@attrs.define
class _TopicStats:
    in_mesh: bool = False
    graft_time: float = 0.0
    mesh_time: float = 0.0
    first_deliveries: float = 0.0
    mesh_deliveries: float = 0.0
    mesh_active: bool = False
    mesh_failure: float = 0.0
    invalid: float = 0.0


@attrs.define
class _PeerStats:
    connected: bool = True
    expire: float = 0.0
    topics: dict[str, _TopicStats] = attrs.field(factory=dict)
    behaviour_penalty: float = 0.0
    #: The peer's IP addresses that count for P6 (whitelisted ones left out).
    ips: tuple[str, ...] = ()


class PeerScore:
    """Score counters of every known peer."""

    def __init__(self, params: PeerScoreParams) -> None:
        self.params = params
        self._peers: dict[PeerId, _PeerStats] = {}
        #: P6: the scored peers (connected or retained) seen at each IP address.
        self._ip_peers: dict[str, set[PeerId]] = {}

    def _stats(self, peer: PeerId) -> _PeerStats | None:
        return self._peers.get(peer)

    def _topic(self, peer: PeerId, topic: str) -> _TopicStats | None:
        st = self._peers.get(peer)
        if st is None or self.params.for_topic(topic) is None:
            return None
        ts = st.topics.get(topic)
        if ts is None:
            ts = st.topics[topic] = _TopicStats()
        return ts

    def add_peer(self, peer: PeerId, ips: Iterable[str] = ()) -> None:
        """A peer connected (its retained counters, if any, come back) from ``ips``
        (the IP addresses of its connections, for P6; relayed ones are not its own)."""
        st = self._peers.get(peer)
        if st is None:
            if len(self._peers) >= MAX_SCORED_PEERS:
                self._evict()
            st = self._peers[peer] = _PeerStats()
        else:
            st.connected = True
        self.set_ips(peer, ips)

    def set_ips(self, peer: PeerId, ips: Iterable[str]) -> None:
        """Replace the IP addresses of ``peer`` (P6); malformed ones are ignored."""
        st = self._peers.get(peer)
        if st is None:
            return
        counted: list[str] = []
        for ip in ips:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                continue
            if any(addr in net for net in self.params.ip_colocation_factor_whitelist):
                continue
            if str(addr) not in counted and len(counted) < MAX_IPS_PER_PEER:
                counted.append(str(addr))
        self._forget_ips(peer, st)
        st.ips = tuple(counted)
        for ip in st.ips:
            self._ip_peers.setdefault(ip, set()).add(peer)

    def _forget_ips(self, peer: PeerId, st: _PeerStats) -> None:
        for ip in st.ips:
            peers = self._ip_peers.get(ip)
            if peers is not None:
                peers.discard(peer)
                if not peers:
                    del self._ip_peers[ip]
        st.ips = ()

    def _delete(self, peer: PeerId) -> None:
        st = self._peers.pop(peer, None)
        if st is not None:
            self._forget_ips(peer, st)

    def _evict(self) -> None:
        for p, st in list(self._peers.items()):
            if not st.connected:
                self._delete(p)
                return

    def remove_peer(self, peer: PeerId, now: float) -> None:
        """A peer disconnected: keep its counters for ``retain_score`` if it scored < 0."""
        st = self._peers.get(peer)
        if st is None:
            return
        if self.score(peer, now) > 0:
            self._delete(peer)
            return
        for topic, ts in st.topics.items():
            if ts.in_mesh:
                self._apply_failure(topic, ts)
            ts.in_mesh = False
            ts.first_deliveries = 0.0
        st.connected = False
        st.expire = now + self.params.retain_score

    def graft(self, peer: PeerId, topic: str, now: float) -> None:
        """``peer`` joined our mesh of ``topic``."""
        ts = self._topic(peer, topic)
        if ts is not None:
            ts.in_mesh, ts.graft_time, ts.mesh_time, ts.mesh_active = True, now, 0.0, False

    def prune(self, peer: PeerId, topic: str) -> None:
        """``peer`` left our mesh of ``topic`` (a delivery deficit becomes a P3b penalty)."""
        ts = self._topic(peer, topic)
        if ts is not None:
            self._apply_failure(topic, ts)
            ts.in_mesh = False

    def _apply_failure(self, topic: str, ts: _TopicStats) -> None:
        tp = self.params.for_topic(topic)
        if tp is not None and ts.mesh_active:
            deficit = tp.mesh_message_deliveries_threshold - ts.mesh_deliveries
            if deficit > 0:
                ts.mesh_failure += deficit * deficit

    def first_delivery(self, peer: PeerId, topic: str) -> None:
        """``peer`` was the first to deliver a valid message of ``topic`` (P2, P3)."""
        ts = self._topic(peer, topic)
        tp = self.params.for_topic(topic)
        if ts is None or tp is None:
            return
        ts.first_deliveries = min(tp.first_message_deliveries_cap, ts.first_deliveries + 1)
        if ts.in_mesh:
            ts.mesh_deliveries = min(tp.mesh_message_deliveries_cap, ts.mesh_deliveries + 1)

    def near_first_delivery(self, peer: PeerId, topic: str, delay: float) -> None:
        """``peer`` delivered a valid message ``delay`` s after its first delivery (P3)."""
        ts = self._topic(peer, topic)
        tp = self.params.for_topic(topic)
        if ts is None or tp is None or not ts.in_mesh:
            return
        if delay <= tp.mesh_message_deliveries_window:
            ts.mesh_deliveries = min(tp.mesh_message_deliveries_cap, ts.mesh_deliveries + 1)

    def invalid_delivery(self, peer: PeerId, topic: str) -> None:
        """``peer`` delivered an invalid message of ``topic`` (P4)."""
        ts = self._topic(peer, topic)
        if ts is not None:
            ts.invalid += 1

    def add_penalty(self, peer: PeerId, count: float = 1.0) -> None:
        """Count a protocol misbehaviour of ``peer`` (P7)."""
        st = self._peers.get(peer)
        if st is not None:
            st.behaviour_penalty += count

    def refresh(self, now: float) -> None:
        """Decay every counter once (call every ``decay_interval``) and drop expired peers."""
        p = self.params
        z = p.decay_to_zero

        def decay(v: float, factor: float) -> float:
            v *= factor
            return 0.0 if v < z else v

        for peer, st in list(self._peers.items()):
            if not st.connected and now >= st.expire:
                self._delete(peer)
                continue
            for topic, ts in st.topics.items():
                tp = p.for_topic(topic)
                if tp is None:
                    continue
                ts.first_deliveries = decay(ts.first_deliveries, tp.first_message_deliveries_decay)
                ts.mesh_deliveries = decay(ts.mesh_deliveries, tp.mesh_message_deliveries_decay)
                ts.mesh_failure = decay(ts.mesh_failure, tp.mesh_failure_penalty_decay)
                ts.invalid = decay(ts.invalid, tp.invalid_message_deliveries_decay)
                if ts.in_mesh:
                    ts.mesh_time = now - ts.graft_time
                    if ts.mesh_time > tp.mesh_message_deliveries_activation:
                        ts.mesh_active = True
            st.behaviour_penalty = decay(st.behaviour_penalty, p.behaviour_penalty_decay)

    def score(self, peer: PeerId, now: float) -> float:
        """The current score of ``peer`` (0 for a peer never seen)."""
        st = self._peers.get(peer)
        if st is None:
            return 0.0
        p = self.params
        total = 0.0
        for topic, ts in st.topics.items():
            tp = p.for_topic(topic)
            if tp is None:
                continue
            s = 0.0
            if ts.in_mesh:
                p1 = min((now - ts.graft_time) / tp.time_in_mesh_quantum, tp.time_in_mesh_cap)
                s += tp.time_in_mesh_weight * p1
            s += tp.first_message_deliveries_weight * ts.first_deliveries
            if ts.mesh_active and ts.mesh_deliveries < tp.mesh_message_deliveries_threshold:
                deficit = tp.mesh_message_deliveries_threshold - ts.mesh_deliveries
                s += tp.mesh_message_deliveries_weight * deficit * deficit
            s += tp.mesh_failure_penalty_weight * ts.mesh_failure
            s += tp.invalid_message_deliveries_weight * ts.invalid * ts.invalid
            total += tp.topic_weight * s
        total = min(total, p.topic_score_cap) if p.topic_score_cap > 0 else total
        if p.app_specific_score is not None:
            total += p.app_specific_weight * p.app_specific_score(peer)
        if st.ips and p.ip_colocation_factor_weight:
            total += p.ip_colocation_factor_weight * self.ip_colocation(peer)
        excess = st.behaviour_penalty - p.behaviour_penalty_threshold
        if excess > 0:
            total += p.behaviour_penalty_weight * excess * excess
        return total

    def ip_colocation(self, peer: PeerId) -> float:
        """P6 of ``peer``: for each of its (not whitelisted) IP addresses shared by more
        than ``ip_colocation_factor_threshold`` scored peers, the square of the surplus."""
        st = self._peers.get(peer)
        if st is None:
            return 0.0
        threshold = self.params.ip_colocation_factor_threshold
        p6 = 0.0
        for ip in st.ips:
            surplus = len(self._ip_peers.get(ip, ())) - threshold
            if surplus > 0:
                p6 += surplus * surplus
        return p6

    def __len__(self) -> int:
        return len(self._peers)
