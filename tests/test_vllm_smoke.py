"""voxcli's remote-engine protocols against a real vLLM server, with only the standard library.

The client side uses http.client, socket, base64 and json: voxcli's remote engine must need
neither torch nor new dependencies, and these tests prove both vLLM protocols can be spoken so.
- offline kind: POST /v1/audio/transcriptions (multipart, stream=true) -> SSE chunks -> [DONE];
- realtime kind: the /v1/realtime WebSocket (a minimal RFC 6455 client below).
The servers come from tests/vllm_server.py (skipped without VOXCLI_VLLM_PYTHON, except in CI).
Random weights: assert the shapes of messages and their order, never the words.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import struct
import sys
import threading
import time
import wave
from pathlib import Path

import pytest
from vllm_server import vllm_offline, vllm_realtime  # noqa: F401 - the fixtures

from voxcli.netproto import (_WS_GUID, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, WebSocket,
                             WebSocketClosed, multipart, sse_data)

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


def post_transcription(server, model: str, **fields: str) -> http.client.HTTPResponse:
    body, content_type = multipart({"model": model, **fields},
                                   {"file": ("hello.wav", HELLO_WAV.read_bytes(), "audio/wav")})
    conn = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT_S)
    conn.request("POST", "/v1/audio/transcriptions", body=body,
                 headers={"Content-Type": content_type})
    return conn.getresponse()


def ws_url(server) -> str:
    return f"ws://{server.host}:{server.port}/v1/realtime"


def report(*lines: str) -> None:
    print("\n" + "\n".join(f"[vllm probe] {line}" for line in lines), file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The WebSocket client against a scripted peer (no vLLM needed): frame lengths of 7, 16 and 64
# bits, fragmentation with a ping in between, masking, and the closing handshake.
# ---------------------------------------------------------------------------------------------

def _server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        return struct.pack("!BB", first, n) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def _read_client_frame(conn: socket.socket) -> tuple[int, bool, bytes]:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = conn.recv(n - len(data))
            assert more, "client closed early"
            data += more
        return data

    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", exact(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", exact(8))
    mask = exact(4) if b1 & 0x80 else b""
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(exact(n))) if mask else exact(n)
    return b0 & 0x0F, bool(b1 & 0x80), payload


def test_websocket_client_framing():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict = {}

    def peer() -> None:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = next(line.split(":", 1)[1].strip() for line in request.decode().split("\r\n")
                       if line.lower().startswith("sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                         + accept.encode() + b"\r\n\r\n")
            for size, char in ((10, b"a"), (300, b"b"), (70000, b"c")):
                conn.sendall(_server_frame(OP_TEXT, char * size))
            conn.sendall(_server_frame(OP_TEXT, b"hel", fin=False)
                         + _server_frame(OP_PING, b"are you there")
                         + _server_frame(OP_CONT, b"lo"))
            seen["pong"] = _read_client_frame(conn)
            seen["echo"] = frame = _read_client_frame(conn)
            conn.sendall(_server_frame(OP_TEXT, frame[2]))
            conn.sendall(_server_frame(OP_CLOSE, struct.pack("!H", 1000) + b"bye"))
            seen["close"] = _read_client_frame(conn)

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    try:
        with WebSocket(f"ws://127.0.0.1:{port}/v1/realtime", timeout_s=10) as ws:
            assert [ws.recv() for _ in range(3)] == ["a" * 10, "b" * 300, "c" * 70000]
            assert ws.recv() == "hello"
            big = json.dumps({"audio": "d" * 70000})
            ws.send_text(big)
            assert ws.recv() == big
            with pytest.raises(WebSocketClosed) as closed:
                ws.recv()
            assert (closed.value.code, closed.value.reason) == (1000, "bye")
        thread.join(10)
    finally:
        listener.close()
    assert seen["pong"] == (OP_PONG, True, b"are you there")
    assert seen["echo"] == (OP_TEXT, True, big.encode())  # masked on the wire, as required
    assert seen["close"][:2] == (OP_CLOSE, True) and seen["close"][2][:2] == b"\x03\xe8"


# ---------------------------------------------------------------------------------------------
# Offline kind: /v1/audio/transcriptions with stream=true
# ---------------------------------------------------------------------------------------------

def test_transcriptions_stream_sse(vllm_offline):
    # A random model never says </s>: cap the tokens. With stream_include_usage a last chunk
    # carries the usage (and no choices).
    response = post_transcription(vllm_offline, vllm_offline.model, stream="true",
                                  max_completion_tokens="40", stream_include_usage="true")
    assert response.status == 200, response.read()[:500]
    assert response.getheader("Content-Type", "").startswith("text/event-stream")
    events = list(sse_data(response))
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


def test_transcriptions_wrong_model_probe(vllm_offline):
    """Reports (does not assert) what a wrong model name gets, streaming and not."""
    for stream in ("true", "false"):
        response = post_transcription(vllm_offline, "no-such-model", stream=stream)
        body = response.read()
        report(f"offline wrong model, stream={stream}: HTTP {response.status} "
               f"{response.getheader('Content-Type')}: {body[:400].decode(errors='replace')}")
    assert vllm_offline.alive()


# ---------------------------------------------------------------------------------------------
# Realtime kind: the /v1/realtime WebSocket
# ---------------------------------------------------------------------------------------------

def _stream_file(server, *, pace_s: float = 0.0) -> dict:
    """One realtime session over hello.wav, events read by a thread as they arrive (times in
    seconds from the first append); returns what happened."""
    chunks = pcm16_chunks()
    events: list[tuple[float, dict]] = []
    failure: list[BaseException] = []
    with WebSocket(ws_url(server)) as ws:
        created = ws.recv_json()
        ws.send_json({"type": "session.update", "model": server.model})
        ws.send_json({"type": "input_audio_buffer.commit"})
        start = time.perf_counter()

        def read() -> None:
            try:
                while True:
                    event = ws.recv_json()
                    events.append((time.perf_counter() - start, event))
                    if event.get("type") in ("transcription.done", "error"):
                        return
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                failure.append(e)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        for chunk in chunks:
            ws.send_json({"type": "input_audio_buffer.append",
                          "audio": base64.b64encode(chunk).decode()})
            if pace_s:
                time.sleep(pace_s)
        sent_s = time.perf_counter() - start
        ws.send_json({"type": "input_audio_buffer.commit", "final": True})
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


def test_realtime_errors_probe(vllm_realtime):
    """Reports (does not assert) the error events for a wrong model and for a commit before any
    session.update; the connection stays usable afterwards."""
    with WebSocket(ws_url(vllm_realtime)) as ws:
        ws.recv_json()
        ws.send_json({"type": "input_audio_buffer.commit"})
        before_update = ws.recv_json()
        ws.send_json({"type": "session.update", "model": "no-such-model"})
        wrong_model = ws.recv_json()
        ws.send_json({"type": "no.such.event"})
        unknown = ws.recv_json()
        ws.send_json({"type": "session.update", "model": vllm_realtime.model})
        ws.send_json({"type": "input_audio_buffer.append", "audio": "!!"})
        bad_audio = ws.recv_json()
    report(f"realtime commit before session.update: {json.dumps(before_update)}",
           f"realtime wrong model: {json.dumps(wrong_model)}",
           f"realtime unknown event: {json.dumps(unknown)}",
           f"realtime bad base64 audio: {json.dumps(bad_audio)}")
    assert vllm_realtime.alive()


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
