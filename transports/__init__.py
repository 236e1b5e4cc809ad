"""Transports of switchy-p2p: each a :class:`~switchy.stack.transport.Transport` a node dials
and listens with.

* :mod:`switchy.transports.tcp` — TCP (``/ip4|ip6|dns…/tcp/N``), secured by Noise and
  multiplexed by yamux through the upgrader;
* :mod:`switchy.transports.quic` — QUIC v1 (``…/udp/N/quic-v1``) with libp2p TLS and native
  streams;
* :mod:`switchy.transports.relay` — circuit relay v2: reach and be reached through a relay
  (``…/p2p/<relay>/p2p-circuit``), and the relay service itself;
* :mod:`switchy.transports.iroh` — iroh endpoints (``…/udp/N/iroh/p2p/<id>``; optional
  extra ``switchy-p2p[iroh]``): QUIC with iroh's own TLS and NAT traversal;
* :mod:`switchy.transports.sim` — the deterministic network simulator (``/memory/N``,
  virtual time, faults on demand).
"""
