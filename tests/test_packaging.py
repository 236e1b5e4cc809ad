"""Packaging: declared dependencies match the imports; the wheel works in a clean virtualenv
from another folder; a user's ``mypy --strict`` outside the repository sees the types.

The tests that build virtualenvs are marked ``packaging`` (each takes some seconds to a
minute: a venv and an install from the package index); ``bash tests/run.sh`` runs them.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "nacl": "pynacl",
    "prometheus_client": "prometheus-client",
    "prompt_toolkit": "prompt-toolkit",
}
#: third-party imports of the shipped conformance suites only (the `conformance` extra)
SUITE_ONLY = {"pytest", "hypothesis"}
#: third-party imports of optional modules -> (the extra declaring them, the files allowed)
EXTRA_ONLY = {
    "httpx": ("http", {"protocols/http/client.py"}),
    "httptools": ("http", {"protocols/http/fast.py", "protocols/http/core.py"}),
    "prometheus_client": ("metrics", {"src/switchy/monitoring.py"}),
    "iroh": ("iroh", {"transports/iroh/ffi.py"}),
    "prompt_toolkit": ("chat", {"src/switchy/chat.py"}),
}
#: the venv and install steps reach the package index: generous, for a slow machine
INSTALL_TIMEOUT = 600


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in reqs}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party module -> files of the package importing it (at any level)."""
    found: dict[str, set[str]] = {}
    sources = [*(ROOT / d for d in ("stack", "transports", "protocols"))]
    files = [p for d in sources for p in d.rglob("*.py")]
    files += [
        p
        for p in (ROOT / "src" / "switchy").rglob("*.py")
        if p.relative_to(ROOT / "src" / "switchy").parts[0]
        not in ("stack", "transports", "protocols")
    ]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "switchy":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared_and_nothing_else() -> None:
    imports = _third_party_imports()
    declared = _requirement_names(PYPROJECT["project"]["dependencies"])
    needed = {
        DISTRIBUTIONS.get(m, m).lower()
        for m in imports
        if m not in SUITE_ONLY and m not in EXTRA_ONLY
    }
    assert needed - declared == set(), f"imported, not declared: {needed - declared}"
    assert declared - needed == set(), f"declared, never imported: {declared - needed}"


def test_optional_imports_are_in_their_extra_and_only_in_their_module() -> None:
    imports = _third_party_imports()
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, (extra, allowed) in EXTRA_ONLY.items():
        assert DISTRIBUTIONS.get(module, module) in _requirement_names(extras[extra])
        assert imports.get(module, set()) <= allowed, imports[module]


def test_the_conformance_extra_holds_what_the_shipped_suites_import() -> None:
    imports = _third_party_imports()
    suite_imports = {m for m in imports if m in SUITE_ONLY}
    assert suite_imports == SUITE_ONLY
    for module in suite_imports:  # only the suites use them
        assert all("conformance" in f for f in imports[module]), imports[module]
    extra = _requirement_names(PYPROJECT["project"]["optional-dependencies"]["conformance"])
    assert extra == SUITE_ONLY


def test_metadata() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and "version" in project["dynamic"]
    assert {"Typing :: Typed", "Framework :: AsyncIO"} <= set(project["classifiers"])
    aioquic = next(r for r in project["dependencies"] if r.startswith("aioquic"))
    assert "<" in aioquic, "the QUIC core overrides private aioquic methods: keep a bound"
    overrides = [o["module"] for o in PYPROJECT["tool"]["mypy"]["overrides"]]
    assert not any("nacl" in str(m) for m in overrides), "pynacl ships its own types"
    assert (ROOT / "CHANGELOG.md").is_file() and (ROOT / "LICENSE").is_file()


def _venv(where: Path) -> Path:
    """A clean virtualenv (no system site-packages); its python."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=INSTALL_TIMEOUT)
    return where / "bin" / "python"


def _pip(python: Path, *args: str, cwd: Path | None = None) -> None:
    out = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        cwd=cwd,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def _clean_env() -> dict[str, str]:
    """The environment without this venv's traces (PYTHONPATH, VIRTUAL_ENV)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    return env


