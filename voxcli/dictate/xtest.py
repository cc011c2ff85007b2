"""X11 typing: the characters the layout has through pynput; any other through a spare keycode
(one the layout leaves empty), set to that character on all four levels and pressed with XTest.

Written here, not left to pynput, because pynput's own borrowing puts later characters on
group-2 levels an app does not read (seen under Xvfb: after "Grüße", "東京" arrived as "東東").

An app reads a key's character from its own copy of the mapping, which it refreshes from the
server after a change: Xlib apps when they handle the next key, xkbcommon apps at the change's
notice. Each of these lost characters in a Tk window under Xvfb:

- **Remapped before it was read.** An app that handles a key late reads whatever the keycode
  holds by then: one spare keycode reset after 30 ms typed "Grüße" as "Grüe" under load. So
  the spare keycodes are taken in turn, a character already on one is pressed there again, and
  none is remapped until ``REUSE_S`` after its last press.
- **A change noticed during the app's refresh.** libX11 fetches the keys it has noted as changed,
  then clears the note (``_XkbCheckPendingRefresh``): a notice that arrives in between is cleared
  unseen, and the app keeps the keycode's old character. Pressed right after their changes, 10
  characters in a row typed wrong characters in 6 of 100 words ("à" as "Ž"; bench/RESULTS.md
  16c, ``bench/xtest_typing.py``). So a run's characters are mapped in one go, a key with no
  character (``nudge``) is pressed to make the app refresh, and the characters are pressed only
  once the app has fetched their keysyms after the changes (seen through the RECORD extension,
  ``Fetches``). If it does not within ``FETCH_WAIT_S``, the changes are sent again, once; an app
  never seen fetching is not waited for again.

The spare keycodes are emptied again at ``close()``.
"""

from __future__ import annotations

import threading
import time

from voxcli.dictate.typist import KeysTypist, runs
from voxcli.errors import ConfigError

REUSE_S = 0.5  # a spare keycode keeps its character this long after its press
FETCH_WAIT_S = 1.0  # how long the focused app may take to fetch a change before it is sent again
SETTLE_S = 0.05  # without RECORD or a spare key to nudge with: the pause after a change instead
CHANGE_KEYBOARD_MAPPING = 100  # the core request's opcode
CHANGE_BYTES = 24  # one of ours: one keycode, four keysyms
XKB_GET_MAP = 8  # XKEYBOARD's GetMap: how an app fetches the mapping
XKB_KEY_SYMS = 1 << 1  # GetMap's full and partial masks: the keysyms


class XTestTypist(KeysTypist):
    """X11: pynput for what the layout has, spare keycodes for the rest (see the module)."""

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
        self.fetches = Fetches.start(self.display) if len(spare) > 1 else None
        self.nudge = spare.pop() if self.fetches is not None else None  # kept empty
        self.spare = spare
        self.turn = 0
        self.holds: dict[int, str] = {}  # keycode -> the character it is set to now
        self.pressed_at = dict.fromkeys(spare, 0.0)
        self.silent: set[int | None] = set()  # apps that let a change go unfetched, never seen fetching: not waited for

    def type(self, text: str) -> None:
        for run, plain in runs(text):
            if plain:
                self.keyboard.type(run)
                continue
            while run:
                batch = self._batch(run)
                self._press(batch, self._map(set(batch)))
                run = run[len(batch):]

    def _batch(self, run: str) -> str:
        """The longest start of ``run`` with no more distinct characters than spare keycodes."""
        seen: set[str] = set()
        for i, ch in enumerate(run):
            seen.add(ch)
            if len(seen) > len(self.spare):
                return run[:i]
        return run

    def _map(self, chars: set[str]) -> dict[str, int]:
        """A keycode for each of ``chars``: the one it is on, or a spare one set to it, all such
        changes sent together; returns once the focused app has them."""
        codes = {ch: code for code, ch in self.holds.items() if ch in chars}
        new = sorted(chars - codes.keys())
        if not new:
            return codes
        taken = set(codes.values())
        for ch in new:
            while self.spare[self.turn] in taken:
                self.turn = (self.turn + 1) % len(self.spare)
            codes[ch] = self.spare[self.turn]
            taken.add(codes[ch])
            self.turn = (self.turn + 1) % len(self.spare)
        ready = max(self.pressed_at[codes[ch]] + REUSE_S for ch in new)
        if ready > time.monotonic():
            time.sleep(ready - time.monotonic())
        for ch in new:
            self.holds[codes[ch]] = ch
        if self.fetches is None:
            self._change(codes[ch] for ch in new)
            time.sleep(SETTLE_S)
            return codes
        app = self._focused_client()
        for _ in range(2):
            self.fetches.expect(app, [codes[ch] for ch in new])
            self._change(codes[ch] for ch in new)
            if app in self.silent:
                break
            self._tap(self.nudge)
            if self.fetches.wait(time.monotonic() + FETCH_WAIT_S):
                return codes
        if app not in self.fetches.ever:  # busy, it would have fetched by now: it never will
            self.silent.add(app)
        return codes

    def _change(self, codes) -> None:
        for code in codes:
            ch = self.holds[code]
            keysym = ord(ch) if ord(ch) <= 0xFF else 0x1000000 + ord(ch)  # X's keysyms for Unicode
            self.display.change_keyboard_mapping(code, [(keysym,) * 4])
        self.display.sync()

    def _tap(self, code: int) -> None:
        from Xlib import X
        from Xlib.ext import xtest

        xtest.fake_input(self.display, X.KeyPress, code)
        xtest.fake_input(self.display, X.KeyRelease, code)

    def _press(self, batch: str, codes: dict[str, int]) -> None:
        for ch in batch:
            self._tap(codes[ch])
        self.display.sync()
        now = time.monotonic()
        for ch in batch:
            self.pressed_at[codes[ch]] = now

    def _focused_client(self) -> int | None:
        """The resource-id base of the client that owns the focused window (None: none focused)."""
        focus = self.display.get_input_focus().focus
        window = getattr(focus, "id", focus)
        if not isinstance(window, int) or window <= 1:  # None (0) or PointerRoot (1)
            return None
        return window & ~self.display.display.info.resource_id_mask

    def close(self) -> None:
        """The spare keycodes emptied again, once the last character had ``REUSE_S`` to be read."""
        if self.holds:
            time.sleep(max(0.0, max(self.pressed_at.values()) + REUSE_S - time.monotonic()))
        for code in self.holds:
            self.display.change_keyboard_mapping(code, [(0,) * 4])
        self.holds = {}
        self.display.sync()
        if self.fetches is not None:
            self.fetches.stop()
            self.fetches = None


