"""``voxcli dictate``: words typed into a real X11 application under Xvfb (a Tk text window that
reports what it holds), the hotkey pressed and let go with xdotool, the tiny model rigged to say
a phrase with accents and CJK (voxcli.testing.speaker). Then what needs no display: which words
are final, the hotkey's names, the typing backend each desktop gets (stand-ins for wtype, ydotool
and wl-copy that record what they are asked to type), and each bad setup's one line."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from voxcli.audio.decode import load_audio
from voxcli.dictate.hotkey import parse_hotkey
from voxcli.dictate.words import FinalWords
from voxcli.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.wav"
PHRASE = " Grüße aus Zürich, 東京 ist schön!"  # what the rigged model says over hello.wav
pytestmark = [pytest.mark.xdist_group("dictate")]

TARGET = r"""
import sys, tkinter
root = tkinter.Tk()
root.title("voxcli-target")
text = tkinter.Text(root)
text.pack()
text.focus_set()
def dump():
    with open(sys.argv[1] + ".tmp", "w", encoding="utf-8") as f:
        f.write(text.get("1.0", "end-1c"))
    import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    root.after(50, dump)
dump()
root.mainloop()
"""


# ------------------------------------------------------------------------------ under Xvfb


@pytest.fixture(scope="module")
def display():
    if not (shutil.which("Xvfb") and shutil.which("xdotool")):
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs Xvfb and xdotool (.ci/setup.sh --test installs them)")
        pytest.skip("needs Xvfb and xdotool (apt install xvfb xdotool)")
    number = 90 + os.getpid() % 100
    name = f":{number}"
    proc = subprocess.Popen(["Xvfb", name, "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
        time.sleep(0.05)
    yield name
    proc.terminate()
    proc.wait(10)


class Target:
    """The Tk window words are typed into; ``text()`` is what it holds."""

    def __init__(self, display: str, tmp_path: Path) -> None:
        self.env = {**os.environ, "DISPLAY": display}
        self.file = tmp_path / "typed.txt"
        self.proc = subprocess.Popen([sys.executable, "-c", TARGET, str(self.file)], env=self.env)
        found = subprocess.run(["xdotool", "search", "--sync", "--name", "voxcli-target"], env=self.env,
                               capture_output=True, text=True, timeout=20)
        self.window = found.stdout.split()[0]
        self.focus()

    def focus(self) -> None:
        subprocess.run(["xdotool", "windowfocus", "--sync", self.window], env=self.env, check=True, timeout=10)

    def text(self) -> str:
        return self.file.read_text(encoding="utf-8") if self.file.exists() else ""

    def key(self, *args: str) -> None:
        subprocess.run(["xdotool", *args], env=self.env, check=True, timeout=10)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def target(display, tmp_path, monkeypatch):
    monkeypatch.setenv("DISPLAY", display)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    t = Target(display, tmp_path)
    yield t
    t.close()


@pytest.fixture(scope="module")
def speaker(realtime_dir):
    from voxcli.engine.local import load_engine
    from voxcli.testing.speaker import say

    engine = load_engine(str(realtime_dir), device="cpu", compile="off")
    rig = say(engine, PHRASE)
    local = "".join(e.text for e in engine.transcribe(load_audio(HELLO))).strip()
    assert local == PHRASE.strip()
    yield engine, rig
    rig.remove()


class Running:
    """One dictation, as ``voxcli dictate --input hello.wav`` runs it, in threads of this test."""

    def __init__(self, engine, *, toggle: bool = False, hotkey: str = "f9", speed: float = 4.0,
                 focus_is_ours=lambda: False) -> None:
        from voxcli.audio.capture import FileSource
        from voxcli.dictate.hotkey import KeyListener
        from voxcli.dictate.session import DictateWorker, Dictation
        from voxcli.dictate.typist import choose

        self.typist = choose("auto")
        self.dictation = Dictation(self.typist, focus_is_ours=focus_is_ours)
        self.stop = threading.Event()
        source = FileSource(HELLO, speed=speed)
        source.check()
        self.worker = DictateWorker(engine, source, self.dictation.listening, self.stop, deferred=True)
        d = self.dictation
        self.keys = KeyListener(parse_hotkey(hotkey), d.toggle if toggle else d.press,
                                (lambda: None) if toggle else d.release)
        self.keys.start()
        self.thread = threading.Thread(target=d.run, args=(self.worker, self.stop), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.keys.stop()
        self.thread.join(20)


def settled(target: Target, timeout_s: float = 30.0, want: str | None = None) -> str:
    """The window's text once it stops changing (or equals ``want``)."""
    deadline, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while time.monotonic() < deadline:
        now = target.text()
        if want is not None and now == want:
            return now
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 1.5 and want is None:
            return now
        time.sleep(0.05)
    return target.text()


def test_hold_to_talk_types_the_engines_text_live_into_an_x11_app(target, speaker):
    """Hold F9 over the clip: the words arrive in the Tk window while the key is down, the last at
    the release's flush, exactly the engine's text (accents and CJK included); nothing after."""
    engine, rig = speaker
    rig.reset()
    run = Running(engine)
    try:
        target.key("keydown", "F9")
        while "Zürich" not in target.text():  # typed while the key is still down
            assert run.thread.is_alive() and time.sleep(0.05) is None
        target.key("keyup", "F9")
        typed = settled(target, want=PHRASE.strip())
        assert typed == PHRASE.strip()
        time.sleep(1.0)
        assert target.text() == typed  # nothing after the release and its flush
        assert run.dictation.figures.first_char_ms and run.dictation.figures.release_to_last_ms
    finally:
        run.close()


