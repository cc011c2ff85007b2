"""Keyterm biasing and alternatives: what the bias does to the transcript, and what both cost a step.

    python bench/keyterms.py [--model DIR] [--phrases two,class] [--runs 5] [--json FILE]

1. For each bias B: how often each phrase is said (``said``), how many of those needed the bias
   (``biased``), and how many tokens differ from B = 0 (``changed``: over-correction shows here),
   over examples/hello.wav and examples/long.wav.
2. The static eager step's time (p50 and p90 of every decode step, ``--runs`` transcriptions of
   long.wav each) plain, with keyterms, with 3 alternatives, and with both.

Default model: a tiny random Realtime checkpoint made on the spot (``voxcli.testing.tiny``; its
vocabulary is 2,900 tokens, the real one 131,072: the top-k and the bias add run over 45x more on
the real model, so the step figures here are a floor; the GPU check measures the real one). Its
head is rigged to say ``[STREAMING_WORD]`` before each word, as the real model does
(``voxcli.testing.grammar``), since the bias waits for that marker; ``--no-words`` runs it as it
is (it says no marker: after 8 text pieces each stream takes it for a model without them).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from voxcli.audio.decode import load_audio  # noqa: E402
from voxcli.engine.keyterms import Keyterms  # noqa: E402
from voxcli.engine.local import load_engine  # noqa: E402
from voxcli.events import keyterm_counts  # noqa: E402

BIASES = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)


def effect(engine, clips, phrases) -> list[dict]:
    base = [[e.token_id for e in engine.transcribe(a, keyterms=None)] for a in clips]
    rows = []
    for bias in BIASES:
        kt = Keyterms.of(phrases, bias)
        runs = [list(engine.transcribe(a, keyterms=kt)) for a in clips]
        counts: dict = {}
        for events in runs:
            keyterm_counts(events, counts)
        changed = sum(sum(x != y for x, y in zip([e.token_id for e in ev], b)) for ev, b in zip(runs, base))
        tokens = sum(len(b) for b in base)
        rows.append({"bias": bias, "said": {p: counts.get(p, {"said": 0})["said"] for p in phrases},
                     "biased": {p: counts.get(p, {"biased": 0})["biased"] for p in phrases},
                     "changed": changed, "tokens": tokens})
    return rows


def step_cost(model: str, audio, phrases, runs: int) -> list[dict]:
    rows = []
    for name, kw, kt in (("plain", {}, None), ("keyterms", {}, Keyterms.of(phrases, 2.0)),
                         ("alternatives 3", {"alternatives": 3}, None),
                         ("both", {"alternatives": 3}, Keyterms.of(phrases, 2.0))):
        engine = load_engine(model, device="cpu", **kw)
        steps = [e.step_ms for _ in range(runs) for e in engine.transcribe(audio, keyterms=kt) if e.step_ms]
        p50, p90 = np.percentile(steps, [50, 90])
        rows.append({"path": name, "n": len(steps), "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--phrases", default="two,class")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-words", action="store_true", help="do not rig the model to say word markers")
    args = ap.parse_args()
    phrases = args.phrases.split(",")
    model = args.model
    if model is None:
        from voxcli.testing.tiny import make_tiny_model

        model = str(make_tiny_model(Path(tempfile.mkdtemp(prefix="voxcli-kt-")), "realtime"))
    clips = [load_audio(ROOT / "examples" / name) for name in ("hello.wav", "long.wav")]
    engine = load_engine(model, device="cpu")
    if not args.no_words:
        from voxcli.testing.grammar import speak_in_words

        speak_in_words(engine)
    result = {"model": model, "words": not args.no_words, "effect": effect(engine, clips, phrases),
              "step": step_cost(model, clips[1], phrases, args.runs)}
    print("| bias | " + " | ".join(f"{p}: said (biased)" for p in phrases) + " | tokens changed |")
    print("|---|" + "---|" * len(phrases) + "---|")
    for r in result["effect"]:
        cells = " | ".join(f"{r['said'][p]} ({r['biased'][p]})" for p in phrases)
        print(f"| {r['bias']:g} | {cells} | {r['changed']} of {r['tokens']} |")
    print("\n| step | n | p50 ms | p90 ms |\n|---|---|---|---|")
    for r in result["step"]:
        print(f"| {r['path']} | {r['n']} | {r['p50_ms']} | {r['p90_ms']} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
