"""Package docstrings describe what the package holds now."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

#: Packages whose docstring must name each of their public modules by its full name.
PACKAGES = [
    "switchy.transports",
    "switchy.transports.quic",
    "switchy.transports.relay",
    "switchy.transports.sim",
    "switchy.protocols",
    "switchy.protocols.discovery",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_package_docstring_names_every_module(name: str) -> None:
    package = importlib.import_module(name)
    doc = package.__doc__ or ""
    modules = [m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]
    assert modules
    missing = [m for m in modules if f"{name}.{m}`" not in doc]
    assert not missing, f"{name}'s docstring does not name {missing}"
    assert "later" not in doc.lower()  # a plan ("and later sim, quic") is not a description
