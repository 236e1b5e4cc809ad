"""``python -m switchy``: the command line (see :mod:`switchy.cli`)."""

from switchy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
