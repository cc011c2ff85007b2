"""voxcli's remote-engine protocols against a real vLLM server, spoken with the client libraries
voxcli's remote engine uses (websockets' sync client, httpx2), and nothing of voxcli itself:
what the server sends, in what order, pinned down here so that voxcli.engine.remote can rely on it.
- offline kind: POST /v1/audio/transcriptions (multipart, stream=true) -> SSE chunks -> [DONE];
- realtime kind: the /v1/realtime WebSocket.
The servers come from tests/vllm_server.py (skipped without VOXCLI_VLLM_PYTHON, except in CI).
Random weights: assert the shapes of messages and their order, never the words.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
import wave
from pathlib import Path

import httpx2
import pytest
from websockets.sync.client import connect

pytestmark = pytest.mark.vllm

HELLO_WAV = Path(__file__).resolve().parent.parent / "examples" / "hello.wav"
SAMPLE_RATE = 16000
CHUNK_SAMPLES = 1280  # 80 ms, one Realtime token's worth of audio
TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def pcm16_chunks(path: Path = HELLO_WAV, chunk_samples: int = CHUNK_SAMPLES) -> list[bytes]:
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
        pcm = w.readframes(w.getnframes())
    step = chunk_samples * 2
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]


def post_transcription(server, model: str, **fields: str) -> tuple[httpx2.Response, list[tuple[float, str]]]:
    """The response and its SSE ``data:`` payloads, each with its arrival time (s from the request)."""
    events = []
    start = time.perf_counter()
    with httpx2.stream("POST", f"{server.url}/v1/audio/transcriptions", data={"model": model, **fields},
                       files={"file": ("hello.wav", HELLO_WAV.read_bytes(), "audio/wav")},
                       timeout=TIMEOUT_S) as response:
        if response.status_code != 200:
            response.read()
            return response, []
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.append((time.perf_counter() - start, line[5:].strip()))
    return response, events


def ws(server):
    return connect(f"ws://{server.host}:{server.port}/v1/realtime", open_timeout=TIMEOUT_S)


def send_json(ws, message: dict) -> None:
    ws.send(json.dumps(message))


def recv_json(ws) -> dict:
    return json.loads(ws.recv(TIMEOUT_S))


def report(*lines: str) -> None:
    print("\n" + "\n".join(f"[vllm probe] {line}" for line in lines), file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Offline kind: /v1/audio/transcriptions with stream=true
# ---------------------------------------------------------------------------------------------

def test_transcriptions_stream_sse(vllm_offline):
    # A random model never says </s>: cap the tokens. With stream_include_usage a last chunk
    # carries the usage (and no choices).
    response, events = post_transcription(vllm_offline, vllm_offline.model, stream="true",
                                          max_completion_tokens="40", stream_include_usage="true")
    assert response.status_code == 200, response.text[:500]
    assert response.headers.get("Content-Type", "").startswith("text/event-stream")
    assert events, "no data: lines"
    assert events[-1][1] == "[DONE]"
    assert all(payload != "[DONE]" for _, payload in events[:-1])
    *chunks, usage_chunk = [json.loads(payload) for _, payload in events[:-1]]
    assert chunks, "no text chunk before [DONE]"
    for chunk in chunks:
        assert chunk["object"] == "transcription.chunk"
        assert chunk["model"] == vllm_offline.model
        assert isinstance(chunk["choices"][0]["delta"]["content"], str)
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert [c["choices"][0].get("finish_reason") for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert len(chunks) <= usage["completion_tokens"] <= 40  # a chunk may carry several tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    report(f"offline SSE: {len(chunks)} chunks, first after {events[0][0] * 1000:.0f} ms, "
           f"[DONE] after {events[-1][0] * 1000:.0f} ms; first {json.dumps(chunks[0])}; "
           f"last {json.dumps(chunks[-1])}; usage {json.dumps(usage_chunk)}")


def _stream_file(server, *, pace_s: float = 0.0) -> dict:
    """One realtime session over hello.wav, events read by a thread as they arrive (times in
    seconds from the first append); returns what happened."""
    chunks = pcm16_chunks()
    events: list[tuple[float, dict]] = []
    failure: list[BaseException] = []
    with ws(server) as conn:
        created = recv_json(conn)
        send_json(conn, {"type": "session.update", "model": server.model})
        send_json(conn, {"type": "input_audio_buffer.commit"})
        start = time.perf_counter()

        def read() -> None:
            try:
                while True:
                    event = json.loads(conn.recv())
                    events.append((time.perf_counter() - start, event))
                    if event.get("type") in ("transcription.done", "error"):
                        return
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                failure.append(e)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        for chunk in chunks:
            send_json(conn, {"type": "input_audio_buffer.append",
                             "audio": base64.b64encode(chunk).decode()})
            if pace_s:
                time.sleep(pace_s)
        sent_s = time.perf_counter() - start
        send_json(conn, {"type": "input_audio_buffer.commit", "final": True})
        reader.join(TIMEOUT_S)
    if failure:
        raise failure[0]
    assert not reader.is_alive(), f"no transcription.done within {TIMEOUT_S} s: {events[-3:]}"
    return {"created": created, "events": events, "sent_s": sent_s,
            "audio_s": sum(len(c) for c in chunks) / 2 / SAMPLE_RATE}


def test_realtime_websocket(vllm_realtime):
    run = _stream_file(vllm_realtime)
    created, events = run["created"], run["events"]
    assert created["type"] == "session.created"
    assert created["id"].startswith("sess-") and isinstance(created["created"], int)
    types = [e["type"] for _, e in events]
    assert types[-1] == "transcription.done", events[-5:]
    deltas = [e for _, e in events if e["type"] == "transcription.delta"]
    assert deltas and types == ["transcription.delta"] * len(deltas) + ["transcription.done"]
    assert all(isinstance(d["delta"], str) for d in deltas)
    done = events[-1][1]
    assert done["text"] == "".join(d["delta"] for d in deltas)
    usage = done["usage"]
    assert usage["completion_tokens"] >= len(deltas) > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    report(f"realtime (unpaced): {run['audio_s']:.2f} s of audio sent in {run['sent_s']:.3f} s; "
           f"{len(deltas)} deltas ({sum(1 for d in deltas if not d['delta'])} empty), first at "
           f"{events[0][0] * 1000:.0f} ms, done at {events[-1][0] * 1000:.0f} ms; "
           f"session.created {json.dumps(created)}; first delta {json.dumps(deltas[0])}; "
           f"done {json.dumps(done)[:300]}")


def test_realtime_paced_probe(vllm_realtime):
    """Reports first-delta and finish times when audio arrives at real speed (80 ms a chunk)."""
    run = _stream_file(vllm_realtime, pace_s=CHUNK_SAMPLES / SAMPLE_RATE)
    events = run["events"]
    assert events[-1][1]["type"] == "transcription.done"
    deltas = [t for t, e in events if e["type"] == "transcription.delta"]
    gaps = sorted(b - a for a, b in zip(deltas, deltas[1:]))
    report(f"realtime (paced 80 ms): {run['audio_s']:.2f} s of audio sent over "
           f"{run['sent_s']:.2f} s; {len(deltas)} deltas, first at {deltas[0] * 1000:.0f} ms, "
           f"median gap {gaps[len(gaps) // 2] * 1000:.0f} ms, done "
           f"{(events[-1][0] - run['sent_s']) * 1000:.0f} ms after the last chunk")
