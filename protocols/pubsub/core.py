"""The sans-IO gossipsub v1.1 router (``pubsub/gossipsub/gossipsub-v1.0.md``, ``-v1.1.md``).

:class:`GossipSub` is a pure state machine.  The adapter tells it about peers
(:meth:`~GossipSub.add_peer`, :meth:`~GossipSub.remove_peer`), hands it every
received RPC (:meth:`~GossipSub.handle_bytes`), calls :meth:`~GossipSub.heartbeat`
every ``heartbeat_interval`` and drains three outputs: RPCs to send
(:meth:`~GossipSub.outgoing`), messages for local subscribers
(:meth:`~GossipSub.deliveries`) and peers offered by peer exchange
(:meth:`~GossipSub.px_candidates`).  Every call takes the current time ``now``
explicitly; randomness comes from the ``rng`` given.

Implemented: topics, the mesh (D, D_lo, D_hi, D_score, D_out), fanout, gossip
(IHAVE/IWANT over a message cache of ``mcache_len`` windows of which
``mcache_gossip`` are gossiped, the gossip factor), GRAFT/PRUNE with backoff and
peer exchange, flood publishing, the seen cache, message signing with strict
verification, message ids, peer scoring with its thresholds
(:mod:`~switchy.protocols.pubsub.score`), opportunistic grafting, IWANT
promises, and the v1.1 limits on IHAVE (``max_ihave_messages`` per heartbeat,
``max_ihave_length`` ids asked) and IWANT retransmissions; IDONTWANT from v1.2
(``/meshsub/1.2.0``, ``gossipsub-v1.2.md``): on the first copy of a message of at
least ``idontwant_min_size`` bytes we tell our other v1.2 mesh peers of its topic
not to send it, and we skip forwarding a message to a peer that told us so (at most
``max_idontwant_messages`` ids per peer and heartbeat are taken, and they are kept
``idontwant_ttl`` heartbeats); direct peers (v1.1 explicit peering,
:meth:`~GossipSub.set_direct`): always sent every message of their topics, never
grafted into a mesh nor sent gossip, a GRAFT from one is answered with PRUNE, never
graylisted, and every ``direct_connect_ticks`` heartbeats those not attached are
offered for a reconnect (:meth:`~GossipSub.direct_to_connect`); deferred (asynchronous)
validation (:meth:`~GossipSub.defer_validation`): a message of such a topic waits in
:meth:`~GossipSub.validations` until the adapter reports its verdict
(:meth:`~GossipSub.validation_result`), at most ``max_pending_validations`` at once and
for at most ``validation_timeout`` seconds (then it counts as ignored); peer exchange
with signed peer records (v1.1): a PRUNE's PX entries carry the signed peer record
(RFC 0003 envelope) of each peer offered when ``signed_records`` knows one, and a
record received is used only when its signature verifies and its peer id is the
entry's (else the entry is dropped, counted as ``"invalid peer record"``); an entry
without a record offers the peer id alone (:meth:`~GossipSub.px_candidates`).
"""

from __future__ import annotations

import enum
import random
import statistics
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final

import attrs

from switchy.protocols.pubsub.pb import (
    MAX_IDS_PER_ENTRY,
    MAX_PEER_RECORD_SIZE,
    MAX_PX_PEERS,
    MAX_RPC_SIZE,
    RPC,
    Control,
    Graft,
    IHave,
    IWant,
    Message,
    PeerInfo,
    Prune,
    SubOpts,
    decode_rpc,
    encode_message,
    encode_rpc,
    signing_bytes,
)
from switchy.protocols.pubsub.score import PeerScore, PeerScoreParams, PeerScoreThresholds
from switchy.stack.codec import pb_bytes
from switchy.stack.envelope import PeerRecord, open_peer_record
from switchy.stack.errors import (
    InvalidConfiguration,
    InvalidPeerId,
    MessageTooLarge,
    P2PError,
    SerializationError,
)
from switchy.stack.identity import KeyPair, PeerId, PublicKey

__all__ = [
    "GOSSIPSUB_V10",
    "GOSSIPSUB_V11",
    "GOSSIPSUB_V12",
    "MAX_MESSAGE_SIZE",
    "GossipParams",
    "GossipSub",
    "Received",
    "SignaturePolicy",
    "ValidationResult",
    "default_message_id",
]

#: Gossipsub v1.0, v1.1 and v1.2 protocol ids.
GOSSIPSUB_V10: Final = "/meshsub/1.0.0"
GOSSIPSUB_V11: Final = "/meshsub/1.1.0"
GOSSIPSUB_V12: Final = "/meshsub/1.2.0"
#: Largest message payload we publish or forward, in bytes (leaves room for the envelope).
MAX_MESSAGE_SIZE: Final = MAX_RPC_SIZE - 4096
#: Most topics a single peer may be subscribed to, as far as we keep track.
MAX_TOPICS_PER_PEER: Final = 1000
#: Most topics we track across all peers.
MAX_KNOWN_TOPICS: Final = 10_000
#: Most entries in the seen cache (besides its time to live).
MAX_SEEN: Final = 500_000
#: Most messages pending for one peer before new ones are dropped (a slow peer).
MAX_PENDING_MESSAGES: Final = 2000
#: Most outstanding IWANT promises.
MAX_PROMISES: Final = 50_000
#: Most candidates kept from peer exchange until the adapter drains them.
MAX_PX_CANDIDATES: Final = 256


class ValidationResult(enum.Enum):
    """A validator's verdict: deliver and forward, drop and penalise, or just drop."""

    ACCEPT = "accept"
    REJECT = "reject"
    IGNORE = "ignore"


class SignaturePolicy(enum.Enum):
    """``STRICT_SIGN``: sign ours, require valid signatures; ``STRICT_NO_SIGN``: the opposite."""

    STRICT_SIGN = "strict-sign"
    STRICT_NO_SIGN = "strict-no-sign"


