"""Interop tests need the py-libp2p virtualenv; build it once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.interop.harness import ensure_interop_venv


@pytest.fixture(scope="session")
def interop_python() -> Path:
    """The interop venv's Python (skipped only when SWITCHY_SKIP_INTEROP=1)."""
    if os.environ.get("SWITCHY_SKIP_INTEROP") == "1":
        pytest.skip("SWITCHY_SKIP_INTEROP=1: interop with py-libp2p not requested")
    return ensure_interop_venv()
