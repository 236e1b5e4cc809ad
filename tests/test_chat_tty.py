"""``switchy chat`` on a terminal, driven in tmux: two chats; a message arriving while a
line is half typed prints above the prompt, and the half-typed line survives intact.

Skipped when tmux (Debian package ``tmux``, installed by ``.ci/run``) or prompt_toolkit
(the ``chat`` extra) is absent.  tmux gives every chat a real terminal (a pty) and lets
the test type into it and read the screen back.  tmux tells nobody when its screen
changes, so :func:`Tmux.wait_for` re-reads the screen until a condition holds, within a
generous deadline: it waits for a state, it never assumes one after a fixed delay.
"""

from __future__ import annotations

import importlib.util
import io
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from switchy.chat import line_editor_available

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
needs_prompt_toolkit = pytest.mark.skipif(
    importlib.util.find_spec("prompt_toolkit") is None,
    reason="prompt_toolkit (the chat extra) is not installed",
)

#: Seconds a screen state may take to appear (node start, mesh, a loaded machine).
DEADLINE = 60.0
SWITCHY = [sys.executable, "-m", "switchy.cli"]
#: The same program with prompt_toolkit made unimportable (as if the extra were absent).
SWITCHY_WITHOUT_EDITOR = [
    sys.executable,
    "-c",
    "import sys; sys.modules['prompt_toolkit'] = None; from switchy.cli import main; "
    "sys.exit(main())",
]


