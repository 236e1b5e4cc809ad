"""A griffe extension for the API reference: the docstrings' Sphinx roles become links.

The docstrings are written with Sphinx roles (``:class:`~switchy.stack.errors.P2PError```,
``:meth:`connect```) and reST literal blocks (a paragraph ending in ``::``).  This
extension, loaded by mkdocstrings (see ``mkdocs.yml``), rewrites each role into an
autorefs link when it names a public object of the package (resolved from the
docstring's own scope outwards, like Sphinx does), and into plain code otherwise
(``asyncio.run``, private names).  Every link then has to resolve when the site is
built with ``--strict``, so a docstring naming something that no longer exists breaks
the docs build.
"""

from __future__ import annotations

import builtins
import logging
import re
from pathlib import Path
from typing import Any

import griffe

#: griffe's logger: mkdocstrings reports its warnings, so ``--strict`` fails on them.
log = logging.getLogger("griffe")

#: ``:class:`name```, ``:class:`~a.b.name``` (shown as ``name``), ``:meth:`title <a.b.name>```
ROLE = re.compile(
    r":(?:class|meth|func|mod|attr|data|exc|obj|const):`(~?)([^`<>]+?)(?:\s*<([^`<>]+)>)?`"
)
#: A paragraph ending in reST's "::" (the literal block marker) ends in ":" in Markdown.
LITERAL = re.compile(r"(?<=\S)::$", re.M)
LONE_LITERAL = re.compile(r"^\s*::\s*$\n?", re.M)
#: Modules that are not part of the reference (pytest suites and fixtures).
HIDDEN = re.compile(r"(^|\.)(test_\w+|conftest|_\w+)$")


def _public(obj: griffe.Object | griffe.Alias) -> bool:
    """Rendered by mkdocstrings: public itself and every parent public too."""
    current: Any = obj
    while current is not None:
        if current.is_module and HIDDEN.search(current.path):
            return False
        if not current.is_module and not current.is_public:
            return False
        current = current.parent
    return True


#: Found, but outside the package (an import of a third-party or standard name).
EXTERNAL = object()


def _lookup(scope: griffe.Object, dotted: str) -> Any:
    """``dotted`` resolved inside ``scope``: the object, EXTERNAL, or None (no such name)."""
    current: Any = scope
    for part in dotted.split("."):
        try:
            if current.is_alias:
                current = current.final_target
            members = current.all_members if current.is_class else current.members
            current = members[part]  # a class's own and inherited members
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return EXTERNAL
        except (KeyError, AttributeError):
            return None
    try:
        return current.final_target if current.is_alias else current
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return EXTERNAL


def _rendered(obj: griffe.Object) -> bool:
    """Whether the reference shows ``obj`` (public, with a docstring, or a module)."""
    return _public(obj) and (obj.is_module or obj.docstring is not None)


def resolve(where: griffe.Object, name: str, package: griffe.Module) -> str | None:
    """The path of the object of the reference that ``name`` means in ``where``'s
    docstring; None when it is outside the package or not shown.  A name of the package
    that names nothing is a warning (a stale docstring)."""
    found: Any = None
    if name == package.name or name.startswith(package.name + "."):
        found = _lookup(package, name[len(package.name) + 1 :]) if name != package.name else package
    else:
        scope: Any = where
        while scope is not None and found is None:  # the object, its class, module, parents
            found = _lookup(scope, name)
            scope = scope.parent
    if found is None and name.split(".")[0] in dir(builtins):
        return None  # OSError, ...
    if found is None:
        if name.startswith(package.name + ".") or "." not in name:
            log.warning("%s: the docstring names %r, which does not exist", where.path, name)
        return None
    if found is EXTERNAL or not isinstance(found, griffe.Object) or not _rendered(found):
        return None
    return found.path


def rewrite(text: str, where: griffe.Object, package: griffe.Module) -> str:
    """The docstring ``text`` with its roles as links (or code) and ``::`` as ``:``."""

    def role(match: re.Match[str]) -> str:
        short, name, target = match.group(1), match.group(2).strip(), match.group(3)
        shown = name.rsplit(".", 1)[-1] if short else name
        if target is not None:  # "title <target>"
            shown, name = name, target.strip()
        path = resolve(where, name.removesuffix("()"), package)
        return f"[`{shown}`][{path}]" if path else f"`{shown}`"

    text = ROLE.sub(role, text)
    text = LONE_LITERAL.sub("", text)
    return LITERAL.sub(":", text)


def comment_docstring(attr: griffe.Object) -> str | None:
    """The ``#:`` comment lines right above an attribute (Sphinx's attribute docs)."""
    path = attr.filepath
    if not isinstance(path, Path) or path not in attr.lines_collection or attr.lineno is None:
        return None
    lines = attr.lines_collection[path]
    found: list[str] = []
    i = attr.lineno - 2  # the line above, 0-based
    while i >= 0 and lines[i].strip().startswith("#:"):
        found.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return " ".join(found) or None


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Called by griffe when ``pkg`` and its submodules are loaded."""
        objects = _all(pkg)
        for obj in objects:  # first every attribute's docstring, so links can find them
            if obj.is_attribute and obj.docstring is None:
                text = comment_docstring(obj)
                if text is not None:
                    obj.docstring = griffe.Docstring(text, parent=obj)
        for obj in objects:
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj.docstring.value, obj, pkg)


def _all(obj: griffe.Object) -> list[griffe.Object]:
    """``obj`` and every object defined in it (aliases left out)."""
    out = [obj]
    for member in obj.members.values():
        if isinstance(member, griffe.Object):  # not an Alias
            out.extend(_all(member))
    return out
