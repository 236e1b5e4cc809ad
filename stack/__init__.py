"""switchy-p2p core: identity, addresses, errors, config, negotiation, security, muxing, Node.

Submodules are imported on demand (``from switchy.stack.node import Node``) to keep
``import stack`` cheap.
"""

__version__ = "0.1.0"
