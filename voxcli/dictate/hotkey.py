"""The dictation hotkey: its name parsed, and a global listener for it.

``parse_hotkey("ctrl+alt+space")`` -> the set of keys that must all be down. Modifier names with
no side (``ctrl``) match either side; ``right_ctrl`` only the right one. The listener
(:class:`KeyListener`) is pynput's: X11 (XRecord), macOS and Windows see every key press, whatever
window has focus. Wayland gives no program the keys sent to other windows: there the keyboards
are read themselves (:mod:`voxcli.dictate.evdevkeys`, the ``input`` group), or the user binds
``voxcli dictate --toggle-now`` to a compositor shortcut (:mod:`voxcli.dictate.control`). Both
listeners feed a :class:`KeyState`, which fires each :class:`Binding` (the hotkey, the stop key).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

SIDED = ("ctrl", "alt", "shift", "cmd")  # a modifier: ctrl matches ctrl_l and ctrl_r
ALIASES = {"control": "ctrl", "super": "cmd", "win": "cmd", "meta": "cmd", "option": "alt", "altgr": "alt_gr",
           "esc": "esc", "escape": "esc", "return": "enter", "spacebar": "space"}
NAMED = {"space", "enter", "tab", "esc", "backspace", "delete", "insert", "home", "end", "page_up", "page_down",
         "up", "down", "left", "right", "caps_lock", "scroll_lock", "pause", "print_screen", "menu", "alt_gr",
         *(f"f{i}" for i in range(1, 25))}


@dataclass(frozen=True)
class Hotkey:
    keys: frozenset[str]  # "ctrl" (either side), "ctrl_r", "space", "a", ...
    text: str

    def held(self, down: set[str]) -> bool:
        """Whether every key of the hotkey is among ``down`` (names as :func:`key_names` gives)."""
        return all(k in down for k in self.keys)


def parse_hotkey(text: str, option: str = "--hotkey") -> Hotkey:
    """``ctrl+alt+space``, ``right_ctrl``, ``f9``: ValueError names what is wrong and what is allowed
    (``option``: the option it came from, for the message)."""
    parts = [p.strip().lower() for p in text.split("+")]
    if not text.strip() or any(not p for p in parts):
        raise ValueError(f"{option} {text!r}: keys joined by +, e.g. ctrl+alt+space, right_ctrl or f9")
    keys = []
    for part in parts:
        side = None
        for prefix, s in (("right_", "r"), ("left_", "l"), ("r", "r"), ("l", "l")):
            base = ALIASES.get(part[len(prefix):], part[len(prefix):])
            if part.startswith(prefix) and base in SIDED:
                side = s
                part = base
                break
        name = ALIASES.get(part, part)
        if side is not None:
            keys.append(f"{name}_{side}")
        elif name in SIDED or name in NAMED or (len(name) == 1 and name.isprintable()):
            keys.append(name)
        else:
            raise ValueError(f"{option} {text!r}: unknown key {part!r} (modifiers ctrl, alt, shift, super, with "
                             f"left_/right_ for one side; space, enter, f1-f24, a letter, ...)")
    if len(set(keys)) != len(keys):
        raise ValueError(f"{option} {text!r}: a key named twice")
    return Hotkey(frozenset(keys), text)


def sided_names(name: str) -> set[str]:
    """A key's name and the names it also answers to: ``ctrl_r`` -> {"ctrl_r", "ctrl"}."""
    names = {name}
    for base in SIDED:
        if name in (f"{base}_l", f"{base}_r"):
            names.add(base)
    if name == "alt_gr":  # the right Alt: X11 layouts call it alt_gr, evdev KEY_RIGHTALT
        names |= {"alt", "alt_r"}
    return names


def key_names(key) -> set[str]:
    """The names a pynput key answers to: ``Key.ctrl_r`` -> {"ctrl_r", "ctrl"}; ``'a'`` -> {"a"}."""
    name = getattr(key, "name", None)
    if name is None:
        char = getattr(key, "char", None)
        return {char.lower()} if char else set()
    return sided_names(name)


@dataclass(frozen=True)
class Binding:
    """A hotkey and what its press and its release do."""

    hotkey: Hotkey
    on_down: Callable[[], None]
    on_up: Callable[[], None] = lambda: None


class KeyState:
    """The keys down, fed by a listener (pynput's, or evdev's on Wayland): calls a binding's
    ``on_down`` when its keys are all down and ``on_up`` when one is let go, each once per press
    (a key's auto-repeat is one press), from the listener's thread."""

    def __init__(self, bindings) -> None:
        self.bindings = list(bindings)
        self.down: dict[object, set[str]] = {}
        self.active = [False] * len(self.bindings)
        self.lock = threading.Lock()

    def press(self, key, names: set[str]) -> None:
        with self.lock:
            self.down[key] = names
            fire = self._changes(True)
        for call in fire:
            call()

    def release(self, key) -> None:
        with self.lock:
            self.down.pop(key, None)
            fire = self._changes(False)
        for call in fire:
            call()

    def _changes(self, pressed: bool) -> list[Callable[[], None]]:
        now = set().union(*self.down.values()) if self.down else set()
        fire = []
        for i, binding in enumerate(self.bindings):
            held = binding.hotkey.held(now)
            if held != self.active[i] and held == pressed:
                self.active[i] = held
                fire.append(binding.on_down if held else binding.on_up)
        return fire


class KeyListener:
    """pynput's global key listener (X11's XRecord, macOS, Windows) feeding a :class:`KeyState`.
    ``start()`` raises RuntimeError with one line when there is no keyboard to listen to (no
    display, Wayland)."""

    def __init__(self, *bindings: Binding) -> None:
        self.state = KeyState(bindings)
        self.listener = None

    def start(self) -> None:
        try:
            from pynput import keyboard
        except Exception as exc:  # noqa: BLE001 - pynput fails to import without a display
            raise RuntimeError(f"cannot listen for the hotkey: {str(exc).splitlines()[0]}") from None
        self.listener = keyboard.Listener(on_press=lambda key: self.state.press(key, key_names(key)),
                                          on_release=self.state.release)
        self.listener.start()
        self.listener.wait()

    def stop(self) -> None:
        listener = self.listener
        if listener is None:
            return
        listener.stop()
        listener.join(0.2)  # where the stop works, the thread is gone (and owns its connections till then)
        if hasattr(listener, "_context") and listener.is_alive():
            # X11: pynput sends its "disable recording" on the connection its thread is blocked
            # reading, unflushed, so once a key was seen the thread never ends (measured: still
            # alive after 10 s). The same request from a connection of our own ends it at once.
            from Xlib import display

            conn = display.Display()
            try:
                conn.record_disable_context(listener._context)
                conn.flush()
            finally:
                conn.close()
        listener.join(5)