Validator = Callable[["Received"], ValidationResult]
MessageIdFn = Callable[[Message], bytes]
#: The signed peer record (envelope bytes, as received) of a peer, if one is known.
SignedRecords = Callable[[PeerId], bytes | None]


def default_message_id(m: Message) -> bytes:
    """The spec's default message id: the ``from`` field followed by the ``seqno``."""
    return (m.from_ or b"") + (m.seqno or b"")


@attrs.frozen
class GossipParams:
    """Router parameters; defaults are the spec's (D_lo 4 as the spec says; go uses 5)."""

    d: int = 6
    d_lo: int = 4
    d_hi: int = 12
    d_lazy: int = 6
    d_score: int = 4
    d_out: int = 2
    heartbeat_interval: float = 1.0
    fanout_ttl: float = 60.0
    mcache_len: int = 5
    mcache_gossip: int = 3
    seen_ttl: float = 120.0
    gossip_factor: float = 0.25
    prune_peers: int = MAX_PX_PEERS
    prune_backoff: float = 60.0
    unsubscribe_backoff: float = 10.0
    graft_flood_threshold: float = 10.0
    opportunistic_graft_ticks: int = 60
    opportunistic_graft_peers: int = 2
    max_ihave_length: int = 5000
    max_ihave_messages: int = 10
    iwant_followup_time: float = 3.0
    gossip_retransmission: int = 3
    flood_publish: bool = True
    do_px: bool = True
    #: v1.2: smallest message (payload bytes) for which we send IDONTWANT (the spec
    #: leaves the policy open and warns that it costs more than it saves on small ones).
    idontwant_min_size: int = 1024
    #: v1.2: most IDONTWANT ids taken from one peer per heartbeat.
    max_idontwant_messages: int = 1000
    #: v1.2: heartbeats an IDONTWANT id is kept.
    idontwant_ttl: int = 3
    #: v1.1 direct peers: heartbeats between reconnect attempts (go's default, 5 min).
    direct_connect_ticks: int = 300
    #: Most messages waiting for a deferred (asynchronous) validator at once; more are
    #: dropped unvalidated and unpenalised ("validation throttled").
    max_pending_validations: int = 1024
    #: Seconds a deferred validation may take before the message counts as ignored.
    validation_timeout: float = 10.0

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.d_lo <= self.d <= self.d_hi:
            raise InvalidConfiguration("gossipsub needs 0 <= D_lo <= D <= D_hi")
        if not 0 <= self.d_out < self.d_lo or self.d_out > self.d // 2:
            raise InvalidConfiguration("gossipsub needs D_out < D_lo and D_out <= D / 2")
        if not 0 <= self.d_score <= self.d:
            raise InvalidConfiguration("gossipsub needs 0 <= D_score <= D")
        if not 0 < self.mcache_gossip <= self.mcache_len:
            raise InvalidConfiguration("gossipsub needs 0 < mcache_gossip <= mcache_len")
        if self.heartbeat_interval <= 0:
            raise InvalidConfiguration("heartbeat_interval must be > 0")
        if not 0 <= self.prune_peers <= MAX_PX_PEERS:
            raise InvalidConfiguration(f"prune_peers must be in 0..{MAX_PX_PEERS}")
        if self.direct_connect_ticks <= 0:
            raise InvalidConfiguration("direct_connect_ticks must be > 0")
        if self.max_pending_validations <= 0 or self.validation_timeout <= 0:
            raise InvalidConfiguration("max_pending_validations and validation_timeout must be > 0")


@attrs.frozen
class Received:
    """A message for local subscribers (or a validator)."""

    topic: str
    data: bytes
    msg_id: bytes
    source: PeerId | None
    seqno: bytes | None
    received_from: PeerId


@attrs.define
class _Peer:
    protocol: str
    outbound: bool
    topics: set[str] = attrs.field(factory=set)
    ihave_count: int = 0
    iasked: int = 0
    subs: list[SubOpts] = attrs.field(factory=list)
    msgs: list[tuple[bytes, bytes]] = attrs.field(factory=list)
    ihave: dict[str, list[bytes]] = attrs.field(factory=dict)
    iwant: list[bytes] = attrs.field(factory=list)
    graft: list[str] = attrs.field(factory=list)
    prune: list[Prune] = attrs.field(factory=list)
    dropped: int = 0
    #: v1.2: ids we tell the peer not to send; ids it told us not to send (expiry tick).
    idontwant: list[bytes] = attrs.field(factory=list)
    dont_send: dict[bytes, int] = attrs.field(factory=dict)
    idontwant_taken: int = 0

    def pending(self) -> bool:
        return bool(
            self.subs
            or self.msgs
            or self.ihave
            or self.iwant
            or self.graft
            or self.prune
            or self.idontwant
        )


@attrs.define
class _Seen:
    expiry: float
    first: float
    topic: str
    valid: bool
    peers: set[PeerId] = attrs.field(factory=set)


@attrs.define
class _Pending:
    """A message waiting for its deferred validator."""

    msg: Message
    received: Received
    started: float
    #: Peers that sent the message again while it was being validated.
    peers: set[PeerId] = attrs.field(factory=set)


@attrs.define
class _Cached:
    msg: Message
    #: The message as an ``RPC.publish`` field, ready to join any peer's RPC.
    field: bytes
    #: The encoded message (the field's value): further copies arriving so are not decoded.
    encoded: bytes
    served: dict[PeerId, int] = attrs.field(factory=dict)


