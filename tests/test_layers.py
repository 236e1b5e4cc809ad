"""The layers import only downwards: a static check of every import in the package's source.

Layers, lowest first: ``switchy.stack`` (the core), ``switchy.transports``,
``switchy.protocols``, then the top-level modules of ``switchy`` (presets, CLI, demo,
scenarios, the conformance suites above the core).  A module may import its own layer
and the ones below it, never one above, so no cycle between the layers can form.  Inside
the transports and the protocols, the sub-packages (``switchy.transports.quic``,
``switchy.protocols.router``, ...) must not import each other in a cycle either.

Every import counts: module level, inside functions, under ``TYPE_CHECKING`` and
relative ones, because a lazy import is a dependency all the same.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["switchy.stack", "switchy.transports", "switchy.protocols", "switchy"]
FOLDERS = {"switchy.stack": "stack", "switchy.transports": "transports"}
FOLDERS["switchy.protocols"] = "protocols"


def _modules() -> Iterator[tuple[str, Path]]:
    """(dotted module name, file) of every module of the package."""
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            yield ".".join([package, *parts]), path
    for path in sorted((ROOT / "src" / "switchy").rglob("*.py")):
        parts = list(path.relative_to(ROOT / "src").with_suffix("").parts)
        if parts[1] not in ("stack", "transports", "protocols"):  # links to the folders
            yield ".".join(parts), path


@functools.cache
def _imports(module: str, path: Path) -> tuple[tuple[int, str], ...]:
    """(line, imported module) of every import statement in ``path``, wherever it is."""
    return tuple(_walk_imports(module, path))


def _walk_imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    package = module.rsplit(".", 1)[0]  # for __init__: the package itself (".__init__")
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield node.lineno, name
            for alias in node.names:  # "from switchy import presets" imports switchy.presets
                yield node.lineno, f"{name}.{alias.name}"


def _layer(module: str) -> int | None:
    """Index in LAYERS of the layer ``module`` belongs to; None outside switchy."""
    for i, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return i
    return None


def _subpackage(module: str) -> str | None:
    """``switchy.transports.quic`` for ``switchy.transports.quic.tls``; None in other layers."""
    parts = module.split(".")
    if parts[:2] in (["switchy", "transports"], ["switchy", "protocols"]) and len(parts) > 2:
        return ".".join(parts[:3])
    return None


def _upward_imports() -> list[str]:
    bad = []
    for module, path in _modules():
        own = _layer(module)
        assert own is not None
        for line, name in _imports(module, path):
            target = _layer(name)
            if target is not None and target > own:
                where = f"{path.relative_to(ROOT)}:{line}"
                bad.append(f"{where}: {LAYERS[own]} imports {name} (a layer above it)")
    return bad


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph ``edges`` as a path, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return [*path[path.index(m) :], m]
            if m not in state and (found := visit(m)) is not None:
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)) is not None:
            return found
    return None


def _subpackage_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module, path in _modules():
        source = _subpackage(module)
        for _, name in _imports(module, path):
            target = _subpackage(name)
            if source and target and target != source:
                edges.setdefault(source, set()).add(target)
    return edges


def test_the_check_sees_the_package() -> None:
    modules = dict(_modules())
    assert "switchy.stack.node" in modules and "switchy.presets" in modules
    assert "switchy.transports.quic.core" in modules
    assert "switchy.protocols.router.client" in modules
    assert len(modules) > 80


def test_no_layer_imports_a_layer_above_it() -> None:
    bad = _upward_imports()
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_core_imports_nothing_above_it() -> None:
    """The rule that matters most, said on its own: switchy.stack knows no transport,
    protocol or top-level module, not even lazily or for type checking."""
    bad = [b for b in _upward_imports() if ": switchy.stack imports" in b]
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_subpackages() -> None:
    cycle = _cycle(_subpackage_edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n    from switchy.protocols.ping import ping\n", "switchy.protocols.ping"),
        ("if TYPE_CHECKING:\n    import switchy.transports.tcp\n", "switchy.transports.tcp"),
        ("from switchy import presets\n", "switchy.presets"),
        ("from ..protocols import echo\n", "switchy.protocols.echo"),
    ],
)
def test_the_check_catches_every_kind_of_import(tmp_path: Path, source: str, expected: str) -> None:
    """The parser finds lazy, TYPE_CHECKING, from-package and relative imports alike."""
    path = tmp_path / "mod.py"
    path.write_text(source)
    found = {name for _, name in _imports("switchy.stack.node", path)}
    assert expected in found
    layer = _layer(expected)
    assert layer is not None and layer > 0  # all above the core


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
