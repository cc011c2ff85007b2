"""Draws docs/dictate-xvfb.png: `voxcli dictate`'s words in a real X11 window, as the test sees them.

An Xvfb of its own, bench --dictate's Tk window, the tiny random Realtime model rigged to say a
phrase with accents and CJK (voxcli.testing.speaker), F9 held over examples/hello.wav with
xdotool; then the window, read back from the X server (python-xlib) and written with Pillow.

    .venv/bin/python bench/dictate_screenshot.py [OUT.png]

Needs Xvfb and xdotool (.ci/setup.sh --test), and a CJK font for the glyphs (apt install
fonts-wqy-microhei; without it Tk draws boxes, though the text it holds is the same).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHRASE = " Grüße aus Zürich, 東京 ist schön!"


def main() -> int:
    from PIL import Image

    from voxcli.engine.local import load_engine
    from voxcli.measure.dictation import Pressing, TypedInto, XServer
    from voxcli.testing.speaker import say
    from voxcli.testing.tiny import make_tiny_model

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "dictate-xvfb.png"
    with tempfile.TemporaryDirectory() as folder, XServer() as x:
        engine = load_engine(str(make_tiny_model(Path(folder) / "tiny", "realtime")), device="cpu", compile="off")
        say(engine, PHRASE)
        os.environ["DISPLAY"] = x.name
        target = TypedInto(x.name, Path(folder))
        press = Pressing(engine, ROOT / "examples" / "hello.wav", speed=4.0)
        try:
            target.key("keydown", "F9")
            press.heard_all(4.3)
            target.key("keyup", "F9")
            deadline = time.monotonic() + 30
            while target.text() != PHRASE.strip() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # Tk draws it
            from Xlib import X, display

            conn = display.Display(x.name)
            window = conn.create_resource_object("window", int(target.window))
            geometry = window.get_geometry()
            raw = window.get_image(0, 0, geometry.width, geometry.height, X.ZPixmap, 0xFFFFFFFF)
            image = Image.frombytes("RGB", (geometry.width, geometry.height), raw.data, "raw", "BGRX")
            image.crop((0, 0, min(geometry.width, 520), min(geometry.height, 120))).save(out)
            print(f"{out}: {target.text()!r}")
        finally:
            press.close()
            target.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
