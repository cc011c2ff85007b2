"""Wayland: the hotkey read from the keyboards themselves, through evdev (python-evdev).

No Wayland compositor lets a program see the keys sent to another window, so pynput hears
nothing there. The kernel's input devices (``/dev/input/event*``) do carry every key; reading
them needs read access, which the ``input`` group gives (``sudo usermod -aG input $USER``, then
log in again). Read only: the keys still reach the focused window, and nothing is grabbed or
written. A user who would rather not give that access binds ``voxcli dictate --toggle-now`` to a
compositor shortcut instead.

    devices = keyboards()                      # RuntimeError, one line, when none can be read
    listener = EvdevListener(devices, Binding(parse_hotkey("f9"), press, release))
    listener.start(); ...; listener.stop()
"""

from __future__ import annotations

import contextlib
import glob
import os
import select
import threading
from collections.abc import Callable

from voxcli.dictate.hotkey import Binding, KeyState, sided_names

INPUT_DIR = "/dev/input"
# evdev's names (KEY_ dropped, lower case) where they differ from the hotkey's.
RENAMED = {"leftctrl": "ctrl_l", "rightctrl": "ctrl_r", "leftshift": "shift_l", "rightshift": "shift_r",
           "leftalt": "alt_l", "rightalt": "alt_gr", "leftmeta": "cmd_l", "rightmeta": "cmd_r",
           "pageup": "page_up", "pagedown": "page_down", "capslock": "caps_lock", "scrolllock": "scroll_lock",
           "sysrq": "print_screen", "compose": "menu"}
GROUP_LINE = "add yourself to the input group (sudo usermod -aG input $USER, then log in again)"


def evdev_names(code: int) -> set[str]:
    """The hotkey names of an evdev key code: ``KEY_RIGHTCTRL`` -> {"ctrl_r", "ctrl"}."""
    from evdev import ecodes

    found = ecodes.KEY.get(code, [])
    names: set[str] = set()
    for name in found if isinstance(found, list) else [found]:
        base = name.removeprefix("KEY_").lower()
        names |= sided_names(RENAMED.get(base, base))
    return names


def keyboards(folder: str = INPUT_DIR, open_device: Callable | None = None) -> list:
    """The readable devices that have keys a hotkey may use (letters or F keys). RuntimeError with
    one line when there is none: no devices, or none this user may read."""
    from evdev import InputDevice, ecodes

    open_device = open_device or (lambda path: InputDevice(path, readonly=True))
    paths = sorted(glob.glob(os.path.join(folder, "event*")))
    found, denied = [], 0
    for path in paths:
        try:
            device = open_device(path)
        except PermissionError:
            denied += 1
            continue
        except OSError:
            continue
        keys = set(device.capabilities().get(ecodes.EV_KEY, []))
        if keys & {ecodes.KEY_A, ecodes.KEY_F9, ecodes.KEY_SPACE}:
            found.append(device)
        else:
            device.close()
    if found:
        return found
    if denied:
        raise RuntimeError(f"no permission to read the keyboard ({folder}/event*): {GROUP_LINE}")
    raise RuntimeError(f"no keyboard among {folder}/event*")


class EvdevListener:
    """Reads ``devices`` in a thread of its own and feeds a :class:`KeyState`. A device that goes
    away (unplugged) is dropped; ``note`` is told when none is left."""

    def __init__(self, devices: list, *bindings: Binding, note: Callable[[str], None] = lambda line: None) -> None:
        self.devices = list(devices)
        self.state = KeyState(bindings)
        self.note = note
        self.wake_r, self.wake_w = os.pipe()
        self.thread = threading.Thread(target=self._run, name="voxcli-dictate-evdev", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"x")
        self.thread.join(5)
        for device in self.devices:
            with contextlib.suppress(OSError):
                device.close()
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        from evdev import ecodes

        live = {device.fd: device for device in self.devices}
        while live:
            ready, _, _ = select.select([*live, self.wake_r], [], [])
            if self.wake_r in ready:
                return
            for fd in ready:
                try:
                    events = list(live[fd].read())
                except BlockingIOError:
                    continue
                except OSError:  # the device went away
                    del live[fd]
                    continue
                for event in events:
                    if event.type != ecodes.EV_KEY:
                        continue
                    if event.value == 0:
                        self.state.release((fd, event.code))
                    else:  # 1: down, 2: auto-repeat
                        self.state.press((fd, event.code), evdev_names(event.code))
        self.note("the keyboard went away: the hotkey is not heard; `voxcli dictate --toggle-now` still works")
