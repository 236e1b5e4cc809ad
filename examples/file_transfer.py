"""Send a file to another peer: verified chunk by chunk, resumable (``/switchy/blobs/1.0.0``).

    python examples/file_transfer.py send FILE            # prints a ticket, serves until Ctrl-C
    python examples/file_transfer.py receive TICKET --out DIR

The same as ``switchy send`` / ``switchy receive``.
"""

from __future__ import annotations

import sys

from switchy.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
