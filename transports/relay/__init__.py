"""Circuit relay v2 (libp2p ``relay/circuit-v2.md``): codecs in :mod:`transports.relay.pb`."""
