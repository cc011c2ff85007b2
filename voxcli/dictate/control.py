"""``voxcli dictate --toggle-now``: tell the running dictate to start or stop listening.

Wayland gives no program the keyboard, so a global hotkey there is the compositor's: bind this
command to a shortcut (GNOME: Settings, Keyboard, Custom Shortcuts; KDE: Shortcuts, Custom; sway
and Hyprland: a ``bindsym``/``bind`` line). The running dictate listens on a Unix socket in the
user's runtime directory (only the user may open it); the command sends one word and exits.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from voxcli.errors import VoxcliError

TIMEOUT_S = 2.0


def socket_path(env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"voxcli-dictate-{os.getuid()}.sock"


def toggle_now(path: Path | None = None) -> None:
    """Signal the running dictate; VoxcliError (one line) when none runs."""
    path = path or socket_path()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT_S)
            s.connect(str(path))
            s.sendall(b"toggle\n")
    except OSError:
        raise VoxcliError(f"no voxcli dictate is running (nothing listens on {path})") from None


class ToggleSocket:
    """The running side: calls ``on_toggle`` for every ``toggle`` received."""

    def __init__(self, on_toggle: Callable[[], None], path: Path | None = None) -> None:
        self.path = path or socket_path()
        self.on_toggle = on_toggle
        self.server: socket.socket | None = None

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a dictate that died left it
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket: this user only
        try:
            self.server.bind(str(self.path))
        finally:
            os.umask(old)
        self.server.listen(4)
        threading.Thread(target=self._serve, name="voxcli-dictate-toggle", daemon=True).start()

    def _serve(self) -> None:
        while self.server is not None:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(TIMEOUT_S)
                with contextlib.suppress(OSError):
                    if conn.recv(64).strip() == b"toggle":
                        self.on_toggle()

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
