"""``voxcli dictate``: the hotkey, the typing backend, the microphone and the model, checked in that
order (each bad setup is one line before the model loads), then :class:`voxcli.dictate.Dictation`
until Ctrl-C, which stops typing at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from voxcli.config import Config
from voxcli.errors import ConfigError


def run_dictate(cfg: Config, *, input_path: Path | None, speed: float, load_engine: Callable,
                status_stream=None) -> int:
    from voxcli.audio.capture import FileSource, MicSource
    from voxcli.cli.listen import _final_engine
    from voxcli.dictate.focus import own_window_check
    from voxcli.dictate.hotkey import SIDED
    from voxcli.dictate.session import DictateWorker, Dictation
    from voxcli.dictate.typist import choose
    from voxcli.live.items import LiveOptions

    err = Console(stderr=True, highlight=False, soft_wrap=True, file=status_stream)
    hotkey, stop_key = _hotkeys(cfg)
    typist = choose(cfg.dictate.type_with)
    _check_live_correct(cfg, typist)
    keyboards, listener_note = _keyboards()
    focus_is_ours, focus_note = own_window_check()
    if input_path is not None:  # a file as the microphone: it plays from the first press on
        source = FileSource(input_path, speed=speed)
    else:
        device = cfg.listen.device
        source = MicSource(int(device) if isinstance(device, str) and device.isdigit() else device)
    source.check()
    if cfg.listen.save_dir:
        from voxcli.output.recorder import check_directory

        check_directory(cfg.listen.save_dir)
    engine = load_engine(cfg, err)
    if engine.kind != "realtime":
        raise ConfigError("dictate types words as the model says them: it needs a Realtime model "
                          "(Voxtral Mini 4B Realtime)")
    final_engine = _final_engine(engine, cfg, load_engine, err)
    status = StatusLine(err, typist.name, hotkey.text, cfg.dictate.toggle, cfg.dictate.stop_hotkey)
    modifier = not cfg.dictate.toggle and any(k.split("_")[0] in SIDED for k in hotkey.keys)
    if modifier:
        err.print(f"voxcli dictate: {hotkey.text} is a modifier: keys typed while it is held would be shortcuts, so "
                  f"each press's words are typed when you let go (a key like f9, or --toggle, types them live)",
                  markup=False)
    recorder = _recorder(cfg, engine, input_path)
    dictation = Dictation(typist, focus_is_ours=focus_is_ours, status=status.show, two_pass=final_engine is not None,
                          hold_modifier=modifier, recorder=recorder, live_correct=cfg.dictate.live_correct)
    stop = threading.Event()
    worker = DictateWorker(engine, source, dictation.listening, stop, LiveOptions.from_config(cfg),
                           final_engine=final_engine, deferred=input_path is not None)
    listener, note = _listener(keyboards, dictation.bindings(hotkey, stop_key, cfg.dictate.toggle),
                               lambda line: err.print(f"voxcli dictate: {line}", markup=False))
    listener_note = listener_note or note
    from voxcli.dictate.control import ToggleSocket

    toggles = ToggleSocket(dictation.toggle)
    toggles.start()
    for note in (focus_note, listener_note):
        if note:
            err.print(f"voxcli dictate: {note}", markup=False)
    if input_path is None:
        source.start()
    try:
        dictation.run(worker, stop)
    except KeyboardInterrupt:
        err.print("voxcli dictate: stopped; nothing more is typed", markup=False)
        return 130
    finally:
        stop.set()
        listener.stop()
        toggles.stop()
        source.stop()
        typist.close()
        status.close(dictation.figures)
        if recorder is not None:
            recorder.close()
            err.print(f"voxcli dictate: saved {', '.join(str(p) for p in recorder.paths)}", markup=False)
    return 0


def _hotkeys(cfg: Config):
    """The hotkey and the stop key (None for none), parsed: ConfigError, one line, when not."""
    from voxcli.dictate.hotkey import parse_hotkey

    try:
        hotkey = parse_hotkey(cfg.dictate.hotkey)
        stop_key = parse_hotkey(cfg.dictate.stop_hotkey, "--stop-hotkey") if cfg.dictate.stop_hotkey else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if stop_key is not None and stop_key.keys == hotkey.keys:
        raise ConfigError(f"--stop-hotkey {cfg.dictate.stop_hotkey!r} is the hotkey too: choose another key, or ''")
    return hotkey, stop_key


def _check_live_correct(cfg: Config, typist) -> None:
    if not cfg.dictate.live_correct:
        return
    if cfg.transcription.final_delay_ms is None and cfg.transcription.final_model is None:
        raise ConfigError("--live-correct puts two-pass's final words in place of the provisional ones: give "
                          "--final-delay-ms too (e.g. 2400)")
    if not typist.can_erase:
        raise ConfigError(f"--live-correct presses backspace, which {typist.name} cannot: install wtype or ydotool")


def _keyboards(env: dict | None = None, folder: str | None = None):
    """Wayland: (the keyboards to read the hotkey from, None), or (None, the line saying why not)."""
    from voxcli.dictate.typist import desktop

    if desktop(env) != "wayland":
        return None, None
    from voxcli.dictate.evdevkeys import INPUT_DIR, keyboards

    try:
        return keyboards(folder or INPUT_DIR), None
    except (RuntimeError, ImportError) as exc:
        return None, f"{str(exc).splitlines()[0]}; or bind `voxcli dictate --toggle-now` to a shortcut"


def _listener(keyboards, bindings: list, note: Callable[[str], None]):
    """(the started listener, None), or (one that does nothing, the line saying why no hotkey)."""
    from voxcli.dictate.hotkey import KeyListener

    if keyboards is not None:
        from voxcli.dictate.evdevkeys import EvdevListener

        listener = EvdevListener(keyboards, *bindings, note=note)
    else:
        listener = KeyListener(*bindings)
    try:
        listener.start()
    except RuntimeError as exc:  # no display: the socket still toggles
        return KeyListener(), f"{exc}; bind `voxcli dictate --toggle-now` to a shortcut"
    return listener, None


def _recorder(cfg: Config, engine, input_path: Path | None):
    """--save: the session's files, as listen writes them (no keystroke is among them)."""
    if not cfg.listen.save_dir:
        return None
    from voxcli.output.recorder import SessionRecorder

    return SessionRecorder(cfg.listen.save_dir, meta={
        "model": engine.info.model, "kind": engine.kind, "device": engine.info.device, "delay_ms": engine.info.delay_ms,
        "input": str(input_path) if input_path else (cfg.listen.device or "default"), "command": "dictate"})