def test_toggle_types_the_text_and_never_into_voxclis_own_terminal(target, speaker):
    """--toggle: one press starts, the next stops; the text is the engine's. Then the window that
    has focus is voxcli's own terminal (WINDOWID names it): the words are held, none typed."""
    from voxcli.dictate.focus import own_window_check

    engine, rig = speaker
    rig.reset()
    run = Running(engine, toggle=True)
    try:
        target.key("key", "F9")
        time.sleep(4.3 / 4 + 0.5)  # the clip, played at 4x, and a margin
        target.key("key", "F9")
        assert settled(target, want=PHRASE.strip()) == PHRASE.strip()
    finally:
        run.close()
    before = target.text()
    focus_is_ours, note = own_window_check({**os.environ, "WINDOWID": str(int(target.window))})
    assert note is None and focus_is_ours()
    rig.reset()
    run = Running(engine, toggle=True, focus_is_ours=focus_is_ours)
    try:
        target.key("key", "F9")
        time.sleep(4.3 / 4 + 0.5)
        target.key("key", "F9")
        deadline = time.monotonic() + 20
        while PHRASE.strip() not in run.dictation.held:
            assert time.monotonic() < deadline, run.dictation.held
            time.sleep(0.05)
        assert target.text() == before
    finally:
        run.close()


# ------------------------------------------------------------------------------ no display


def test_only_whole_words_are_final():
    words = FinalWords()
    out = [words.piece(p) for p in [" Hel", "lo", ",", " wor", "ld", " Grü", "ße", "!", " 東京"]]
    assert out == ["", "", "Hello,", "", "", " world", "", " Grüße!", ""]
    assert words.end() == " 東京"
    fresh = FinalWords()
    assert fresh.piece(" a") == "" and fresh.piece(" b") == "a" and fresh.end() == " b"


def test_hotkey_names():
    assert parse_hotkey("ctrl+alt+space").keys == {"ctrl", "alt", "space"}
    assert parse_hotkey("right_ctrl").keys == {"ctrl_r"} and parse_hotkey("F9").keys == {"f9"}
    assert parse_hotkey("super+d").keys == {"cmd", "d"}
    for bad, words in [("", "keys joined by +"), ("ctrl+", "keys joined by +"), ("ctrl+banana", "unknown key"),
                       ("a+a", "named twice")]:
        with pytest.raises(ValueError, match=words):
            parse_hotkey(bad)


def stand_ins(tmp_path: Path, *names: str) -> Path:
    """Programs that record their arguments and stdin in calls.txt, one call a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nin=""\n[ "{name}" = wl-copy ] && in=$(cat)\n'
                        f'printf "%s\\n" "{name} $* <$in>" >> {tmp_path}/calls.txt\n')
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_wayland_backends_in_their_order_with_the_clipboard_for_what_ydotool_cannot_type(tmp_path):
    from voxcli.dictate.typist import choose

    wayland = {"WAYLAND_DISPLAY": "wayland-0"}

    def which_in(bin_dir):
        return lambda name: shutil.which(name, path=str(bin_dir))

    bin_dir = stand_ins(tmp_path, "wtype", "ydotool", "wl-copy")
    typist = choose("auto", wayland, which_in(bin_dir))
    assert typist.name == "wtype"
    os.environ["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    try:
        typist.type("Grüße 東京")
        assert (tmp_path / "calls.txt").read_text().splitlines() == ["wtype -- Grüße 東京 <>"]
        (tmp_path / "calls.txt").unlink()
        (bin_dir / "wtype").unlink()
        typist = choose("auto", wayland, which_in(bin_dir))
        assert typist.name == "ydotool"
        typist.type("in Zürich now")
        assert (tmp_path / "calls.txt").read_text().splitlines() == [
            "ydotool type -- in Z <>", "wl-copy -- <ü>", "ydotool key 29:1 47:1 47:0 29:0 <>",
            "ydotool type -- rich now <>"]
        clipboard = choose("clipboard", wayland, which_in(bin_dir))
        assert clipboard.name == "clipboard (wl-copy)"
    finally:
        os.environ["PATH"] = os.environ["PATH"].split(":", 1)[1]
    (bin_dir / "ydotool").unlink()
    assert choose("auto", wayland, which_in(bin_dir)).name == "clipboard (wl-copy)"
    (bin_dir / "wl-copy").unlink()
    with pytest.raises(ConfigError, match="nothing can type here"):
        choose("auto", wayland, which_in(bin_dir))
    with pytest.raises(ConfigError, match="no graphical session"):
        choose("auto", {}, which_in(bin_dir))


def test_bad_setups_are_one_line_each(tmp_path):
    """Before any model loads: a hotkey that cannot be parsed, no display, no dictate to toggle."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    voxcli = [sys.executable, "-m", "voxcli", "dictate"]
    for args, code, line in [
        (["--hotkey", "ctrl+banana"], 2, "unknown key 'banana'"),
        ([], 2, "no graphical session"),
        (["--toggle-now"], 1, "no voxcli dictate is running"),
    ]:
        run = subprocess.run([*voxcli, *args, "--model", str(tmp_path / "nowhere")], capture_output=True, text=True,
                             env=env, timeout=60, cwd=ROOT)
        assert run.returncode == code, run.stderr
        assert line in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
