"""Protocols of switchy-p2p, each a :class:`~switchy.stack.node.ProtocolService` (or helpers
for one) that a node serves and calls:

* :mod:`switchy.protocols.ping` — libp2p ping (``/ipfs/ping/1.0.0``);
* :mod:`switchy.protocols.identify` — libp2p identify and identify push;
* :mod:`switchy.protocols.echo` — ``/echo/1.0.0``, every byte back;
* :mod:`switchy.protocols.perf` — libp2p perf (``/perf/1.0.0``), throughput;
* :mod:`switchy.protocols.discovery` — find peers by name (registry, mDNS);
* :mod:`switchy.protocols.router` — REST-like requests between peers;
* :mod:`switchy.protocols.autonat` — AutoNAT v1 and v2: is an address reachable?
* :mod:`switchy.protocols.kad` — the Kademlia DHT (``/ipfs/kad/1.0.0``): peers, values,
  providers and names without a central server;
* :mod:`switchy.protocols.dcutr` — DCUtR hole punching: relayed connections become direct;
* :mod:`switchy.protocols.http` — HTTP over switchy (``/http/1.1``): ASGI apps, an httpx
  transport, expose/gateway/forward;
* :mod:`switchy.protocols.pubsub` — gossipsub v1.1 publish/subscribe (``/meshsub/1.1.0``);
* :mod:`switchy.protocols.blobs` — verified, resumable file transfer (``/switchy/blobs/1.0.0``).
"""
