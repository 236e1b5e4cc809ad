"""QUIC transport (``/ip4|ip6/…/udp/N/quic-v1``) on aioquic with the libp2p TLS handshake."""