class Fetches:
    """Through the RECORD extension, in server order: this connection's mapping changes, and the
    XKB GetMap requests other clients fetch the mapping with. ``expect(app, codes)`` before
    changing ``codes``; ``wait(deadline)``: whether ``app`` (None: any client) then fetched the
    keysyms of all of them, after the server had made every change (a fetch of fewer keys, or one
    begun between the changes, may have cleared the notice of the others unseen)."""

    def __init__(self, ours: int, xkb: int, server_lsb: bool, control, recording, context) -> None:
        self.ours, self.xkb, self.server_lsb = ours, xkb, server_lsb
        self.codes: list[int] = []
        self.ever: set[int] = set()  # the clients seen fetching
        self.control, self.recording, self.context = control, recording, context
        self.seen = threading.Condition()
        self.app: int | None = None
        self.changes = 0  # of ours still to be seen
        self.fetched = False
        self.thread = threading.Thread(target=self._run, name="voxcli-xkb-fetches", daemon=True)
        self.thread.start()

    @classmethod
    def start(cls, display) -> Fetches | None:
        """None where the server has no RECORD or XKB (a fixed pause then stands in)."""
        from Xlib import display as xdisplay
        from Xlib.ext import record

        xkb = display.query_extension("XKEYBOARD")
        if not (xkb.present and display.has_extension("RECORD")):
            return None
        name = display.get_display_name()
        control, recording = xdisplay.Display(name), xdisplay.Display(name)
        context = control.record_create_context(0, [record.AllClients], [{
            "core_requests": (CHANGE_KEYBOARD_MAPPING, CHANGE_KEYBOARD_MAPPING), "core_replies": (0, 0),
            "ext_requests": (xkb.major_opcode, xkb.major_opcode, XKB_GET_MAP, XKB_GET_MAP),
            "ext_replies": (0, 0, 0, 0), "delivered_events": (0, 0), "device_events": (0, 0), "errors": (0, 0),
            "client_started": False, "client_died": False}])
        control.sync()
        info = display.display.info
        return cls(info.resource_id_base, xkb.major_opcode, info.image_byte_order == 0, control, recording, context)

    def _run(self) -> None:
        from Xlib.ext import record

        def seen(reply) -> None:
            if reply.category != record.FromClient or not reply.data:
                return
            with self.seen:
                if reply.id_base == self.ours:
                    self.changes -= len(reply.data) // CHANGE_BYTES
                    return
                if reply.data[0] == self.xkb:
                    self.ever.add(reply.id_base)
                if self.changes <= 0 and self.app in (None, reply.id_base) and self._covers(reply):
                    self.fetched = True
                    self.seen.notify_all()

        try:
            self.recording.record_enable_context(self.context, seen)
        except Exception:  # noqa: BLE001 - the server went away: nothing more to wait for
            pass
        with self.seen:
            self.fetched, self.app = True, None
            self.seen.notify_all()

    def _covers(self, reply) -> bool:
        """Whether one of the GetMap requests in ``reply`` fetches the keysyms of every expected
        keycode (its layout: XKBproto.h, xkbGetMapReq)."""
        order = "little" if self.server_lsb != bool(reply.client_swapped) else "big"
        data, at = bytes(reply.data), 0
        while at + 14 <= len(data) and data[at] == self.xkb:
            full = int.from_bytes(data[at + 6:at + 8], order)
            partial = int.from_bytes(data[at + 8:at + 10], order)
            first, n = data[at + 12], data[at + 13]
            if full & XKB_KEY_SYMS or (partial & XKB_KEY_SYMS and first <= min(self.codes)
                                       and max(self.codes) < first + n):
                return True
            at += 4 * (int.from_bytes(data[at + 2:at + 4], order) or 1)
        return False

    def expect(self, app: int | None, codes: list[int]) -> None:
        with self.seen:
            self.app, self.codes, self.changes, self.fetched = app, codes, len(codes), False

    def wait(self, deadline: float) -> bool:
        with self.seen:
            while not self.fetched and time.monotonic() < deadline:
                self.seen.wait(deadline - time.monotonic())
            return self.fetched

    def stop(self) -> None:
        self.control.record_disable_context(self.context)
        self.control.record_free_context(self.context)
        self.control.sync()
        self.thread.join(2)
        self.control.close()
        self.recording.close()
