"""How often X11 typing loses a character off the layout: words of 10 such characters in a row,
from a pool larger than the spare keycodes (so the mapping keeps changing), typed by one
XTestTypist into bench --dictate's Tk window under an Xvfb of its own; the window read back.

    .venv/bin/python bench/xtest_typing.py [--words 100] [--busy 3] [--no-wait]

``--busy N`` runs N busy-looping processes beside it (this VM has 2 cores). ``--no-wait`` maps a
run's characters and presses them at once, without waiting for the app to fetch the change
(bench/RESULTS.md 16c). Needs Xvfb and xdotool (.ci/setup.sh --test).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--words", type=int, default=100)
    ap.add_argument("--busy", type=int, default=0, help="busy-looping processes beside it")
    ap.add_argument("--no-wait", action="store_true", help="press without waiting for the app's fetch")
    args = ap.parse_args()

    from voxcli.dictate import xtest
    from voxcli.measure.dictation import TypedInto, XServer, off_layout_words

    if args.no_wait:
        xtest.Fetches.start = classmethod(lambda cls, display: None)
        xtest.SETTLE_S = 0.0
    words = off_layout_words(args.words)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        with XServer() as x:
            os.environ["DISPLAY"] = x.name
            window = TypedInto(x.name, Path(tempfile.mkdtemp()))
            typist = xtest.XTestTypist()
            start = time.monotonic()
            for word in words:
                typist.type(word + " ")
            typed_s = time.monotonic() - start
            want = "".join(w + " " for w in words)
            deadline = time.monotonic() + 60
            while window.text() != want and time.monotonic() < deadline:
                time.sleep(0.1)
            got = window.text().split(" ")
            typist.close()
            window.close()
            gc.collect()
    finally:
        for p in busy:
            p.kill()
    wrong = [(w, g) for w, g in zip(words, got, strict=False) if w != g]
    chars = sum(a != b for w, g in wrong for a, b in zip(w, g, strict=False))
    print(f"{len(words)} words, {10 * len(words)} characters off the layout, busy {args.busy}, "
          f"{'no wait' if args.no_wait else 'wait for the fetch'}: {len(wrong)} words wrong, "
          f"{chars} characters; typed in {typed_s:.1f} s")
    for w, g in wrong[:5]:
        print(f"  {w} -> {g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
