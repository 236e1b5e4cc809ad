"""switchy-p2p core: identity, addresses, errors, config, negotiation, security, muxing, Node.

The core knows no concrete transport and no protocol.  Submodules are imported on
demand (``from switchy.stack.node import Node``) to keep ``import switchy.stack`` cheap.
"""

#: The version of switchy-p2p (the one source: pyproject.toml reads it from here).
__version__ = "0.1.0"
