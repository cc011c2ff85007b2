"""Typing into the focused window: one backend per kind of desktop, chosen by what is there.

| desktop | backend | how |
|---|---|---|
| X11 | ``keys`` (XTest) | pynput for what the layout has; any other character through a spare keycode (``xtest``) |
| Wayland | ``wtype`` | the virtual-keyboard protocol (wlroots: sway, Hyprland; not GNOME, not KDE) |
| Wayland | ``ydotool`` | uinput (any compositor; ydotool 1.x through ydotoold, which holds /dev/uinput): ASCII only |
| Wayland | ``clipboard`` | ``wl-copy``, then ctrl+v through wtype or ydotool |
| macOS, Windows | ``keys`` (pynput) | untested here |

``choose(forced, env)`` picks one and names it; a backend that cannot type a run of text (ydotool
and non-ASCII) hands that run to the clipboard. Nothing here logs what it types.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable

from voxcli.errors import ConfigError

TIMEOUT_S = 5.0  # a typing command that takes longer is stuck: fail, do not hang dictation


class Typist:
    """Types text into whatever window has focus."""

    name = "?"
    can_erase = False  # whether ``backspace`` works (--live-correct needs it)

    def type(self, text: str) -> None:
        raise NotImplementedError

    def backspace(self, n: int) -> None:
        """Take back the ``n`` characters before the cursor (--live-correct)."""
        raise ConfigError(f"{self.name} cannot press backspace")

    def close(self) -> None:
        """Whatever the backend changed to type, put back (the keyboard mapping)."""


class KeysTypist(Typist):
    """pynput's keyboard controller: the native APIs on macOS and Windows, XTest on X11."""

    name = "keys"

    def __init__(self) -> None:
        try:
            from pynput.keyboard import Controller
        except Exception as exc:  # noqa: BLE001 - pynput fails to import without a display
            raise ConfigError(f"cannot type keys: {str(exc).splitlines()[0]}") from None
        self.keyboard = Controller()

    can_erase = True

    def type(self, text: str) -> None:
        self.keyboard.type(text)

    def backspace(self, n: int) -> None:
        from pynput.keyboard import Key

        for _ in range(n):
            self.keyboard.tap(Key.backspace)


class CommandTypist(Typist):
    """A program that types its argument: ``wtype -- TEXT``, ``ydotool type -- TEXT``."""

    def __init__(self, name: str, command: list[str], *, ascii_only: bool = False,
                 fallback: Typist | None = None, env: dict | None = None,
                 erase: Callable[[int], list[str]] | None = None) -> None:
        self.name, self.command, self.ascii_only, self.fallback = name, command, ascii_only, fallback
        self.env = env  # the command's environment (ydotool: where ydotoold's socket is)
        self.erase = erase  # n -> the command that presses backspace n times
        self.can_erase = erase is not None

    def backspace(self, n: int) -> None:
        if n > 0 and self.erase is not None:
            _run(self.erase(n), env=self.env)

    def type(self, text: str) -> None:
        for run, plain in runs(text) if self.ascii_only else [(text, True)]:
            if plain:
                _run([*self.command, run], env=self.env)
            elif self.fallback is not None:
                self.fallback.type(run)
            else:
                raise ConfigError(f"{self.name} cannot type {run!r} (not ASCII) and there is no clipboard tool")


class ClipboardTypist(Typist):
    """Copy, then the paste keystroke (``paste``: a command that presses ctrl+v)."""

    def __init__(self, copy: list[str], paste: list[str] | None, name: str = "clipboard",
                 env: dict | None = None, erase: Callable[[int], list[str]] | None = None) -> None:
        self.copy, self.paste, self.name, self.env = copy, paste, name, env
        self.erase = erase
        self.can_erase = erase is not None

    def backspace(self, n: int) -> None:
        if n > 0 and self.erase is not None:
            _run(self.erase(n), env=self.env)

    def type(self, text: str) -> None:
        _run(self.copy, stdin=text)
        if self.paste is not None:
            _run(self.paste, env=self.env)


def runs(text: str) -> list[tuple[str, bool]]:
    """``text`` cut into runs of ASCII and of the rest: [(run, is_ascii), ...]."""
    runs: list[tuple[str, bool]] = []
    for ch in text:
        plain = ch.isascii()
        if runs and runs[-1][1] == plain:
            runs[-1] = (runs[-1][0] + ch, plain)
        else:
            runs.append((ch, plain))
    return runs


