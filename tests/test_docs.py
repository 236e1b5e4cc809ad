"""The docs: every code block of README.md and docs/ runs exactly as printed, and the API
reference builds from the docstrings with warnings as errors.

Blocks, by their fence:

* ```python — a complete program, run in a fresh folder per document (in the order of the
  document); one whose first line is ``# name.py`` is a file the text asks you to save: it
  is written there, and later blocks of the document (e.g. the command that uses it) find it;
* ```sh — run with bash in that folder, unless :data:`NOT_RUN` names it with the reason
  and the test that covers it (a command that binds every interface, needs a second
  machine or sudo, or starts the very suite it is in);
* ```text — output or a listing, not run (the CLI listing is checked against the parser).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "sh", "text"}
BIN = Path(sys.executable).parent
ALL_INTERFACES = "binds every interface (tests use loopback only)"

#: sh blocks not run here, by their first line: why, and what covers them instead.
NOT_RUN = {
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/switchy demo": (
        "builds a virtualenv: tests/test_packaging.py::"
        "test_the_readme_demo_command_works_on_a_fresh_checkout runs it as printed"
    ),
    "bash tests/run.sh": (
        "starts this very suite: CI runs it (.ci/run), "
        "tests/test_packaging.py::test_the_readme_test_command_is_what_ci_runs"
    ),
    "switchy id --key ~/.config/switchy/identity.key": (
        f"writes to the home folder and {ALL_INTERFACES}: tests/test_cli.py covers id and listen"
    ),
    "switchy ping /ip4/192.168.1.20/udp/4001/quic-v1/p2p/12D3KooWQbrMYHx8dKNmFzh7WZYAcBvmFBvNvTdyqMNBSa3qEsiX": (  # noqa: E501
        "needs a second machine: tests/test_cli.py pings and perfs over loopback"
    ),
    "sudo ufw allow 4001/tcp && sudo ufw allow 4001/udp": "changes the machine's firewall",
    "pip install -e '.[docs]' && mkdocs build --strict": (
        "installs into the environment: tests/run.sh installs the docs extra and "
        "test_the_api_reference_builds_with_warnings_as_errors builds the pages"
    ),
    "# on the relay R (reachable by both): prints its full address, /ip4/0.0.0.0/tcp/4002/p2p/<R's id>": (  # noqa: E501
        f"{ALL_INTERFACES} and needs a relay machine: tests/test_relay.py "
        "test_cli_relay_listen_through_it_and_ping_a_circuit_address runs both commands"
    ),
}
#: seconds a block may take (a slow shared machine; the blocks take well under one)
BLOCK_TIMEOUT = 180


@attrs.frozen
class Block:
    """A fenced code block of a document."""

    document: Path
    line: int
    language: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"

    @property
    def file_name(self) -> str | None:
        """``name.py`` for a block that starts with ``# name.py`` (a file to save)."""
        first = self.text.split("\n", 1)[0]
        match = re.fullmatch(r"# ([\w.-]+\.py)", first)
        return match.group(1) if match else None


def blocks(document: Path) -> list[Block]:
    """Every fenced block of ``document``, in order."""
    found: list[Block] = []
    lines = document.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            start, language = i, lines[i][3:].strip()
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            text = "\n".join(lines[start + 1 : i]) + "\n"
            found.append(Block(document, start + 1, language, text))
        i += 1
    return found