class GossipSub:
    """The gossipsub v1.1 router state of one node (see the module docstring)."""

    def __init__(
        self,
        key: KeyPair,
        *,
        params: GossipParams | None = None,
        score_params: PeerScoreParams | None = None,
        thresholds: PeerScoreThresholds | None = None,
        rng: random.Random | None = None,
        policy: SignaturePolicy = SignaturePolicy.STRICT_SIGN,
        message_id: MessageIdFn = default_message_id,
        seqno_start: int = 0,
        signed_records: SignedRecords | None = None,
    ) -> None:
        self.key = key
        self.local = key.peer_id
        self._local_bytes = self.local.to_bytes()
        self.params = params or GossipParams()
        self.thresholds = thresholds or PeerScoreThresholds()
        self.score = PeerScore(score_params or PeerScoreParams())
        self.rng = rng or random.Random()
        self.policy = policy
        self.message_id = message_id
        self._seqno = seqno_start
        self.peers: dict[PeerId, _Peer] = {}
        #: Peers with something queued for them, in the order it was queued (an ordered
        #: set: :meth:`outgoing` looks at these only, not at every peer).
        self._dirty: dict[PeerId, None] = {}
        self.topics: dict[str, set[PeerId]] = {}
        self.mesh: dict[str, set[PeerId]] = {}
        self.fanout: dict[str, set[PeerId]] = {}
        self._lastpub: dict[str, float] = {}
        self.joined: set[str] = set()
        self._backoff: dict[tuple[str, PeerId], float] = {}
        self._seen: OrderedDict[bytes, _Seen] = OrderedDict()
        self._mcache: dict[bytes, _Cached] = {}
        #: The messages of the cache by their encoding (see :func:`decode_rpc`'s ``known``).
        self._decoded: dict[bytes, Message] = {}
        self._windows: list[list[tuple[bytes, str]]] = [[]]
        self._promises: dict[bytes, dict[PeerId, float]] = {}
        self._validators: dict[str, Validator] = {}
        self._deferred: set[str] = set()
        self._pending: dict[bytes, _Pending] = {}
        self._validations: list[Received] = []
        #: v1.1 direct peers (explicit peering agreements).
        self.direct: set[PeerId] = set()
        self._reconnect: list[PeerId] = []
        self._deliveries: list[Received] = []
        #: Where PX finds the signed peer records of the peers it offers.
        self.signed_records = signed_records
        self._px: list[tuple[PeerId, PeerRecord | None]] = []
        self._ticks = 0
        self._last_decay = 0.0
        #: Counters of what was dropped, by reason (for tests and metrics).
        self.dropped: dict[str, int] = {}

    # --- peers and topics ---------------------------------------------------------------

    def add_peer(
        self, peer: PeerId, protocol: str, *, outbound: bool, ips: Iterable[str] = ()
    ) -> None:
        """A peer speaks ``protocol`` with us; ``outbound`` when we dialled it; ``ips``: the
        IP addresses it connects from (for the IP colocation score, P6)."""
        if peer in self.peers or peer == self.local:
            return
        st = self.peers[peer] = _Peer(protocol, outbound)
        self.score.add_peer(peer, ips)
        st.subs = [SubOpts(True, t) for t in sorted(self.joined)]
        self._dirty[peer] = None

    def remove_peer(self, peer: PeerId, now: float) -> None:
        """The peer's stream or connection is gone."""
        st = self.peers.pop(peer, None)
        if st is None:
            return
        for topic in st.topics:
            subs = self.topics.get(topic)
            if subs is not None:
                subs.discard(peer)
                if not subs:
                    del self.topics[topic]
        for topic, mesh in self.mesh.items():
            if peer in mesh:
                mesh.discard(peer)
                self.score.prune(peer, topic)
        for fan in self.fanout.values():
            fan.discard(peer)
        self.score.remove_peer(peer, now)

    def set_validator(self, topic: str, validator: Validator | None) -> None:
        """Validate messages of ``topic`` with ``validator`` (``None`` removes it)."""
        if validator is None:
            self._validators.pop(topic, None)
        else:
            self._validators[topic] = validator

    def defer_validation(self, topic: str, enabled: bool = True) -> None:
        """Hold messages of ``topic`` (after any synchronous validator accepted them)
        until :meth:`validation_result` gives the verdict; they appear in
        :meth:`validations` meanwhile."""
        if enabled:
            self._deferred.add(topic)
        else:
            self._deferred.discard(topic)

    def set_direct(self, peers: Iterable[PeerId], now: float) -> None:
        """Make ``peers`` our direct peers (replacing the previous set): removed from
        every mesh and fanout, always forwarded to, never grafted."""
        self.direct = {p for p in peers if p != self.local}
        for topic, mesh in self.mesh.items():
            for peer in mesh & self.direct:
                mesh.discard(peer)
                self.score.prune(peer, topic)
                self._send_prune(topic, peer, now, px=False)
        for fan in self.fanout.values():
            fan -= self.direct

    def _direct_in(self, topic: str) -> set[PeerId]:
        """The direct peers subscribed to ``topic``."""
        return self.direct & self.topics.get(topic, set())

    def peer_score(self, peer: PeerId, now: float) -> float:
        """The current score of ``peer``."""
        return self.score.score(peer, now)

    def join(self, topic: str, now: float) -> None:
        """Subscribe to ``topic``: announce it and build its mesh (fanout peers first)."""
        if topic in self.joined:
            return
        self.joined.add(topic)
        for st in self.peers.values():
            st.subs.append(SubOpts(True, topic))
        self._dirty.update(dict.fromkeys(self.peers))
        mesh: set[PeerId] = set()
        for p in _ordered(self.fanout.pop(topic, ())):
            if p in self.direct:
                continue
            if self.score.score(p, now) >= 0 and len(mesh) < self.params.d:
                mesh.add(p)
        self._lastpub.pop(topic, None)
        if len(mesh) < self.params.d:
            for p in self._pick(topic, self.params.d - len(mesh), now, exclude=mesh):
                mesh.add(p)
        self.mesh[topic] = set()
        for p in mesh:
            self._graft(topic, p, now)

    def leave(self, topic: str, now: float) -> None:
        """Unsubscribe from ``topic``: announce it and prune its mesh."""
        if topic not in self.joined:
            return
        self.joined.discard(topic)
        for st in self.peers.values():
            st.subs.append(SubOpts(False, topic))
        self._dirty.update(dict.fromkeys(self.peers))
        for p in self.mesh.pop(topic, set()):
            self.score.prune(p, topic)
            self._send_prune(topic, p, now, backoff=self.params.unsubscribe_backoff)

    # --- publishing ---------------------------------------------------------------------

    def publish(self, topic: str, data: bytes, now: float) -> bytes:
        """Publish ``data`` on ``topic``; returns the message id.

        Raises :class:`MessageTooLarge` above :data:`MAX_MESSAGE_SIZE`.
        """
        if len(data) > MAX_MESSAGE_SIZE:
            raise MessageTooLarge(
                f"pubsub message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE} bytes"
            )
        if self.policy is SignaturePolicy.STRICT_SIGN:
            self._seqno += 1
            m = Message(
                topic=topic,
                data=data,
                from_=self._local_bytes,
                seqno=self._seqno.to_bytes(8, "big"),
            )
            m = attrs.evolve(m, signature=self.key.sign(signing_bytes(m)))
        else:
            m = Message(topic=topic, data=data)
        msg_id = self.message_id(m)
        if msg_id in self._seen:
            raise InvalidConfiguration("this message id was already published or seen")
        self._mark_seen(msg_id, topic, now, valid=True)
        field = self._cache(msg_id, m)
        if topic in self.joined:
            self._deliveries.append(self._received(m, msg_id, self.local))
        subs = self.topics.get(topic, set())
        if self.params.flood_publish:
            targets = {p for p in subs if self.score.score(p, now) >= self.thresholds.publish}
        elif topic in self.mesh:
            targets = set(self.mesh[topic])
        else:
            targets = self._fanout_peers(topic, now)
        if topic not in self.joined:
            self._fanout_peers(topic, now)
            self._lastpub[topic] = now
        if self.direct:
            targets = targets | self._direct_in(topic)
        for p in targets:
            self._queue_msg(p, field, msg_id)
        return msg_id

    def _fanout_peers(self, topic: str, now: float) -> set[PeerId]:
        fan = self.fanout.get(topic)
        if fan is None:
            if len(self.fanout) >= MAX_KNOWN_TOPICS:
                return set()
            fan = self.fanout[topic] = set()
        if len(fan) < self.params.d:
            fan.update(
                self._pick(
                    topic,
                    self.params.d - len(fan),
                    now,
                    exclude=fan,
                    min_score=self.thresholds.publish,
                    backoff_ok=True,
                )
            )
        return set(fan)

    # --- receiving ----------------------------------------------------------------------

    def handle_bytes(self, peer: PeerId, data: bytes, now: float) -> str | None:
        """Process one RPC's bytes from ``peer``; returns why it was dropped, else ``None``.

        A malformed RPC counts as misbehaviour (P7).
        """
        try:
            rpc = decode_rpc(data, self._decoded)
        except (SerializationError, MessageTooLarge) as exc:
            self.score.add_penalty(peer)
            self._drop("malformed rpc")
            return f"malformed RPC: {exc}"
        return self.handle_rpc(peer, rpc, now)

    def handle_rpc(self, peer: PeerId, rpc: RPC, now: float) -> str | None:
        """Process one decoded RPC from ``peer`` (see :meth:`handle_bytes`)."""
        st = self.peers.get(peer)
        if st is None:
            return "RPC from a peer that is not attached"
        direct = peer in self.direct  # never graylisted
        if not direct and self.score.score(peer, now) < self.thresholds.graylist:
            self._drop("graylisted")
            return "peer is graylisted"
        for sub in rpc.subscriptions:
            self._handle_sub(peer, st, sub)
        for k, m in enumerate(rpc.publish):
            if (
                self._handle_message(peer, m, now)
                and not direct
                and self.score.score(peer, now) < self.thresholds.graylist
            ):
                # The peer fell into the graylist inside this RPC: the rest is not looked at.
                self.dropped["graylisted"] = (
                    self.dropped.get("graylisted", 0) + len(rpc.publish) - k - 1
                )
                return "peer is graylisted"
        c = rpc.control
        if c is not None:
            iwant = self._handle_ihave(peer, st, c.ihave, now)
            self._handle_iwant(peer, c.iwant, now)
            prunes = self._handle_graft(peer, c.graft, now)
            self._handle_prune(peer, c.prune, now)
            self._handle_idontwant(st, c.idontwant)
            if iwant:
                st.iwant.extend(iwant)
                self._dirty[peer] = None
            for topic in prunes:
                self._send_prune(topic, peer, now, px=False)
        return None

    def _handle_idontwant(self, st: _Peer, entries: Iterable[IWant]) -> None:
        """v1.2: note the ids the peer does not want (bounded per heartbeat)."""
        expiry = self._ticks + self.params.idontwant_ttl
        for entry in entries:
            for mid in entry.ids:
                if st.idontwant_taken >= self.params.max_idontwant_messages:
                    self._drop("idontwant over limit")
                    return
                st.idontwant_taken += 1
                st.dont_send[mid] = expiry

    def _send_idontwant(self, topic: str, msg_id: bytes, skip: PeerId) -> None:
        """v1.2: tell the other v1.2 mesh peers of ``topic`` that we have ``msg_id``."""
        for p in self.mesh.get(topic, ()):
            st = self.peers.get(p)
            if (
                p != skip
                and st is not None
                and st.protocol == GOSSIPSUB_V12
                and len(st.idontwant) < MAX_PENDING_MESSAGES
            ):
                st.idontwant.append(msg_id)
                self._dirty[p] = None

    def _handle_sub(self, peer: PeerId, st: _Peer, sub: SubOpts) -> None:
        if sub.subscribe:
            if sub.topic in st.topics:
                return
            if len(st.topics) >= MAX_TOPICS_PER_PEER or (
                sub.topic not in self.topics and len(self.topics) >= MAX_KNOWN_TOPICS
            ):
                self._drop("topic limit")
                return
            st.topics.add(sub.topic)
            self.topics.setdefault(sub.topic, set()).add(peer)
        else:
            if sub.topic not in st.topics:
                return
            st.topics.discard(sub.topic)
            subs = self.topics.get(sub.topic)
            if subs is not None:
                subs.discard(peer)
                if not subs:
                    del self.topics[sub.topic]
            mesh = self.mesh.get(sub.topic)
            if mesh is not None and peer in mesh:
                mesh.discard(peer)
                self.score.prune(peer, sub.topic)
            fan = self.fanout.get(sub.topic)
            if fan is not None:
                fan.discard(peer)

    def _verify(self, m: Message) -> str | None:
        if self.policy is SignaturePolicy.STRICT_NO_SIGN:
            if m.from_ is not None or m.seqno is not None or m.signature is not None or m.key:
                return "unsigned policy: message carries from/seqno/signature/key"
            return None
        if m.from_ is None or m.seqno is None or m.signature is None:
            return "strict signing: message lacks from, seqno or signature"
        if len(m.seqno) != 8:
            return f"seqno of {len(m.seqno)} bytes (8 expected)"
        try:
            source = PeerId.from_bytes(m.from_)
            if m.key is not None:
                pub: PublicKey | None = PublicKey.from_protobuf(m.key)
                if pub is not None and not source.matches(pub):
                    return "the message key does not match its from peer id"
            else:
                pub = source.extract_public_key()
        except InvalidPeerId as exc:
            return f"bad from/key: {exc}"
        if pub is None:
            return "no public key: the from peer id does not inline one and key is absent"
        if not pub.verify(signing_bytes(m), m.signature):
            return "invalid message signature"
        return None

    def _handle_message(self, peer: PeerId, m: Message, now: float) -> bool:
        """Take one message from ``peer``; returns whether it was invalid (a bad signature,
        or rejected by a validator): what may push the peer into the graylist."""
        try:
            msg_id = self.message_id(m)
        except Exception:  # a user-supplied id function refusing the message
            self._drop("message id")
            return False
        self._promises.pop(msg_id, None)
        pending = self._pending.get(msg_id)
        if pending is not None:
            # Being validated: remember who else sent it; the verdict applies to them too.
            self._drop("duplicate")
            if peer not in pending.peers and len(pending.peers) < self.params.d_hi * 2:
                pending.peers.add(peer)
            return False
        seen = self._seen.get(msg_id)
        if seen is not None:
            self._drop("duplicate")
            if seen.valid and peer not in seen.peers:
                if len(seen.peers) < self.params.d_hi * 2:
                    seen.peers.add(peer)
                    self.score.near_first_delivery(peer, m.topic, now - seen.first)
            elif not seen.valid and peer not in seen.peers:
                seen.peers.add(peer)
                self.score.invalid_delivery(peer, m.topic)
            return False
        if m.from_ == self._local_bytes:
            self._drop("self origin")
            return False
        if len(m.data) > MAX_MESSAGE_SIZE:
            self._drop("oversized message")
            self.score.invalid_delivery(peer, m.topic)
            return False
        problem = self._verify(m)
        if problem is not None:
            # Not marked seen: the id of a badly signed message may be a forgery of a
            # real one's, which must still get through (only the sender is penalised).
            self._drop("invalid signature")
            self.score.invalid_delivery(peer, m.topic)
            return True
        if len(m.data) >= self.params.idontwant_min_size:
            self._send_idontwant(m.topic, msg_id, peer)  # before validation, as v1.2 allows
        received = self._received(m, msg_id, peer)
        validator = self._validators.get(m.topic)
        verdict = validator(received) if validator is not None else ValidationResult.ACCEPT
        if verdict is ValidationResult.ACCEPT and m.topic in self._deferred:
            if len(self._pending) >= self.params.max_pending_validations:
                # Not marked seen and not penalised: a later copy may still get through.
                self._drop("validation throttled")
                return False
            self._pending[msg_id] = _Pending(m, received, now)
            self._validations.append(received)
            return False
        return self._conclude(m, received, verdict, now, set())

    def validation_result(self, msg_id: bytes, verdict: ValidationResult, now: float) -> bool:
        """The deferred validator's ``verdict`` on ``msg_id``: deliver and forward it
        (ACCEPT), drop it and penalise every peer that sent it (REJECT, P4), or drop it
        (IGNORE).  Returns ``False`` when the message is no longer waiting (it timed out)."""
        pending = self._pending.pop(msg_id, None)
        if pending is None:
            return False
        self._conclude(pending.msg, pending.received, verdict, now, pending.peers)
        if verdict is ValidationResult.ACCEPT:
            for p in pending.peers:
                self.score.near_first_delivery(p, pending.msg.topic, now - pending.started)
        return True

    def _conclude(
        self,
        m: Message,
        received: Received,
        verdict: ValidationResult,
        now: float,
        others: set[PeerId],
    ) -> bool:
        """Act on a validation verdict; ``others`` sent copies while it was validated.
        Returns whether the message was rejected."""
        msg_id, peer = received.msg_id, received.received_from
        if verdict is ValidationResult.REJECT:
            self._drop("rejected")
            self._mark_seen(msg_id, m.topic, now, valid=False, peer=peer)
            self._seen[msg_id].peers |= others
            for p in {peer} | others:
                self.score.invalid_delivery(p, m.topic)
            return True
        if verdict is ValidationResult.IGNORE:
            self._drop("ignored")
            self._mark_seen(msg_id, m.topic, now, valid=False, peer=peer, penalise=False)
            return False
        self._mark_seen(msg_id, m.topic, now, valid=True, peer=peer)
        self._seen[msg_id].peers |= others
        self.score.first_delivery(peer, m.topic)
        field = self._cache(msg_id, m)
        if m.topic in self.joined:
            self._deliveries.append(received)
        targets = self.mesh.get(m.topic)
        if targets is None:
            targets = self.fanout.get(m.topic, set())
        origin = received.source
        if self.direct:
            targets = targets | self._direct_in(m.topic)
        for p in targets:
            if p != peer and p != origin and p not in others:
                st_p = self.peers.get(p)
                if st_p is not None and msg_id in st_p.dont_send:
                    self._drop("idontwant")
                    continue
                self._queue_msg(p, field, msg_id)
        return False

    def _handle_ihave(
        self, peer: PeerId, st: _Peer, entries: Iterable[IHave], now: float
    ) -> list[bytes]:
        if not entries:
            return []
        if self.score.score(peer, now) < self.thresholds.gossip:
            self._drop("ihave below gossip threshold")
            return []
        st.ihave_count += 1
        if st.ihave_count > self.params.max_ihave_messages:
            self._drop("ihave flood")
            return []
        if st.iasked >= self.params.max_ihave_length:
            self._drop("ihave ids over limit")
            return []
        want: list[bytes] = []
        wanted: set[bytes] = set()
        for ih in entries:
            if ih.topic not in self.mesh:
                continue
            for i in ih.ids:
                if i not in self._seen and i not in wanted:
                    wanted.add(i)
                    want.append(i)
        room = self.params.max_ihave_length - st.iasked
        if len(want) > room:
            self.rng.shuffle(want)
            want = want[:room]
        st.iasked += len(want)
        if want and len(self._promises) < MAX_PROMISES:
            # The spec tracks one promise per IWANT: one random id must arrive in time.
            promised = self.rng.choice(want)
            self._promises.setdefault(promised, {})[peer] = now + self.params.iwant_followup_time
        return want

    def _handle_iwant(self, peer: PeerId, entries: Iterable[IWant], now: float) -> None:
        if not entries:
            return
        if self.score.score(peer, now) < self.thresholds.gossip:
            self._drop("iwant below gossip threshold")
            return
        served = 0
        for iw in entries:
            for i in iw.ids:
                c = self._mcache.get(i)
                if c is None:
                    self._drop("iwant for unknown message")
                    continue
                n = c.served.get(peer, 0)
                if n >= self.params.gossip_retransmission:
                    self._drop("iwant retransmission limit")
                    continue
                c.served[peer] = n + 1
                self._queue_msg(peer, c.field, i)
                served += 1
                if served >= self.params.max_ihave_length:
                    self._drop("iwant over limit")
                    return

    def _handle_graft(self, peer: PeerId, entries: Iterable[Graft], now: float) -> list[str]:
        prune: list[str] = []
        score = self.score.score(peer, now)
        st = self.peers[peer]
        for g in entries:
            mesh = self.mesh.get(g.topic)
            if mesh is None:
                # Not joined (or unknown topic): refuse, without penalty (the spec says
                # spam for unknown topics could be penalised; we only refuse).
                prune.append(g.topic)
                continue
            if peer in mesh:
                continue
            if peer in self.direct:
                # v1.1: a direct peer must not graft; answer PRUNE (no penalty).
                self._drop("graft from a direct peer")
                prune.append(g.topic)
                continue
            until = self._backoff.get((g.topic, peer))
            if until is not None and now < until:
                self.score.add_penalty(peer)
                if now < until - self.params.prune_backoff + self.params.graft_flood_threshold:
                    self.score.add_penalty(peer)
                self._drop("graft during backoff")
                prune.append(g.topic)
                continue
            if score < 0:
                prune.append(g.topic)
                continue
            if len(mesh) >= self.params.d_hi and not st.outbound:
                prune.append(g.topic)
                continue
            mesh.add(peer)
            self.score.graft(peer, g.topic, now)
        return prune

    def _handle_prune(self, peer: PeerId, entries: Iterable[Prune], now: float) -> None:
        for pr in entries:
            mesh = self.mesh.get(pr.topic)
            if mesh is not None and peer in mesh:
                mesh.discard(peer)
                self.score.prune(peer, pr.topic)
            backoff = self.params.prune_backoff if pr.backoff is None else pr.backoff
            self._set_backoff(pr.topic, peer, now + min(float(backoff), 3600.0))
            if pr.peers and self.score.score(peer, now) >= self.thresholds.accept_px:
                for info in pr.peers[: self.params.prune_peers]:
                    self._take_px(info)

    def _take_px(self, info: PeerInfo) -> None:
        """One PX entry: a candidate when new to us; its record only once verified."""
        if len(self._px) >= MAX_PX_CANDIDATES:
            return
        try:
            pid = PeerId.from_bytes(info.peer_id)
        except InvalidPeerId:
            return
        if pid in self.peers or pid == self.local or any(pid == c for c, _ in self._px):
            return
        record: PeerRecord | None = None
        if info.signed_record is not None:
            try:
                record = open_peer_record(info.signed_record)
            except P2PError:
                self._drop("invalid peer record")  # forged, tampered or malformed
                return
            if record.peer_id != pid:
                self._drop("invalid peer record")  # a valid record of someone else
                return
        self._px.append((pid, record))

    # --- heartbeat ----------------------------------------------------------------------

    def heartbeat(self, now: float) -> None:
        """One heartbeat: scores, mesh and fanout maintenance, gossip, caches."""
        self._ticks += 1
        p = self.params
        if now - self._last_decay >= self.score.params.decay_interval:
            self._last_decay = now
            self.score.refresh(now)
        for mid, promised in list(self._promises.items()):
            for peer, deadline in list(promised.items()):
                if now >= deadline:
                    del promised[peer]
                    self.score.add_penalty(peer)
            if not promised:
                del self._promises[mid]
        for mid, pending in list(self._pending.items()):
            if now - pending.started >= p.validation_timeout:
                self._drop("validation timeout")
                self.validation_result(mid, ValidationResult.IGNORE, now)
        if self._ticks % p.direct_connect_ticks == 0:
            for peer in _ordered(self.direct):
                if peer not in self.peers and peer not in self._reconnect:
                    self._reconnect.append(peer)
        scores = {peer: self.score.score(peer, now) for peer in self.peers}
        for topic, mesh in self.mesh.items():
            for peer in [x for x in mesh if scores.get(x, 0.0) < 0 or x in self.direct]:
                mesh.discard(peer)
                self.score.prune(peer, topic)
                self._send_prune(topic, peer, now, px=False)
            if len(mesh) < p.d_lo:
                for peer in self._pick(topic, p.d - len(mesh), now, exclude=mesh):
                    self._graft(topic, peer, now)
            if len(mesh) > p.d_hi:
                self._shrink(topic, mesh, scores, now)
            if len(mesh) >= p.d_lo:
                outbound = sum(1 for x in mesh if self.peers[x].outbound)
                if outbound < p.d_out:
                    for peer in self._pick(
                        topic, p.d_out - outbound, now, exclude=mesh, outbound_only=True
                    ):
                        self._graft(topic, peer, now)
            if self._ticks % p.opportunistic_graft_ticks == 0 and len(mesh) > 1:
                median = statistics.median(scores.get(x, 0.0) for x in mesh)
                if median < self.thresholds.opportunistic_graft:
                    for peer in self._pick(
                        topic,
                        p.opportunistic_graft_peers,
                        now,
                        exclude=mesh,
                        min_score=median,
                        strictly_above=True,
                    ):
                        self._graft(topic, peer, now)
        for topic in list(self.fanout):
            if self._lastpub.get(topic, 0.0) + p.fanout_ttl < now:
                del self.fanout[topic]
                self._lastpub.pop(topic, None)
                continue
            fan = self.fanout[topic]
            subs = self.topics.get(topic, set())
            low = self.thresholds.publish
            for peer in [x for x in fan if x not in subs or scores.get(x, 0.0) < low]:
                fan.discard(peer)
            self._fanout_peers(topic, now)
        for topic in list(self.mesh) + list(self.fanout):
            self._emit_gossip(topic, scores)
        self._windows.insert(0, [])
        while len(self._windows) > p.mcache_len:
            for mid, _topic in self._windows.pop():
                cached = self._mcache.pop(mid, None)
                if cached is not None:
                    self._decoded.pop(cached.encoded, None)
        for st in self.peers.values():
            st.ihave_count = 0
            st.iasked = 0
            st.idontwant_taken = 0
            if st.dont_send:
                st.dont_send = {m: t for m, t in st.dont_send.items() if t > self._ticks}
        while self._seen:
            mid, entry = next(iter(self._seen.items()))
            if entry.expiry > now:
                break
            del self._seen[mid]
        for key, until in list(self._backoff.items()):
            if until + p.heartbeat_interval < now:
                del self._backoff[key]

    def _shrink(
        self, topic: str, mesh: set[PeerId], scores: dict[PeerId, float], now: float
    ) -> None:
        p = self.params
        peers = _ordered(mesh)
        self.rng.shuffle(peers)
        peers.sort(key=lambda x: scores.get(x, 0.0), reverse=True)
        best, rest = peers[: p.d_score], peers[p.d_score :]
        self.rng.shuffle(rest)
        keep = best + rest[: p.d - len(best)]
        outbound = sum(1 for x in keep if self.peers[x].outbound)
        if outbound < p.d_out:
            extra = [x for x in rest[p.d - len(best) :] if self.peers[x].outbound]
            need = min(p.d_out - outbound, len(extra))
            if need:
                inbound_kept = [x for x in keep[len(best) :] if not self.peers[x].outbound]
                for out_peer, in_peer in zip(extra[:need], inbound_kept[-need:], strict=False):
                    keep.remove(in_peer)
                    keep.append(out_peer)
        for peer in set(peers) - set(keep):
            mesh.discard(peer)
            self.score.prune(peer, topic)
            self._send_prune(topic, peer, now)

    def _emit_gossip(self, topic: str, scores: dict[PeerId, float]) -> None:
        p = self.params
        ids = [mid for w in self._windows[: p.mcache_gossip] for mid, t in w if t == topic]
        if not ids:
            return
        exclude = self.mesh.get(topic, set()) | self.fanout.get(topic, set())
        candidates = [
            x
            for x in _ordered(self.topics.get(topic, ()))
            if x not in exclude
            and x not in self.direct
            and scores.get(x, 0.0) >= self.thresholds.gossip
        ]
        n = max(p.d_lazy, int(p.gossip_factor * len(candidates)))
        self.rng.shuffle(candidates)
        for peer in candidates[:n]:
            chosen = list(ids)
            if len(chosen) > p.max_ihave_length:
                self.rng.shuffle(chosen)
                chosen = chosen[: p.max_ihave_length]
            self.peers[peer].ihave.setdefault(topic, []).extend(chosen)
            self._dirty[peer] = None

    # --- helpers ------------------------------------------------------------------------

    def _pick(
        self,
        topic: str,
        count: int,
        now: float,
        *,
        exclude: set[PeerId],
        min_score: float = 0.0,
        strictly_above: bool = False,
        outbound_only: bool = False,
        backoff_ok: bool = False,
    ) -> list[PeerId]:
        if count <= 0:
            return []
        out = []
        for peer in _ordered(self.topics.get(topic, ())):
            if peer in exclude or peer in self.direct:
                continue
            if outbound_only and not self.peers[peer].outbound:
                continue
            if not backoff_ok and self._backoff.get((topic, peer), 0.0) > now:
                continue
            s = self.score.score(peer, now)
            if s < min_score or (strictly_above and s <= min_score):
                continue
            out.append(peer)
        self.rng.shuffle(out)
        return out[:count]

    def _graft(self, topic: str, peer: PeerId, now: float) -> None:
        self.mesh.setdefault(topic, set()).add(peer)
        self.score.graft(peer, topic, now)
        self.peers[peer].graft.append(topic)
        self._dirty[peer] = None

    def _send_prune(
        self, topic: str, peer: PeerId, now: float, *, px: bool = True, backoff: float | None = None
    ) -> None:
        st = self.peers.get(peer)
        if st is None:
            return
        b = self.params.prune_backoff if backoff is None else backoff
        self._set_backoff(topic, peer, now + b)
        self._dirty[peer] = None
        if st.protocol == GOSSIPSUB_V10:
            st.prune.append(Prune(topic))
            return
        infos: tuple[PeerInfo, ...] = ()
        if px and self.params.do_px and self.score.score(peer, now) >= 0:
            cands = [
                x
                for x in _ordered(self.topics.get(topic, ()))
                if x != peer and self.score.score(x, now) >= 0
            ]
            self.rng.shuffle(cands)
            chosen = cands[: self.params.prune_peers]
            infos = tuple(PeerInfo(x.to_bytes(), self._record(x)) for x in chosen)
        st.prune.append(Prune(topic, infos, int(b)))

    def _record(self, peer: PeerId) -> bytes | None:
        """The signed peer record of ``peer`` to offer in PX (none above the wire's limit)."""
        record = self.signed_records(peer) if self.signed_records is not None else None
        return record if record is not None and len(record) <= MAX_PEER_RECORD_SIZE else None

    def _set_backoff(self, topic: str, peer: PeerId, until: float) -> None:
        key = (topic, peer)
        if self._backoff.get(key, 0.0) < until:
            self._backoff[key] = until

    def _mark_seen(
        self,
        msg_id: bytes,
        topic: str,
        now: float,
        *,
        valid: bool,
        peer: PeerId | None = None,
        penalise: bool = True,
    ) -> None:
        while len(self._seen) >= MAX_SEEN:
            self._seen.popitem(last=False)
        entry = _Seen(now + self.params.seen_ttl, now, topic, valid)
        if peer is not None and (valid or penalise):
            entry.peers.add(peer)
        if not valid and not penalise:
            # An ignored message: later copies are duplicates without penalty.
            entry.peers = set(self.peers)
        self._seen[msg_id] = entry

    def _cache(self, msg_id: bytes, m: Message) -> bytes:
        """Keep ``m`` for gossip; returns its ``RPC.publish`` field, encoded here once for
        every peer it is sent to (queued as is, joined into their RPCs)."""
        encoded = encode_message(m)
        field = _publish_field(encoded)
        self._mcache[msg_id] = _Cached(m, field, encoded)
        self._decoded[encoded] = m
        self._windows[0].append((msg_id, m.topic))
        return field

    def _queue_msg(self, peer: PeerId, field: bytes, msg_id: bytes) -> None:
        st = self.peers.get(peer)
        if st is None:
            return
        if len(st.msgs) >= MAX_PENDING_MESSAGES:
            st.dropped += 1
            self._drop("peer queue full")
            return
        st.msgs.append((msg_id, field))
        self._dirty[peer] = None

    def _received(self, m: Message, msg_id: bytes, peer: PeerId) -> Received:
        source: PeerId | None = None
        if m.from_ is not None:
            try:
                source = PeerId.from_bytes(m.from_)
            except InvalidPeerId:
                source = None
        return Received(m.topic, m.data, msg_id, source, m.seqno, peer)

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    # --- outputs ------------------------------------------------------------------------

    def outgoing(self) -> list[tuple[PeerId, bytes]]:
        """Drain the RPCs to send: ``(peer, encoded RPC)``, each within :data:`MAX_RPC_SIZE`."""
        out: list[tuple[PeerId, bytes]] = []
        dirty, self._dirty = self._dirty, {}
        for peer in dirty:
            st = self.peers.get(peer)
            if st is None or not st.pending():  # gone, or its queue emptied meanwhile
                continue
            control = Control(
                ihave=tuple(IHave(t, tuple(ids)) for t, ids in st.ihave.items()),
                iwant=(IWant(tuple(st.iwant)),) if st.iwant else (),
                graft=tuple(Graft(t) for t in st.graft),
                prune=tuple(st.prune),
                idontwant=tuple(
                    IWant(tuple(st.idontwant[i : i + MAX_IDS_PER_ENTRY]))
                    for i in range(0, len(st.idontwant), MAX_IDS_PER_ENTRY)
                ),
            )
            head = encode_rpc(RPC(tuple(st.subs), (), control))
            if st.idontwant:
                # v1.2: IDONTWANT goes out at once, not behind the messages queued with it
                out.append((peer, head))
                head = b""
            st.subs, st.ihave, st.iwant, st.graft, st.prune = [], {}, [], [], []
            st.idontwant = []
            buf = bytearray(head)
            for mid, piece in st.msgs:
                if mid in st.dont_send:
                    self._drop("idontwant")  # it said so after we queued it
                    continue
                if len(buf) + len(piece) > MAX_RPC_SIZE:
                    if buf:
                        out.append((peer, bytes(buf)))
                    buf = bytearray()
                    if len(piece) > MAX_RPC_SIZE:
                        self._drop("message too large to send")
                        continue
                buf += piece
            st.msgs = []
            if buf:
                out.append((peer, bytes(buf)))
        return out

    def deliveries(self) -> list[Received]:
        """Drain the messages for local subscribers."""
        out, self._deliveries = self._deliveries, []
        return out

    def validations(self) -> list[Received]:
        """Drain the messages waiting for a deferred validator (see :meth:`defer_validation`)."""
        out, self._validations = self._validations, []
        return out

    def direct_to_connect(self) -> list[PeerId]:
        """Drain the direct peers not attached at the last reconnect tick."""
        out, self._reconnect = self._reconnect, []
        return out

    def px_candidates(self) -> list[tuple[PeerId, PeerRecord | None]]:
        """Drain the peers offered by peer exchange that we are not connected to, each with
        its signed peer record when the entry carried a valid one (else ``None``: the
        peer id alone, to be reached through addresses known otherwise)."""
        out, self._px = self._px, []
        return out


def _ordered(peers: Iterable[PeerId]) -> list[PeerId]:
    """``peers`` in a fixed order (set order follows the per-process hash seed), so that a
    seeded ``rng`` gives the same choices in every run."""
    return sorted(peers, key=PeerId.to_bytes)


def _publish_field(encoded_message: bytes) -> bytes:
    return pb_bytes(2, encoded_message)
