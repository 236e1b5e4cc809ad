"""Transports of switchy-p2p: tcp (here), and later sim, quic and relay."""
