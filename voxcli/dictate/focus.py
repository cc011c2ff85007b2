"""Is the focused window this terminal? Dictation must never type into voxcli's own terminal.

X11: the terminal's window is ``$WINDOWID`` (xterm, VTE terminals, konsole, kitty and others set
it); the focused window, from the X server (python-xlib, which pynput brings), is it or one of its
children. Elsewhere (Wayland, macOS, Windows) no program can ask: :func:`own_window_check` says
so, and dictate tells the user to keep another window focused.
"""

from __future__ import annotations

import os
from collections.abc import Callable


def own_window_check(env: dict | None = None) -> tuple[Callable[[], bool], str | None]:
    """(``focus_is_ours()``, a line for the user when it cannot tell)."""
    env = os.environ if env is None else env
    window = env.get("WINDOWID", "")
    if not env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return (lambda: False), "cannot tell whether this terminal has focus here: keep the target window focused"
    if not window.isdigit():
        return (lambda: False), ("this terminal does not say its window (WINDOWID unset): keep the target window "
                                 "focused")
    try:
        from Xlib import X, display
    except ImportError:
        return (lambda: False), "python-xlib is missing: cannot tell whether this terminal has focus"
    conn = display.Display(env["DISPLAY"])
    own = int(window)

    def focus_is_ours() -> bool:
        window = conn.get_input_focus().focus
        for _ in range(64):  # up the tree: the focus may be a child of the terminal's window
            if not hasattr(window, "id") or window.id in (X.NONE, X.PointerRoot):
                return False
            if window.id == own:
                return True
            parent = window.query_tree().parent
            if parent is None or parent.id == window.id or parent.id == conn.screen().root.id:
                return False
            window = parent
        return False

    return focus_is_ours, None