@pytest.mark.packaging
@pytest.mark.timeout(2 * INSTALL_TIMEOUT)
def test_the_wheel_in_a_clean_venv_runs_the_demo_from_another_folder(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"  # a fresh copy: no build/ left over from earlier builds
    _copy_checkout(checkout)
    wheels = tmp_path / "wheels"
    _pip(Path(sys.executable), "wheel", "--no-deps", "-w", str(wheels), str(checkout))
    (wheel,) = wheels.glob("switchy_p2p-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert {"switchy/py.typed", "switchy/stack/node.py", "switchy/presets.py"} <= names
    assert "switchy/stack/conformance/conftest.py" in names  # the suite ships whole
    assert "License-Expression: MIT" in metadata and "Classifier: Typing :: Typed" in metadata
    modules = {n for n in names if n.endswith(".py")}
    src = checkout / "src"
    in_tree = {  # through the links to the layer folders
        str((Path(folder) / f).relative_to(src))
        for folder, _, files in os.walk(src / "switchy", followlinks=True)
        for f in files
        if f.endswith(".py")
    }
    assert modules == in_tree, modules ^ in_tree  # every module, and no stale one

    python = _venv(tmp_path / "venv")
    _pip(python, "install", str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # a module of the user's own named like a layer must not shadow ours
    (elsewhere / "protocols.py").write_text("raise ImportError('the user module was used')\n")

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd, cwd=elsewhere, env=_clean_env(), capture_output=True, text=True, timeout=300
        )

    demo = run(str(tmp_path / "venv" / "bin" / "switchy"), "demo")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "Graceful shutdown" in demo.stdout
    helped = run(str(python), "-m", "switchy", "--help")
    assert helped.returncode == 0 and "usage: switchy" in helped.stdout, helped.stderr
    where = run(str(python), "-c", "import switchy; print(switchy.__file__)")
    assert str(tmp_path / "venv") in where.stdout, where.stdout + where.stderr

    # the conformance extra is all the shipped suites need: the README's example, as printed
    _pip(python, "install", f"{wheel}[conformance]")
    readme = (ROOT / "README.md").read_text()
    (fixtures,) = re.findall(r"```python\n(# my_fixtures\.py\n.*?)```", readme, re.S)
    (elsewhere / "my_fixtures.py").write_text(fixtures)
    command = _readme_command("hence `PYTHONPATH=.`").replace("python ", f"{python} ", 1)
    suite = run("bash", "-c", command)
    assert suite.returncode == 0, suite.stdout[-3000:] + suite.stderr[-3000:]
    from tests.test_conformance import SUITE_SIZES

    expected = sum(SUITE_SIZES[s] for s in ("test_transport", "test_security", "test_muxer"))
    assert re.search(rf"\b{expected} passed", suite.stdout), suite.stdout[-2000:]


def _copy_checkout(dest: Path) -> None:
    """The repository's files as a fresh clone would have them (links kept as links)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src, dst = ROOT / rel, dest / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)


def _readme_command(title: str) -> str:
    """The one ```sh block under the README heading's paragraph that contains ``title``."""
    readme = (ROOT / "README.md").read_text()
    blocks: list[tuple[str, str]] = re.findall(r"([^\n]*)\n\n```sh\n(.*?)\n```", readme, re.S)
    (command,) = [cmd for intro, cmd in blocks if title in intro]
    return command


@pytest.mark.packaging
@pytest.mark.timeout(2 * INSTALL_TIMEOUT)
def test_the_readme_demo_command_works_on_a_fresh_checkout(tmp_path: Path) -> None:
    """The README's first command, exactly as printed, in a copy of the checkout."""
    command = _readme_command("Run the demo")
    assert command.startswith("python3 -m venv .venv")
    checkout = tmp_path / "checkout"
    _copy_checkout(checkout)
    out = subprocess.run(
        ["bash", "-c", command],
        cwd=checkout,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=2 * INSTALL_TIMEOUT,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Graceful shutdown" in out.stdout


def test_the_readme_test_command_is_what_ci_runs() -> None:
    """The README's second command cannot run inside the suite it starts; CI runs it."""
    assert _readme_command("Run every check") == "bash tests/run.sh"
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("bash tests/run.sh")


@pytest.mark.packaging
@pytest.mark.timeout(900)
def test_a_users_mypy_outside_the_repo_sees_the_types(tmp_path: Path) -> None:
    """The editable install this suite runs in: mypy --strict on a user's script elsewhere
    finds the package and its types (a wrong use is an error, not a silent Any)."""
    pytest.importorskip("mypy", reason="mypy comes with the dev extra")
    script = tmp_path / "user_script.py"
    script.write_text(
        "import asyncio\n"
        "from switchy import MuxedStream, Node, PeerId, default_node, request\n"
        "from switchy.stack.mux import MuxedConnection\n\n\n"
        "async def main() -> None:\n"
        "    node: Node = default_node()\n"
        "    conn: MuxedConnection = await node.connect('/ip4/127.0.0.1/tcp/1')\n"
        "    stream: MuxedStream = await node.open_stream(conn.remote_peer, '/x/1')\n"
        "    me: PeerId = node.peer_id\n"
        "    status: int = (await request(node, me, 'GET', '/')).status\n"
        "    wrong: str = node.peer_id\n"
        "    print(stream, status, wrong)\n\n\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=600,  # mypy reads the whole package: minutes on a loaded machine
        check=False,
    )
    report = out.stdout + out.stderr
    assert "import-not-found" not in report and "import-untyped" not in report, report
    assert "Cannot find implementation" not in report, report
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and 'variable has type "str"' in errors[0], report
    assert "user_script.py:12:" in errors[0], report
