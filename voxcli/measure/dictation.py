"""``voxcli bench --dictate``: dictation's latency as a person meets it. An X server of its own
(Xvfb), a real X11 window to type into (a Tk text box that reports what it holds), the hotkey
pressed and let go with xdotool, a clip replayed as the microphone; each run one press over the
clip, let go when the clip has played.

- ``first_char_ms``: the hotkey seen down -> the first character typed into the window.
- ``release_to_last_ms``: the hotkey let go -> the last character typed (the flush's words).

tests/test_dictate.py drives the same window and server (``XServer``, ``TypedInto``).
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from voxcli.errors import VoxcliError

TARGET = r"""
import os, sys, tkinter
root = tkinter.Tk()
root.title("voxcli-target")
text = tkinter.Text(root)
text.pack()
text.focus_set()
def dump():
    with open(sys.argv[1] + ".tmp", "w", encoding="utf-8") as f:
        f.write(text.get("1.0", "end-1c"))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    root.after(50, dump)
dump()
root.mainloop()
"""


OFF_LAYOUT = "äöüßÄÖÜéèêàâçñøåæœ東京日本語中文字한국어ĳŁłŠšŽžαβγδεζ"  # 44; Xvfb's layout leaves 18 keycodes


def off_layout_words(n: int) -> list[str]:
    """``n`` words of 10 characters a US layout lacks, in turn from ``OFF_LAYOUT``, so typing them
    remaps the spare keycodes all along (bench/xtest_typing.py, tests/test_dictate.py)."""
    return ["".join(OFF_LAYOUT[(10 * i + j) % len(OFF_LAYOUT)] for j in range(10)) for i in range(n)]


class XServer:
    """Xvfb on a free display, for as long as the ``with`` lasts (``.name``: ``:N``)."""

    def __init__(self) -> None:
        missing = [p for p in ("Xvfb", "xdotool") if not shutil.which(p)]
        if missing:
            raise VoxcliError(f"measuring dictation needs {' and '.join(missing)} (apt install xvfb xdotool)")
        self.number = next(n for n in range(90 + os.getpid() % 100, 400) if not Path(f"/tmp/.X{n}-lock").exists())
        self.name = f":{self.number}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> XServer:
        self.proc = subprocess.Popen(["Xvfb", self.name, "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not Path(f"/tmp/.X11-unix/X{self.number}").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise VoxcliError(f"Xvfb {self.name} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


class TypedInto:
    """The Tk window on ``display``, focused; ``text()`` is what it holds, ``key(...)`` runs xdotool."""

    def __init__(self, display: str, folder: Path) -> None:
        self.env = {**os.environ, "DISPLAY": display}
        self.file = folder / "typed.txt"
        self.proc = subprocess.Popen([sys.executable, "-c", TARGET, str(self.file)], env=self.env)
        found = subprocess.run(["xdotool", "search", "--sync", "--name", "voxcli-target"], env=self.env,
                               capture_output=True, text=True, timeout=20)
        self.window = found.stdout.split()[0]
        self.key("windowfocus", "--sync", self.window)

    def text(self) -> str:
        return self.file.read_text(encoding="utf-8") if self.file.exists() else ""

    def key(self, *args: str) -> None:
        subprocess.run(["xdotool", *args], env=self.env, check=True, timeout=10)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Pressing:
    """One dictation over ``clip`` (a file replayed as the microphone from the first press), its
    hotkey listened for, in threads of this process."""

    def __init__(self, engine, clip: Path, *, toggle: bool = False, hotkey: str = "f9", stop_hotkey: str = "esc",
                 speed: float = 1.0, focus_is_ours=lambda: False, recorder=None, final_engine=None,
                 live_correct: bool = False, options=None) -> None:
        from voxcli.audio.capture import FileSource
        from voxcli.dictate.hotkey import KeyListener, parse_hotkey
        from voxcli.dictate.session import DictateWorker, Dictation
        from voxcli.dictate.typist import choose

        self.typist = choose("auto")
        self.dictation = d = Dictation(self.typist, focus_is_ours=focus_is_ours, recorder=recorder,
                                       two_pass=final_engine is not None, live_correct=live_correct)
        self.stop = threading.Event()
        source = FileSource(clip, speed=speed)
        source.check()
        self.worker = DictateWorker(engine, source, d.listening, self.stop, options, final_engine=final_engine,
                                    deferred=True)
        self.keys = KeyListener(*d.bindings(parse_hotkey(hotkey), parse_hotkey(stop_hotkey), toggle))
        self.keys.start()
        self.thread = threading.Thread(target=d.run, args=(self.worker, self.stop), daemon=True)
        self.thread.start()

    def heard_all(self, seconds: float, timeout_s: float = 60.0) -> None:
        """Until the model has heard ``seconds`` of the press's audio (a loaded machine replays late)."""
        deadline = time.monotonic() + timeout_s
        while self.worker.driver.heard < seconds * 16000 - 320 and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self.keys.stop()
        self.thread.join(20)
        self.typist.close()


def measure_dictation(engine, clips: list[Path], runs: int, *, speed: float = 1.0, final_engine=None,
                      live_correct: bool = False) -> dict[str, list[float]]:
    """``runs`` presses over each clip (the hotkey held while it plays): the figures' samples.
    ``final_engine``: two-pass, typing the final stream's words (``live_correct``: the provisional
    ones first, then backspaces where the final ones differ; their counts per press too)."""
    from voxcli.audio.decode import load_audio

    samples: dict[str, list[float]] = {"first_char_ms": [], "release_to_last_ms": []}
    if live_correct:
        samples |= {"backspaces": [], "corrections": []}
    kw = {"final_engine": final_engine, "live_correct": live_correct}
    with XServer() as x, tempfile.TemporaryDirectory() as folder:
        saved = os.environ.get("DISPLAY")
        os.environ["DISPLAY"] = x.name  # pynput and python-xlib connect to it
        target = TypedInto(x.name, Path(folder))
        try:
            for clip in clips:
                seconds = len(load_audio(clip)) / 16000
                for _ in range(runs):
                    _one_press(engine, clip, target, seconds, speed, samples, kw)
        finally:
            gc.collect()  # pynput's controllers close their X connections when collected: while X is up
            target.close()
            if saved is None:
                os.environ.pop("DISPLAY", None)
            else:
                os.environ["DISPLAY"] = saved
    return samples


def _one_press(engine, clip: Path, target: TypedInto, seconds: float, speed: float, samples: dict,
               kw: dict) -> None:
    press = Pressing(engine, clip, speed=speed, **kw)
    figures = press.dictation.figures
    try:
        target.key("keydown", "F9")
        press.heard_all(seconds)  # held while the clip plays: let go once the model has heard it
        target.key("keyup", "F9")
        deadline = time.monotonic() + 30
        while not figures.presses and time.monotonic() < deadline:
            time.sleep(0.02)
        for name in samples:
            samples[name] += getattr(figures, name)
    finally:
        press.close()