class StatusLine:
    """One line on stderr: idle, listening with the level, typing, held, and the text so far; on a
    terminal it is redrawn in place, elsewhere each change of state is a line of its own."""

    def __init__(self, console: Console, backend: str, hotkey: str, toggle: bool, stop_key: str = "") -> None:
        self.console = console
        self.prefix = f"[{backend}] {'press' if toggle else 'hold'} {hotkey}" + (f", {stop_key} stops" if stop_key
                                                                               else "")
        self.last_state = None
        self.live = console.is_terminal

    def show(self, state: str, text: str) -> None:
        line = f"{self.prefix}: {state}" + (f"  {text}" if text else "")
        if self.live:
            self.console.print("\r" + line[:self.console.width - 1].ljust(self.console.width - 1), end="",
                               markup=False)
        elif state != self.last_state:
            self.console.print(line, markup=False)
        self.last_state = state

    def close(self, figures) -> None:
        if self.live:
            self.console.print()
        from voxcli.events import summarize

        for name, values in (("hotkey down -> first character typed", figures.first_char_ms),
                             ("release -> last character typed", figures.release_to_last_ms)):
            s = summarize(values)
            if s["n"]:
                self.console.print(f"{name}: p50 {s['p50']:.0f} ms, p95 {s['p95']:.0f} ms (n={s['n']})",
                                   markup=False)
        if figures.backspaces:
            self.console.print(f"--live-correct: {sum(figures.backspaces)} characters taken back in "
                               f"{sum(figures.corrections)} corrections over {len(figures.backspaces)} press(es)",
                               markup=False)
