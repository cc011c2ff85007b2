"""voxcli against vLLM on the same weights: how much of the text agrees, and where it stops.

    python bench/twin.py [--delay-ms 960] [--json FILE]

Starts vLLM's CPU server (float32) on a tiny random Realtime model and an offline one
(``tests/vllm_server.py``, the tests' launcher), writes their hf twins
(``voxcli.testing.twin.mistral_to_hf``) and sends examples/hello.wav (as PCM16, as a client does)
to both sides:

- Realtime: vLLM's text against voxcli's, with voxcli's own windows (the whole clip's mel
  frames), with its windows on vLLM's grid (``hear_as_vllm``), and with those and the first
  step's context made silence: how much of the text is the same from the start and, where it
  first differs, voxcli's top-two gap there (float32 kernels tell apart gaps far below 1e-3).
- Offline: the whole clip as one segment through vLLM's transcription endpoint and voxcli's
  offline engine: characters in common from the start, and the top-two gap where they part.

Needs vLLM's venv (``bash .ci/vllm.sh``); about two minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from voxcli.audio.decode import load_audio  # noqa: E402


def _vllm_steps(url: str, model: str, audio) -> list[str]:
    """Every delta of one realtime request (vLLM sends one a step, empty ones too)."""
    import json as js

    from websockets.sync.client import connect

    from voxcli.engine.server import pcm16_base64

    with connect(url.replace("http", "ws", 1) + "/v1/realtime", max_size=2 ** 22) as ws:
        ws.recv(30)
        ws.send(js.dumps({"type": "session.update", "model": model}))
        ws.send(js.dumps({"type": "input_audio_buffer.commit"}))
        for i in range(0, len(audio), 1280):
            ws.send(js.dumps({"type": "input_audio_buffer.append", "audio": pcm16_base64(audio[i:i + 1280])}))
        ws.send(js.dumps({"type": "input_audio_buffer.commit", "final": True}))
        deltas = []
        while True:
            message = js.loads(ws.recv(60))
            if message["type"] != "transcription.delta":
                return deltas
            deltas.append(message["delta"])


def _gap(alternatives) -> float:
    return alternatives[0]["logprob"] - alternatives[1]["logprob"]


def realtime(server, hf_dir: Path, audio, delay_ms: int) -> list[dict]:
    from voxcli.engine.local import load_engine
    from voxcli.testing.twin import as_served, hear_as_vllm, quiet_where_the_first_step_begins

    rows = []
    for name, shift, clip in (("voxcli's windows", False, audio), ("vLLM's grid", True, audio),
                              ("vLLM's grid, first step's context silent", True,
                               quiet_where_the_first_step_begins(audio, delay_ms))):
        clip = as_served(clip)
        theirs = _vllm_steps(server.url, server.model, clip)
        engine = load_engine(str(hf_dir), device="cpu", dtype="float32", compile="off", alternatives=2)
        if shift:
            hear_as_vllm(engine)
        ours = list(engine.transcribe(clip))
        last = max(i for i, e in enumerate(ours) if e.token_id >= 0)  # vLLM makes no step over the last padding token
        ours = ours[:last] + ours[last + 1:]
        row = {"realtime": name, "delay_ms": delay_ms, "vllm_steps": len(theirs), "voxcli_steps": len(ours)}
        row.update(_common(theirs, ours))
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _common(theirs: list[str], events) -> dict:
    """How much of the text is the same from the start, and voxcli's token where it first
    differs, with its top-two gap."""
    from voxcli.testing.twin import first_difference

    text = "".join(theirs)
    same, at = first_difference(text, events)
    return {"identical": at is None, "chars": [len(text), len("".join(e.text for e in events))], "same_chars": same,
            "tokens": len(events), "first_different_token": at,
            "gap_there": None if at is None or at >= len(events) else round(_gap(events[at].alternatives), 5)}


def offline(server, hf_dir: Path, audio) -> dict:
    from voxcli.engine.connect import connect_engine
    from voxcli.engine.local import load_engine
    from voxcli.testing.twin import as_served

    clip = as_served(audio)
    whole = [(0, len(clip))]
    theirs = [e.text for e in connect_engine(server.url).transcribe(clip, segments=whole)]
    events = list(load_engine(str(hf_dir), device="cpu", dtype="float32", alternatives=2).transcribe(clip, segments=whole))
    row = {"offline": "whole clip, one segment", **_common(theirs, events)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay-ms", type=int, default=960)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from voxcli.testing.twin import mistral_to_hf
    from voxcli.testing.vllm import start_vllm_server

    work = Path(tempfile.mkdtemp(prefix="voxcli-twin-"))
    audio = load_audio(ROOT / "examples" / "hello.wav")
    result = {}
    server = start_vllm_server("realtime", work / "realtime", delay_ms=args.delay_ms, cache_root=work / "cache")
    try:
        result["realtime"] = realtime(server, mistral_to_hf(server.model_dir, work / "realtime-hf"), audio,
                                      args.delay_ms)
    finally:
        server.kill()
    server = start_vllm_server("offline", work / "offline", cache_root=work / "cache")
    try:
        result["offline"] = offline(server, mistral_to_hf(server.model_dir, work / "offline-hf"), audio)
    finally:
        server.kill()
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
