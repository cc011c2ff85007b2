"""Typing into the focused window: one backend per kind of desktop, chosen by what is there.

| desktop | backend | how |
|---|---|---|
| X11 | ``keys`` (XTest) | pynput for what the layout has; any other character through a spare keycode |
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
import time
from collections.abc import Callable

from voxcli.errors import ConfigError

TIMEOUT_S = 5.0  # a typing command that takes longer is stuck: fail, do not hang dictation
REUSE_S = 0.5  # X11: a spare keycode keeps its character this long after its press (XTestTypist)


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


class XTestTypist(KeysTypist):
    """X11: the characters the layout has through pynput; any other through a spare keycode (one
    the layout leaves empty), set to that character on all four levels and pressed. Written here
    because pynput's own borrowing puts later characters on group-2 levels an app does not read
    (seen under Xvfb: after "Grüße", "東京" arrived as "東東").

    An app reads a key's character from the server's mapping when it handles the key, which may
    be late (a busy app): a keycode remapped at once afterwards loses the character (seen under
    load: "Grüße" arrived as "Grüe" with one spare keycode reset after 30 ms). So the spare
    keycodes are taken in turn, a character already on one is pressed there again, and none is
    remapped until ``REUSE_S`` after its last press. They are emptied again at ``close()``."""

    name = "keys (XTest)"

    def __init__(self) -> None:
        super().__init__()
        from Xlib import display

        self.display = display.Display()
        low, high = self.display.display.info.min_keycode, self.display.display.info.max_keycode
        mapping = self.display.get_keyboard_mapping(low, high - low + 1)
        # The lowest keycode is left alone: some servers and toolkits ignore it.
        spare = [low + i for i, keysyms in enumerate(mapping) if not any(keysyms) and i > 0]
        if not spare:
            raise ConfigError("the keyboard layout has no free keycode to type characters it lacks through")
        self.spare = spare
        self.turn = 0
        self.holds: dict[int, str] = {}  # keycode -> the character it is set to now
        self.pressed_at = dict.fromkeys(spare, 0.0)

    def type(self, text: str) -> None:
        for run, plain in _runs(text):
            if plain:
                self.keyboard.type(run)
            else:
                for ch in run:
                    self._spare_key(ch)

    def _spare_key(self, ch: str) -> None:
        from Xlib import X
        from Xlib.ext import xtest

        code = next((c for c, held in self.holds.items() if held == ch), None)
        if code is None:
            code = self.spare[self.turn]
            self.turn = (self.turn + 1) % len(self.spare)
            wait = self.pressed_at[code] + REUSE_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            keysym = ord(ch) if ord(ch) <= 0xFF else 0x1000000 + ord(ch)  # X's keysyms for Unicode
            self.display.change_keyboard_mapping(code, [(keysym,) * 4])
            self.display.sync()
            self.holds[code] = ch
        xtest.fake_input(self.display, X.KeyPress, code)
        xtest.fake_input(self.display, X.KeyRelease, code)
        self.display.sync()
        self.pressed_at[code] = time.monotonic()

    def close(self) -> None:
        """The spare keycodes emptied again, once the last character had ``REUSE_S`` to be read."""
        if self.holds:
            time.sleep(max(0.0, max(self.pressed_at.values()) + REUSE_S - time.monotonic()))
        for code in self.holds:
            self.display.change_keyboard_mapping(code, [(0,) * 4])
        self.holds = {}
        self.display.sync()


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
        for run, plain in _runs(text) if self.ascii_only else [(text, True)]:
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


def _runs(text: str) -> list[tuple[str, bool]]:
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
    return XTestTypist() if kind == "x11" else KeysTypist()


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