def _run(command: list[str], stdin: str | None = None, env: dict | None = None) -> None:
    try:
        done = subprocess.run(command, input=stdin, text=True, capture_output=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{command[0]} took more than {TIMEOUT_S:g} s to type; stopped") from None
    if done.returncode != 0:
        raise ConfigError(f"{command[0]} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:] or '?'}")


def desktop(env: dict | None = None) -> str:
    """``x11``, ``wayland``, ``macos``, ``windows`` or ``none`` (no graphical session)."""
    env = os.environ if env is None else env
    if sys.platform == "darwin":
        return "macos"
    if sys.platform.startswith("win"):
        return "windows"
    if env.get("WAYLAND_DISPLAY") or env.get("XDG_SESSION_TYPE") == "wayland":
        return "wayland"
    if env.get("DISPLAY"):
        return "x11"
    return "none"


def choose(forced: str = "auto", env: dict | None = None, which: Callable[[str], str | None] = shutil.which) -> Typist:
    """The backend for this desktop (``forced``: auto, keys or clipboard). ConfigError, one line,
    when none can work."""
    kind = desktop(env)
    if kind == "none":
        raise ConfigError("no graphical session (DISPLAY and WAYLAND_DISPLAY are unset): dictate types into the "
                          "focused window of one")
    if kind == "wayland":
        return _wayland(forced, which, os.environ if env is None else env)
    if forced == "clipboard":
        if kind != "x11" or not which("xclip"):
            raise ConfigError("--type-with clipboard on X11 needs xclip (apt install xclip)")
        return _X11Clipboard()
    if kind == "x11":
        from voxcli.dictate.xtest import XTestTypist

        return XTestTypist()
    return KeysTypist()


class _X11Clipboard(ClipboardTypist):
    """xclip holds the text; pynput presses ctrl+v."""

    can_erase = True

    def __init__(self) -> None:
        super().__init__(["xclip", "-selection", "clipboard"], None, "clipboard (xclip)")
        self.keys = KeysTypist()

    def backspace(self, n: int) -> None:
        self.keys.backspace(n)

    def type(self, text: str) -> None:
        super().type(text)
        from pynput.keyboard import Key

        with self.keys.keyboard.pressed(Key.ctrl):
            self.keys.keyboard.tap("v")


def ydotool_socket(env: dict, access: Callable[[str, int], bool] = os.access) -> str:
    """Where ydotoold listens: ``$YDOTOOL_SOCKET``, else ydotool's own default (/tmp), else a user
    service's ($XDG_RUNTIME_DIR). ConfigError, one line, when none is there or this user may not
    use it: ydotool 1.x types only through ydotoold, the one that holds /dev/uinput."""
    named = env.get("YDOTOOL_SOCKET")
    places = [named] if named else ["/tmp/.ydotool_socket", *([os.path.join(env["XDG_RUNTIME_DIR"], ".ydotool_socket")]
                                                              if env.get("XDG_RUNTIME_DIR") else [])]
    for place in places:
        if os.path.exists(place):
            if not access(place, os.R_OK | os.W_OK):
                raise ConfigError(f"no permission to use ydotoold's socket {place} (uinput): start ydotoold with "
                                  f"--socket-own=$(id -u):$(id -g), or install wtype")
            return place
    raise ConfigError(f"ydotool needs ydotoold running, with write access to /dev/uinput (no socket at "
                      f"{' or '.join(places)}): `sudo ydotoold &` or its service, or install wtype")


def wtype_works(command: str = "wtype") -> bool:
    """Whether the compositor takes wtype's keys: wtype needs the virtual-keyboard protocol, which
    wlroots compositors (sway, Hyprland) have and GNOME's and KDE's do not (wtype issue #45). A
    zero-length pause types nothing and fails there."""
    try:
        return subprocess.run([command, "-s", "0"], capture_output=True, timeout=TIMEOUT_S).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _wayland(forced: str, which, env: dict) -> Typist:
    wtype = bool(which("wtype")) and wtype_works(which("wtype"))
    ydotool_env = None
    if which("ydotool") and not wtype:
        ydotool_env = {**os.environ, "YDOTOOL_SOCKET": ydotool_socket(env)}
    paste = ["wtype", "-M", "ctrl", "v", "-m", "ctrl"] if wtype else \
        ["ydotool", "key", "29:1", "47:1", "47:0", "29:0"] if which("ydotool") else None
    erase = (lambda n: ["wtype", *["-k", "BackSpace"] * n]) if wtype else \
        (lambda n: ["ydotool", "key", *["14:1", "14:0"] * n]) if which("ydotool") else None
    clipboard = ClipboardTypist(["wl-copy", "--"], paste, "clipboard (wl-copy)", env=ydotool_env, erase=erase) \
        if which("wl-copy") else None
    if forced == "clipboard":
        if clipboard is None:
            raise ConfigError("--type-with clipboard on Wayland needs wl-copy (apt install wl-clipboard)")
        return clipboard
    if wtype:
        return CommandTypist("wtype", ["wtype", "--"], erase=erase)
    if which("ydotool"):
        return CommandTypist("ydotool", ["ydotool", "type", "--"], ascii_only=True, fallback=clipboard,
                             env=ydotool_env, erase=erase)
    if clipboard is not None and forced == "auto":
        return clipboard
    raise ConfigError("Wayland: nothing can type here; install ydotool (any compositor, with ydotoold running), "
                      "wtype (sway, Hyprland and other wlroots compositors), or wl-clipboard for the clipboard")
