"""Protocols of switchy-p2p: ping, identify, echo, perf, and more."""