def _env() -> dict[str, str]:
    """This virtualenv's commands first (``switchy``, ``python``); no repository on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    return env


def _run(block: Block, folder: Path, n: int) -> str | None:
    """Run one block in ``folder``; what went wrong, or None."""
    if block.language == "python":
        if block.file_name:
            (folder / block.file_name).write_text(block.text)
            return None
        script = folder / f"block_{n}.py"
        script.write_text(block.text)
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", block.text]
    try:
        out = subprocess.run(
            cmd,
            cwd=folder,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"{block.where}: still running after {BLOCK_TIMEOUT} s"
    if out.returncode != 0:
        return f"{block.where}: exit {out.returncode}\n{out.stdout[-2000:]}{out.stderr[-3000:]}"
    if block.language == "python" and not out.stdout.strip():
        return f"{block.where}: printed nothing (an example should show what it did)"
    return None


def _first_line(block: Block) -> str:
    return block.text.split("\n", 1)[0]


@pytest.mark.timeout(1200)  # many subprocesses: generous for a slow shared machine
@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_code_block_runs_as_printed(document: Path, tmp_path: Path) -> None:
    failures = []
    for n, block in enumerate(blocks(document)):
        assert block.language in LANGUAGES, f"{block.where}: fence language {block.language!r}"
        if block.language == "text" or (block.language == "sh" and _first_line(block) in NOT_RUN):
            continue
        failure = _run(block, tmp_path, n)
        if failure:
            failures.append(failure)
    assert not failures, "\n\n".join(failures)


def test_the_documents_have_blocks_and_every_exception_is_still_in_them() -> None:
    all_blocks = [b for d in DOCUMENTS for b in blocks(d)]
    assert sum(b.language == "python" for b in all_blocks) >= 8
    first_lines = {_first_line(b) for b in all_blocks if b.language == "sh"}
    stale = set(NOT_RUN) - first_lines
    assert not stale, f"NOT_RUN names blocks no document has any more: {stale}"


def test_the_readme_command_listing_matches_the_cli() -> None:
    from switchy.cli import build_parser

    (listing,) = [
        b for b in blocks(ROOT / "README.md") if b.language == "text" and "switchy id" in b.text
    ]
    listed = {m.group(1) for m in re.finditer(r"^switchy ([\w-]+)", listing.text, re.M)}
    subparsers = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    assert listed == set(subparsers.choices)
    for line in listing.text.splitlines():  # every --option shown exists on its command
        command = re.match(r"^switchy ([\w-]+)", line)
        if command:
            current = subparsers.choices[command.group(1)]
        options = set(re.findall(r"(--[a-z-]+|-c)\b", line.split("   ")[0]))
        known = {o for a in current._actions for o in a.option_strings}
        assert options <= known, f"{line!r}: {options - known} not options of the command"


@pytest.mark.timeout(1200)  # many subprocesses: generous for a slow shared machine
def test_the_two_machines_server_script_serves_and_keeps_its_identity(tmp_path: Path) -> None:
    """docs/two-machines.md's serve.py, as printed, on loopback instead of every interface:
    it prints full addresses another node can ping, stops on Ctrl-C and keeps its key."""
    (script,) = [b for b in blocks(ROOT / "docs" / "two-machines.md") if b.file_name]
    (tmp_path / "serve.py").write_text(script.text)

    def serve_once() -> list[str]:
        proc = subprocess.Popen(
            [sys.executable, "serve.py", "/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            addrs = [proc.stdout.readline().strip() for _ in range(2)]
            for addr in addrs:
                ping = subprocess.run(
                    [str(BIN / "switchy"), "ping", "-c", "1", addr],
                    env=_env(),
                    capture_output=True,
                    text=True,
                    timeout=BLOCK_TIMEOUT,
                    check=False,
                )
                assert ping.returncode == 0, ping.stdout + ping.stderr
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=BLOCK_TIMEOUT)
        assert proc.returncode == 0, err
        return addrs

    first = serve_once()
    assert "/tcp/" in first[0] and "/quic-v1/" in first[1] and "/p2p/12D3KooW" in first[0]
    again = serve_once()
    assert first[0].rsplit("/p2p/", 1)[1] == again[0].rsplit("/p2p/", 1)[1]  # same peer id


def test_every_module_is_in_the_api_reference() -> None:
    import pkgutil

    import switchy

    hidden = re.compile(r"(^|\.)(test_\w+|conftest|_\w+|__main__)$")
    modules = {"switchy"} | {
        m.name
        for m in pkgutil.walk_packages(switchy.__path__, "switchy.")
        if not hidden.search(m.name)
    }
    pages = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    shown = set(re.findall(r"^::: ([\w.]+)$", pages, re.M))
    assert modules - shown == set(), f"add to docs/api/: {sorted(modules - shown)}"
    assert shown - modules == set(), f"no such module: {sorted(shown - modules)}"


@pytest.mark.timeout(1200)  # many subprocesses: generous for a slow shared machine
def test_the_api_reference_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    """mkdocs + mkdocstrings from the docstrings; a docstring naming an object that does
    not exist, a broken link or an unresolved cross-reference fails the build."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    node_page = (tmp_path / "api" / "node" / "index.html").read_text()
    assert 'href="../streams/#switchy.stack.stream.MuxedStream"' in node_page  # roles linked
    for page in (tmp_path / "api").glob("*/index.html"):  # no role left as raw text
        assert not re.search(r":(class|meth|func|attr|mod|exc|data):`", page.read_text()), page


def test_the_docstring_roles_become_links_and_stale_names_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    griffe = pytest.importorskip("griffe", reason="the docs extra is not installed")
    import importlib.util

    spec = importlib.util.spec_from_file_location("griffe_roles", ROOT / "docs" / "griffe_roles.py")
    assert spec is not None and spec.loader is not None
    roles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roles)
    package = griffe.load("switchy", search_paths=[str(ROOT / "src")], resolve_aliases=False)
    node = package["stack.node.Node"]
    rewrite = roles.rewrite
    assert rewrite(":class:`~switchy.stack.errors.P2PError`", node, package) == (
        "[`P2PError`][switchy.stack.errors.P2PError]"
    )
    assert (
        rewrite(":meth:`connect`", node, package) == "[`connect`][switchy.stack.node.Node.connect]"
    )
    assert rewrite(":func:`asyncio.run` and :class:`OSError`", node, package) == (
        "`asyncio.run` and `OSError`"
    )
    assert rewrite(":meth:`the dial <Node.connect>`", node, package) == (
        "[`the dial`][switchy.stack.node.Node.connect]"
    )
    assert rewrite("Like this::\n\n    code\n", node, package) == "Like this:\n\n    code\n"
    with caplog.at_level("WARNING", logger="griffe"):
        assert rewrite(":class:`switchy.stack.errors.Gone`", node, package) == (
            "`switchy.stack.errors.Gone`"
        )
    assert "names 'switchy.stack.errors.Gone', which does not exist" in caplog.text