class Tmux:
    """A private tmux server (its own socket) with one session per program."""

    def __init__(self, where: Path) -> None:
        self.socket = str(where / "tmux.sock")

    def run(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, (args, out.stderr)
        return out.stdout

    def start(self, name: str, argv: list[str], log: Path) -> None:
        """Run ``argv`` in a new 120x40 terminal; its stderr goes to ``log``."""
        cmd = f"{shlex.join(argv)} 2>{shlex.quote(str(log))}; echo EXITED $?; sleep 600"
        self.run("new-session", "-d", "-s", name, "-x", "120", "-y", "40", cmd)

    def screen(self, name: str) -> list[str]:
        """The visible lines of ``name``'s terminal, trailing blanks removed."""
        lines = [line.rstrip() for line in self.run("capture-pane", "-p", "-t", name).split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def history(self, name: str) -> list[str]:
        """Every line ``name``'s terminal has shown, scrolled-off ones included."""
        out = self.run("capture-pane", "-p", "-S", "-", "-t", name)
        return [line.rstrip() for line in out.split("\n")]

    def wait_for_peers(self, name: str, count: int, what: str) -> None:
        """Ask ``name``'s chat for its room's peers (``/peers``) until it counts ``count``.

        A chat prints its listening address before the peers it was given have joined its
        view of the room (the connection and the subscription exchange follow), so the
        question is asked again after each answer, all within one deadline.  Answers are
        counted in the whole history, so a scrolled screen cannot hide a new one.
        """
        deadline = time.monotonic() + DEADLINE

        def answers(lines: list[str]) -> list[str]:
            return [ln for ln in lines if "peers in " in ln]

        while True:
            asked = len(answers(self.history(name)))

            def answered(lines: list[str], asked: int = asked) -> bool:
                return len(answers(lines)) > asked

            self.type(name, "/peers", enter=True)
            lines = self.wait_for(
                name,
                answered,
                f"an answer to /peers ({what})",
                whole_history=True,
                deadline=deadline,
            )
            if any(ln.startswith(f"* {count} peers in ") for ln in answers(lines)[asked:]):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: {what} not seen; screen:\n" + "\n".join(lines))
            time.sleep(0.2)  # paces the questions; the loop waits for the answer's state

    def type(self, name: str, text: str, *, enter: bool = False) -> None:
        """Type ``text`` (literally) into ``name``, then Enter if asked."""
        self.run("send-keys", "-t", name, "-l", text)
        if enter:
            self.run("send-keys", "-t", name, "Enter")

    def wait_for(
        self,
        name: str,
        cond: Callable[[list[str]], bool],
        what: str,
        *,
        whole_history: bool = False,
        deadline: float | None = None,
    ) -> list[str]:
        """Re-read ``name``'s screen (or its whole history) until ``cond`` holds on it.

        See the module docstring; ``deadline`` (a ``time.monotonic()`` value) defaults to
        :data:`DEADLINE` seconds from now.
        """
        if deadline is None:
            deadline = time.monotonic() + DEADLINE
        read = self.history if whole_history else self.screen
        while True:
            lines = read(name)
            if cond(lines):
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: {what} not seen; screen:\n" + "\n".join(lines))
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux(tmp_path)
    try:
        yield t
    finally:
        t.close()


def chat(nick: str, *extra: str, program: list[str] = SWITCHY) -> list[str]:
    return [*program, "chat", "--nick", nick, "--listen", "/ip4/127.0.0.1/tcp/0", *extra]


def has(text: str) -> Callable[[list[str]], bool]:
    return lambda lines: any(text in line for line in lines)


def address_of(lines: list[str]) -> str:
    """The listening address a chat printed."""
    return next(m.group(0) for ln in lines if (m := re.search(r"/ip4/127\S+/p2p/\S+", ln)))


@needs_tmux
@needs_prompt_toolkit
def test_an_incoming_message_leaves_the_line_being_typed_intact(tmux: Tmux, tmp_path: Path) -> None:
    tmux.start("alice", chat("alice"), tmp_path / "alice.err")
    lines = tmux.wait_for("alice", has("alice>"), "alice's prompt")
    tmux.start("bob", chat("bob", "--peer", address_of(lines)), tmp_path / "bob.err")
    tmux.wait_for("bob", has("bob>"), "bob's prompt")
    # both are in each other's view of the room before anyone speaks
    tmux.wait_for_peers("bob", 1, "alice in bob's room")
    tmux.wait_for_peers("alice", 1, "bob in alice's room")

    tmux.type("alice", "hello wor")  # half a line, no Enter
    tmux.wait_for("alice", lambda ls: ls[-1] == "alice> hello wor", "the half-typed line")
    tmux.type("bob", "ping from bob", enter=True)
    screen = tmux.wait_for(
        "alice",
        lambda ls: (
            any(ln.endswith("> ping from bob") for ln in ls[:-1]) and ls[-1] == "alice> hello wor"
        ),
        "bob's message above the intact prompt",
    )
    message = next(ln for ln in screen if ln.endswith("> ping from bob"))
    assert message.startswith("<bob@"), screen  # a line of its own, not glued to the input
    assert sum("hello wor" in ln for ln in screen) == 1, screen  # the prompt, only

    tmux.type("alice", "ld", enter=True)  # finish the line: it is sent whole
    tmux.wait_for(
        "bob", lambda ls: any(re.fullmatch(r"<alice@\S+> hello world", ln) for ln in ls), "alice"
    )
    tmux.wait_for("alice", lambda ls: ls[-1] == "alice>" and "alice> hello world" in ls, "sent")

    for name in ("alice", "bob"):  # Ctrl-D ends the chat cleanly
        tmux.run("send-keys", "-t", name, "C-d")
        tmux.wait_for(name, has("EXITED 0"), "a clean exit")
    assert "Traceback" not in (tmp_path / "alice.err").read_text()


@needs_tmux
@needs_prompt_toolkit
def test_on_a_terminal_without_prompt_toolkit_the_chat_reads_plain_lines(
    tmux: Tmux, tmp_path: Path
) -> None:
    tmux.start("alice", chat("alice"), tmp_path / "alice.err")
    lines = tmux.wait_for("alice", has("alice>"), "alice's prompt")
    plain = chat("carol", "--peer", address_of(lines), program=SWITCHY_WITHOUT_EDITOR)
    tmux.start("carol", plain, tmp_path / "carol.err")
    tmux.wait_for("carol", has("* listening on"), "carol's start")
    tmux.wait_for_peers("carol", 1, "alice in carol's room")
    tmux.wait_for_peers("alice", 1, "carol in alice's room")
    screen = tmux.screen("carol")
    assert not any(ln.startswith("carol>") for ln in screen), screen  # no line editor
    tmux.type("carol", "plain hello", enter=True)
    tmux.wait_for("alice", has("> plain hello"), "carol's line")
    tmux.run("send-keys", "-t", "carol", "C-d")  # end of input on the terminal
    tmux.wait_for("carol", has("EXITED 0"), "a clean exit")


class ScriptedChat(Tmux):
    """A stand-in terminal: a chat whose ``/peers`` answers are scripted (no tmux)."""

    def __init__(self, where: Path, counts: list[int]) -> None:
        super().__init__(where)
        self.counts = counts
        self.lines: list[str] = []

    def history(self, name: str) -> list[str]:
        return list(self.lines)

    def screen(self, name: str) -> list[str]:
        return self.lines[-40:]

    def type(self, name: str, text: str, *, enter: bool = False) -> None:
        self.lines.append(text)
        count = self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]
        self.lines.append(f"* {count} peers in lobby")


def test_wait_for_peers_asks_again_until_the_peer_has_joined(tmp_path: Path) -> None:
    chat = ScriptedChat(tmp_path, [0, 0, 1])
    chat.wait_for_peers("carol", 1, "alice in carol's room")
    assert chat.lines.count("/peers") == 3  # two answers of 0, then the one wanted


def test_wait_for_peers_fails_naming_what_was_not_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "DEADLINE", 0.5)
    chat = ScriptedChat(tmp_path, [0])
    with pytest.raises(AssertionError, match="alice in carol's room not seen"):
        chat.wait_for_peers("carol", 1, "alice in carol's room")
    assert chat.lines[-1] == "* 0 peers in lobby"
    assert not any(ln.startswith("* 1 ") for ln in chat.lines)


def test_the_line_editor_needs_two_terminals_and_prompt_toolkit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", io.StringIO())  # a pipe or a file
    monkeypatch.setattr(sys, "stdout", Tty())
    assert not line_editor_available()
    monkeypatch.setattr(sys, "stdin", Tty())
    monkeypatch.setitem(sys.modules, "prompt_toolkit", None)  # the extra is absent
    assert not line_editor_available()
    monkeypatch.undo()
    monkeypatch.setattr(sys, "stdin", Tty())
    monkeypatch.setattr(sys, "stdout", Tty())
    assert line_editor_available() is (importlib.util.find_spec("prompt_toolkit") is not None)
