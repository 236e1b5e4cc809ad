"""The package is one namespace, ``switchy``: no bare ``stack``/``transports``/``protocols``."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import switchy

ROOT = Path(__file__).resolve().parent.parent
BARE = ("stack", "transports", "protocols")


def test_everyday_names_are_at_the_top() -> None:
    from switchy.protocols.router import Router
    from switchy.stack.errors import P2PError
    from switchy.stack.node import Node

    assert switchy.Node is Node
    assert switchy.Router is Router
    assert switchy.P2PError is P2PError
    assert switchy.__version__ == switchy.stack.__version__
    assert set(switchy.__all__) <= set(dir(switchy))


def test_every_module_imports_under_switchy_only() -> None:
    """Importing every module never loads a bare top-level ``stack.*`` (a second copy)."""
    code = (
        "import pkgutil, sys, switchy\n"
        "for m in pkgutil.walk_packages(switchy.__path__, 'switchy.'):\n"
        "    if '.conformance.test_' in m.name: continue\n"
        "    __import__(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {BARE!r})\n"
        "print(len(sys.modules)); assert not bad, bad\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr


def test_no_source_file_uses_a_bare_name() -> None:
    offenders = []
    for folder in (*BARE, "src", "tests", "bench", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                words = line.split()
                is_import = len(words) >= 2 and words[0] in ("from", "import")
                if is_import and words[1].split(".")[0] in BARE:
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_walk_finds_the_layers() -> None:
    names = {m.name for m in pkgutil.iter_modules(switchy.__path__)}
    assert {"stack", "transports", "protocols", "cli"} <= names
