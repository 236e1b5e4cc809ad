"""The asyncio adapter of the gossipsub router: :class:`PubSub`, a node service.

Per peer it keeps one outbound stream (``/meshsub/1.2.0``, else ``/meshsub/1.1.0``,
else ``/meshsub/1.0.0``)
written by a task of the service and reads whatever inbound streams the peer
opens; every RPC is prefixed by its length as an unsigned varint.  All
connection-level work (writes, heartbeats, peer-exchange dials) runs in tasks
of the service, never in the application's: :meth:`PubSub.publish` only hands
the message to the router and queues the frames, so cancelling it never leaves
a partial frame.  Every queue has a bound; a peer that does not keep up loses
RPCs (counted in :attr:`PubSub.dropped`) instead of growing memory.

Direct peers (``direct_peers=``, gossipsub v1.1 explicit peering) are dialled at
start and again every ``direct_connect_ticks`` heartbeats while not connected.  A
validator may be a coroutine function: its messages wait in the router while it runs
in a task of the service, at most ``max_pending_validations`` at once and for at most
``validation_timeout`` seconds (a timeout or an exception counts as IGNORE).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any, Final

from switchy.protocols.pubsub.core import (
    GOSSIPSUB_V10,
    GOSSIPSUB_V11,
    GOSSIPSUB_V12,
    GossipParams,
    GossipSub,
    Received,
    SignaturePolicy,
    ValidationResult,
    Validator,
)
from switchy.protocols.pubsub.pb import MAX_RPC_SIZE
from switchy.protocols.pubsub.score import PeerScoreParams, PeerScoreThresholds
from switchy.stack.addresses import ip_of, split_peer
from switchy.stack.codec import frame_message, split_frame
from switchy.stack.envelope import PeerRecord
from switchy.stack.errors import InvalidConfiguration, MessageTooLarge, P2PError
from switchy.stack.identity import PeerId
from switchy.stack.metrics import loop_time
from switchy.stack.node import ConnectionEvent, Node, ProtocolService, Target
from switchy.stack.stream import MuxedStream
from switchy.stack.tasks import cancel_and_wait

__all__ = [
    "OUTBOUND_QUEUE_SIZE",
    "SUBSCRIPTION_QUEUE_SIZE",
    "AsyncValidator",
    "PubSub",
    "Subscription",
]

log = logging.getLogger(__name__)

#: Most RPC frames waiting to be written to one peer.
OUTBOUND_QUEUE_SIZE: Final = 256
#: Most messages waiting in one subscription for the application to read.
SUBSCRIPTION_QUEUE_SIZE: Final = 1024
#: Most peer-exchange dials in flight at once.
MAX_PX_DIALS: Final = 8
#: Most addresses taken from one signed peer record offered by peer exchange.
MAX_PX_ADDRS: Final = 8
#: How long one peer-exchange dial may take, in seconds.
PX_DIAL_TIMEOUT: Final = 10.0

#: A validator written as a coroutine function (see :meth:`PubSub.set_validator`).
AsyncValidator = Callable[[Received], Awaitable[ValidationResult]]


class Subscription:
    """Messages of one topic, as an async iterator; :meth:`close` (or ``async with``) ends it.

    Holds at most :data:`SUBSCRIPTION_QUEUE_SIZE` unread messages; newer ones are
    dropped (counted in :attr:`dropped`) while the application does not read.
    """

    def __init__(self, pubsub: PubSub, topic: str) -> None:
        self.topic = topic
        self._pubsub = pubsub
        self._queue: asyncio.Queue[Received | None] = asyncio.Queue(SUBSCRIPTION_QUEUE_SIZE + 1)
        #: Messages dropped because the queue was full.
        self.dropped = 0
        self.closed = False

    def _push(self, msg: Received) -> None:
        if self._queue.qsize() >= SUBSCRIPTION_QUEUE_SIZE:
            self.dropped += 1
            return
        self._queue.put_nowait(msg)

    def __aiter__(self) -> AsyncIterator[Received]:
        return self

    async def __anext__(self) -> Received:
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        msg = await self._queue.get()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def get(self) -> Received:
        """The next message (raises :class:`StopAsyncIteration` once closed)."""
        return await self.__anext__()

    def close(self) -> None:
        """Stop receiving; the last subscription of a topic leaves it."""
        if self.closed:
            return
        self.closed = True
        self._queue.put_nowait(None)
        self._pubsub._unsubscribed(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class PubSub(ProtocolService):
    """Gossipsub v1.1 on a node: ``subscribe(topic)`` and ``await publish(topic, data)``.

    ``params``, ``score_params`` and ``thresholds`` tune the router
    (:class:`~switchy.protocols.pubsub.core.GossipSub`); messages are signed and
    verified strictly unless ``policy`` says otherwise.  ``direct_peers`` are peer
    ids (addresses from the peer store) or multiaddrs ending in ``/p2p/<id>``: peers
    with which we have an explicit peering agreement (they should list us too); we
    send them every message of their topics outside the mesh and keep reconnecting
    to them.
    """

    service_name = "pubsub"
    service_protocols = (GOSSIPSUB_V12, GOSSIPSUB_V11, GOSSIPSUB_V10)

    def __init__(
        self,
        *,
        params: GossipParams | None = None,
        score_params: PeerScoreParams | None = None,
        thresholds: PeerScoreThresholds | None = None,
        policy: SignaturePolicy = SignaturePolicy.STRICT_SIGN,
        connect_px: bool = True,
        direct_peers: Iterable[Target] = (),
    ) -> None:
        self._params = params or GossipParams()
        self._score_params = score_params
        self._thresholds = thresholds
        self._policy = policy
        self._connect_px = connect_px
        self._router: GossipSub | None = None
        self._node: Node | None = None
        self._subs: dict[str, list[Subscription]] = {}
        self._queues: dict[PeerId, asyncio.Queue[bytes]] = {}
        self._writers: dict[PeerId, asyncio.Task[None]] = {}
        #: The negotiated outbound stream of each peer whose writer runs, and the peers
        #: whose writer is inside a write (then frames queue behind it, keeping order).
        self._streams: dict[PeerId, MuxedStream] = {}
        self._writing: set[PeerId] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._inbound: set[MuxedStream] = set()
        self._stopped = False
        self._px_dials = 0
        self._running = False
        self._changed = asyncio.Event()
        self._direct: dict[PeerId, list[Any]] = {}
        for target in direct_peers:
            self._add_direct(target)
        self._async_validators: dict[str, AsyncValidator] = {}
        #: RPC frames dropped because a peer's queue was full.
        self.dropped = 0

    # --- wiring ---------------------------------------------------------------------------

    @property
    def router(self) -> GossipSub:
        """The sans-IO router (after the service was attached to a node)."""
        if self._router is None:
            raise RuntimeError("PubSub is not attached to a node")
        return self._router

    @property
    def node(self) -> Node:
        """The node this service runs on."""
        if self._node is None:
            raise RuntimeError("PubSub is not attached to a node")
        return self._node

    def attach(self, node: Node) -> None:
        """Register the gossipsub protocols and follow the node's connections."""
        self._node = node
        entropy = node.entropy or os.urandom
        self._router = GossipSub(
            node.key,
            params=self._params,
            score_params=self._score_params,
            thresholds=self._thresholds,
            rng=random.Random(int.from_bytes(entropy(16), "big")),
            policy=self._policy,
            seqno_start=int.from_bytes(entropy(6), "big") << 16,
            signed_records=self._signed_record,
        )
        for peer, addrs in self._direct.items():
            if addrs:
                node.peerstore.add_addrs(peer, addrs)
        self._router.set_direct(self._direct, 0.0)
        node.handle(GOSSIPSUB_V12, self._on_stream)
        node.handle(GOSSIPSUB_V11, self._on_stream)
        node.handle(GOSSIPSUB_V10, self._on_stream)
        node.on_connection_event(self._on_event)

    async def start(self) -> None:
        """Start the heartbeat and open streams to peers already connected."""
        self._running = True
        self._spawn(self._heartbeat())
        for peer in self.node.connected_peers:
            self._ensure_writer(peer)
        connected = set(self.node.connected_peers)
        for peer in self._direct:
            if peer not in connected:
                self._spawn(self._dial(peer, px=False))

    async def stop(self) -> None:
        """Stop every task of the service and end the subscriptions."""
        self._running = False
        self._stopped = True
        await cancel_and_wait(*self._tasks)
        # The peers' streams stay open while they live: end them, or the node's close
        # would wait for these handlers.
        for stream in list(self._inbound):
            with contextlib.suppress(P2PError):
                await stream.reset()
        for subs in list(self._subs.values()):
            for s in list(subs):
                s.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- application API ------------------------------------------------------------------

    def subscribe(self, topic: str) -> Subscription:
        """Join ``topic`` (if not yet) and return a new :class:`Subscription` to it."""
        sub = Subscription(self, topic)
        self._subs.setdefault(topic, []).append(sub)
        self.router.join(topic, loop_time())
        self._flush()
        return sub

    def _unsubscribed(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic, [])
        if sub in subs:
            subs.remove(sub)
        if not subs:
            self._subs.pop(sub.topic, None)
            if self._router is not None and self._running:
                self._router.leave(sub.topic, loop_time())
                self._flush()

    async def publish(self, topic: str, data: bytes) -> bytes:
        """Publish ``data`` on ``topic``; returns the message id.

        Raises :class:`~switchy.stack.errors.MessageTooLarge` above the size limit.
        """
        msg_id = self.router.publish(topic, data, loop_time())
        self._flush()
        return msg_id

    @property
    def direct_peers(self) -> set[PeerId]:
        """The peers of our explicit peering agreements."""
        return set(self._direct)

    def add_direct_peer(self, target: Target) -> None:
        """Add a direct peer (as in ``direct_peers``) to a running service: it leaves our
        meshes at once and is dialled now if not connected."""
        peer = self._add_direct(target)
        if self._node is not None:
            self.node.peerstore.add_addrs(peer, self._direct[peer])
        if self._router is not None:
            self._router.set_direct(self._direct, loop_time())
            self._flush()
        if self._running and not self.node.connections(peer):
            self._spawn(self._dial(peer, px=False))

    def _add_direct(self, target: Target) -> PeerId:
        if isinstance(target, PeerId):
            self._direct.setdefault(target, [])
            return target
        addr, peer = split_peer(target)
        if peer is None:
            raise InvalidConfiguration(f"direct peer {target} lacks /p2p/<peer id>")
        addrs = self._direct.setdefault(peer, [])
        if addr.to_bytes():
            addrs.append(addr)
        return peer

    def set_validator(self, topic: str, validator: Validator | AsyncValidator | None) -> None:
        """Validate every message of ``topic`` with ``validator``, which returns a
        :class:`~switchy.protocols.pubsub.core.ValidationResult`; a coroutine function
        is awaited in a task of the service (ACCEPT delivers and forwards, REJECT drops
        and penalises the senders, IGNORE drops; a timeout or an exception is IGNORE).
        ``None`` removes the validator."""
        router = self.router
        if validator is not None and inspect.iscoroutinefunction(validator):
            router.set_validator(topic, None)
            router.defer_validation(topic)
            self._async_validators[topic] = validator
            return
        router.defer_validation(topic, False)
        self._async_validators.pop(topic, None)
        router.set_validator(topic, validator)  # type: ignore[arg-type]

    async def _validate(self, msg: Received) -> None:
        verdict = ValidationResult.ACCEPT
        validator = self._async_validators.get(msg.topic)
        if validator is not None:
            try:
                async with asyncio.timeout(self._params.validation_timeout):
                    verdict = await validator(msg)
            except TimeoutError:
                log.info("pubsub: the validator of %r timed out", msg.topic)
                verdict = ValidationResult.IGNORE
            except Exception:
                log.warning("pubsub: the validator of %r raised", msg.topic, exc_info=True)
                verdict = ValidationResult.IGNORE
            if not isinstance(verdict, ValidationResult):
                log.warning("pubsub: the validator of %r returned %r", msg.topic, verdict)
                verdict = ValidationResult.IGNORE
        if self._router is not None and self._running:
            self._router.validation_result(msg.msg_id, verdict, loop_time())
            self._flush()

    def mesh_peers(self, topic: str) -> set[PeerId]:
        """The peers in our mesh of ``topic``."""
        return set(self.router.mesh.get(topic, ()))

    def topic_peers(self, topic: str) -> set[PeerId]:
        """The peers we know to be subscribed to ``topic``."""
        return set(self.router.topics.get(topic, ()))

    async def wait_for_peers(self, topic: str, count: int = 1, *, mesh: bool = False) -> None:
        """Return once ``count`` peers are known subscribed to ``topic`` (in our mesh of it
        with ``mesh=True``).  Wrap in :func:`asyncio.timeout` to bound the wait."""
        while True:
            peers = self.mesh_peers(topic) if mesh else self.topic_peers(topic)
            if len(peers) >= count:
                return
            self._changed.clear()
            await self._changed.wait()

    # --- peers ----------------------------------------------------------------------------

    def _on_event(self, event: ConnectionEvent) -> None:
        if not self._running:
            return
        if event.kind == "connected":
            self._ensure_writer(event.peer)
        elif not self.node.connections(event.peer):
            self._drop_peer(event.peer)

    def _add_peer(self, peer: PeerId, protocol: str | None) -> None:
        """Attach ``peer`` to the router: its direction and the IPs it connects from (P6;
        relayed connections name the relay's address, not the peer's: left out)."""
        conns = self.node.connections(peer)
        ips = [ip for c in conns if not c.is_limited and (ip := ip_of(c.remote_addr)) is not None]
        self.router.add_peer(
            peer,
            protocol or GOSSIPSUB_V11,
            outbound=bool(conns) and conns[0].is_initiator,
            ips=ips,
        )

    def _signed_record(self, peer: PeerId) -> bytes | None:
        """The signed peer record ``peer`` gave us (identify), to offer it in PX."""
        store = self.node.peerstore
        return store.get(peer).signed_peer_record if peer in store else None

    def _ensure_writer(self, peer: PeerId) -> None:
        if peer in self._writers or peer == self.node.peer_id:
            return
        self._queues[peer] = asyncio.Queue(OUTBOUND_QUEUE_SIZE)
        self._writers[peer] = self._spawn(self._writer(peer))

    def _drop_peer(self, peer: PeerId) -> None:
        self._queues.pop(peer, None)
        self._streams.pop(peer, None)
        task = self._writers.pop(peer, None)
        if task is not None:
            task.cancel()
        if self._router is not None:
            self._router.remove_peer(peer, loop_time())

    async def _writer(self, peer: PeerId) -> None:
        try:
            stream = await self.node.open_stream(peer, GOSSIPSUB_V12, GOSSIPSUB_V11, GOSSIPSUB_V10)
        except P2PError as exc:
            log.debug("no pubsub stream to %s: %s", peer, exc)
            self._writers.pop(peer, None)
            self._queues.pop(peer, None)
            return
        queue = self._queues.get(peer)
        if queue is None:
            await stream.reset()
            return
        self._add_peer(peer, stream.protocol)
        self._streams[peer] = stream
        self._flush()
        try:
            while True:
                frame = await queue.get()
                self._writing.add(peer)
                try:
                    await stream.write(frame)
                finally:
                    self._writing.discard(peer)
        except P2PError as exc:
            log.debug("pubsub stream to %s ended: %s", peer, exc)
        finally:
            if self._streams.get(peer) is stream:
                del self._streams[peer]
            with contextlib.suppress(P2PError):
                await stream.reset()
            if self._writers.get(peer) is asyncio.current_task():
                self._writers.pop(peer, None)
                self._queues.pop(peer, None)
                if self._router is not None:
                    self._router.remove_peer(peer, loop_time())

    async def _on_stream(self, stream: MuxedStream) -> None:
        peer = stream.remote_peer
        if self._stopped:
            await stream.reset()
            return
        self._ensure_writer(peer)
        router = self.router
        buf = bytearray()
        self._inbound.add(stream)
        try:
            while True:
                chunk = await stream.read(65536)
                if not chunk:
                    return
                buf += chunk
                while True:
                    try:
                        frame = split_frame(buf, MAX_RPC_SIZE, "pubsub RPC")
                    except MessageTooLarge as exc:
                        log.info("pubsub: %s sent an oversized RPC: %s", peer, exc)
                        router.score.add_penalty(peer)
                        await stream.reset()
                        return
                    if frame is None:
                        break
                    rpc, used = frame
                    del buf[:used]
                    if peer not in router.peers:
                        # Our outbound stream is not negotiated yet: serve the peer already.
                        self._add_peer(peer, stream.protocol)
                    problem = router.handle_bytes(peer, rpc, loop_time())
                    if problem is not None:
                        log.debug("pubsub: RPC from %s dropped: %s", peer, problem)
                    self._flush()
        except P2PError as exc:
            log.debug("pubsub stream from %s ended: %s", peer, exc)
        finally:
            self._inbound.discard(stream)

    # --- outputs --------------------------------------------------------------------------

    def _flush(self) -> None:
        router = self.router
        self._changed.set()
        for peer, rpc in router.outgoing():
            q = self._queues.get(peer)
            if q is None:
                continue
            frame = frame_message(rpc, MAX_RPC_SIZE + 16, "pubsub RPC")
            stream = self._streams.get(peer)
            if (
                stream is not None
                and q.empty()
                and peer not in self._writing
                and stream.try_write_nowait(frame)
            ):
                continue  # taken by the stream at once: no wake-up of the writer task
            if q.full():
                self.dropped += 1
                continue
            q.put_nowait(frame)
        for msg in router.deliveries():
            for sub in self._subs.get(msg.topic, ()):
                sub._push(msg)
        for msg in router.validations():  # at most max_pending_validations at once
            self._spawn(self._validate(msg))
        for peer in router.direct_to_connect():
            if not self.node.connections(peer):
                self._spawn(self._dial(peer, px=False))
        if self._connect_px:
            for peer, record in router.px_candidates():
                if self._px_dials >= MAX_PX_DIALS:
                    break
                if record is not None and record.addrs:
                    self._learn_record(peer, record)
                if not self.node.peerstore.addrs(peer):
                    continue  # an entry without a record, for a peer we cannot reach
                self._px_dials += 1
                self._spawn(self._dial(peer, px=True))

    def _learn_record(self, peer: PeerId, record: PeerRecord) -> None:
        """Keep the addresses of a verified peer record offered by PX (at most
        :data:`MAX_PX_ADDRS` of them), unless we hold a newer record of the peer."""
        info = self.node.peerstore.get(peer)
        if info.peer_record is not None and info.peer_record.seq > record.seq:
            return  # the peer told us of newer addresses itself
        self.node.peerstore.add_addrs(peer, list(record.addrs[:MAX_PX_ADDRS]))

    async def _dial(self, peer: PeerId, *, px: bool) -> None:
        """Dial a peer offered by peer exchange (``px``) or a direct peer."""
        try:
            async with asyncio.timeout(PX_DIAL_TIMEOUT):
                await self.node.connect(peer)
        except (P2PError, TimeoutError) as exc:
            kind = "peer exchange" if px else "direct peer"
            log.debug("pubsub: %s dial to %s failed: %s", kind, peer, exc)
        finally:
            if px:
                self._px_dials -= 1

    async def _heartbeat(self) -> None:
        interval = self._params.heartbeat_interval
        await asyncio.sleep(min(0.1, interval))
        while True:
            self.router.heartbeat(loop_time())
            self._flush()
            await asyncio.sleep(interval)
