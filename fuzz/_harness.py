"""What every harness shares: the coverage-instrumented import of switchy and the driver.

A harness module imports its targets inside ``with instrumented():`` (so atheris measures
coverage of switchy's code, not of its dependencies) and ends with ``main(test_one_input)``.
The test function feeds the bytes to a parser or state machine and catches only
:class:`~switchy.stack.errors.P2PError` (through :func:`expected`): any other exception
escapes, and atheris reports it as a crash with the input that caused it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

import atheris

__all__ = ["chunks", "expected", "instrumented", "main"]


def instrumented(*also: str) -> Any:
    """Context manager: modules of ``switchy`` (and of the packages ``also`` names)
    imported inside it are instrumented for coverage."""
    return atheris.instrument_imports(include=["switchy", *also])


def expected() -> contextlib.suppress:
    """Swallow the library's own errors (the stack/errors.py hierarchy), nothing else."""
    from switchy.stack.errors import P2PError

    return contextlib.suppress(P2PError)


def chunks(data: bytes) -> list[bytes]:
    """Split ``data`` into pieces (sizes from its first byte), to exercise buffering."""
    if not data:
        return [b""]
    step = data[0] % 17 + 1
    body = data[1:]
    return [body[i : i + step] for i in range(0, len(body), step)] or [b""]


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Run atheris with the command line's libFuzzer options (logging off: only exceptions
    matter, and aioquic logs every connection error it handles)."""
    import logging

    logging.disable(logging.CRITICAL)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
