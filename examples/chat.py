"""A multi-peer chat over gossipsub (the ``switchy chat`` command as a script).

    python examples/chat.py --nick alice --mdns                 # find the room on the LAN
    python examples/chat.py --nick bob --peer /ip4/.../p2p/...  # or dial a member
    python examples/chat.py --nick carol --registry ADDR --join alice
    python examples/chat.py --nick dave --relay /ip4/.../p2p/<relay id>   # reachable via a relay

Type lines to send them; ``/peers`` counts the room, ``/quit`` (or end of input) leaves.
"""

from __future__ import annotations

import sys

from switchy.cli import main

if __name__ == "__main__":
    sys.exit(main(["chat", *sys.argv[1:]]))
