"""``voxcli serve`` against the clients its users already have: voxcli's own ``--server`` client
(vLLM's realtime protocol), the ``openai`` package (REST, server-sent events, the Realtime
transcription client), raw WebSockets for every fault, and a real headless Chromium for the page.

One tiny random Realtime model serves all of it (8 rows: one per session); every text is checked
against the same weights run locally, one stream alone (``realtime_engine``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from serve_server import NeverReads, served
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from voxcli.audio.decode import load_audio, resample
from voxcli.audio.pcm import to_pcm16
from voxcli.choices import KEYTERM_BIAS
from voxcli.engine.server import pcm16_base64 as pcm16
from voxcli.serve.app import ServeOptions

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.wav"
LONG = ROOT / "examples" / "long.wav"
KEY = "serve-test-key-7c1d"
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serve")]


@pytest.fixture(scope="module")
def serve_engine(realtime_dir):
    from voxcli.engine.local import load_engine

    return load_engine(str(realtime_dir), device="cpu", sessions=8)


@pytest.fixture(scope="module")
def server(serve_engine):
    with served(serve_engine, ServeOptions(max_sessions=8)) as s:
        yield s


@pytest.fixture(scope="module")
def clips():
    """Eight different stretches of speech, 2.5 to 6 s."""
    audio = load_audio(LONG)
    return [audio[int(s * 16000):int((s + d) * 16000)] for s, d in
            [(0, 4), (1.5, 3), (3, 5), (4.5, 2.5), (6, 6), (7.5, 3.5), (9, 4.5), (10.5, 3)]]


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    """hello.wav, a second of silence, hello.wav again: several ends of speech (long.wav has none)."""
    import soundfile as sf

    hello = load_audio(HELLO)
    audio = np.concatenate([hello, np.zeros(16000, np.float32), hello])
    path = tmp_path_factory.mktemp("talk") / "talk.wav"
    sf.write(path, audio, 16000, subtype="PCM_16")
    return path, load_audio(path)


def local_text(engine, audio) -> str:
    return "".join(e.text for e in engine.transcribe(audio)).strip()


def vllm_session(server, **kw):
    """A raw vLLM-dialect connection, set up; returns the socket (session.created read)."""
    ws = connect(server.ws_url + "/v1/realtime", open_timeout=10, legacy=True, **kw)
    assert json.loads(ws.recv(10))["type"] == "session.created"
    return ws


def until(ws, kind: str, timeout_s: float = 60.0) -> tuple[list[dict], dict]:
    seen = []
    deadline = time.monotonic() + timeout_s
    while True:
        event = json.loads(ws.recv(max(0.1, deadline - time.monotonic())))
        if event["type"] == kind:
            return seen, event
        seen.append(event)


def healthy_after(server, engine, clips) -> None:
    """The server is fine: health ok, no stream left open, and a new session transcribes right."""
    server.wait_idle()
    assert server.health()["status"] == "ok"
    from voxcli.engine.connect import connect_engine

    remote = connect_engine(server.url, timeout_s=60)
    assert "".join(e.text for e in remote.transcribe(clips[3])).strip() == local_text(engine, clips[3])


# ---------------------------------------------------------------------------------------------
# The same text as the local engine, through every client
# ---------------------------------------------------------------------------------------------


def test_voxcli_transcribe_file_through_serve_gives_the_local_text(server, realtime_engine):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "voxcli", "transcribe", "file", str(HELLO), "--server", server.url,
                          "--format", "json"], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    served_json = json.loads(run.stdout)
    assert served_json["text"] == local_text(realtime_engine, load_audio(HELLO))
    tokens = served_json["events"]
    assert {t["token_id"] for t in tokens} != {-1}, "voxcli's per-delta fields were read: real token ids"


def test_bench_against_serve_reports_the_servers_own_split(server, tmp_path):
    """`voxcli bench --server URL --concurrency N --paced` against voxcli serve: the server's own
    time per row stepped, outside the forwards (host) and in them, read from its /metrics before
    and after, in the JSON and the table; its rows are the sessions' tokens."""
    out = tmp_path / "load.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "voxcli", "bench", "--server", server.url, "--concurrency", "3",
                          "--paced", "--json", str(out), str(ROOT / "examples" / "short.wav")],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    load = json.loads(out.read_text())["load"]
    split = load["server_split"]
    assert split["rows"] >= sum(s["n_deltas"] for s in load["sessions"]) > 0  # every token a row (blanks too)
    assert split["host_ms_per_row"] > 0 and split["forward_ms_per_row"] > 0
    assert "the server's scheduler, per row stepped" in run.stdout


def _utterances(stdout: str) -> dict[int, str]:
    texts: dict[int, list[str]] = {}
    for line in stdout.splitlines():
        event = json.loads(line)
        if event["type"] == "token":
            texts.setdefault(event["utterance"], []).append(event["text"])
    return {u: "".join(t) for u, t in texts.items()}


def test_voxcli_listen_through_serve_gives_the_local_text(server, realtime_dir, talk):
    """Per utterance (a server's flushed words may arrive after the next utterance's first ones)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    common = [sys.executable, "-m", "voxcli", "listen", "--input", str(talk[0]), "--speed", "0", "--format", "jsonl"]
    runs = [subprocess.run(common + extra, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
            for extra in (["--server", server.url], ["-m", str(realtime_dir), "--model-device", "cpu"])]
    for run in runs:
        assert run.returncode == 0, run.stderr
    remote, local = (_utterances(r.stdout) for r in runs)
    assert len(local) >= 2, "the clip has several utterances"
    assert remote == local


def test_the_openai_package_transcribes_plain_streamed_and_in_every_format(server, realtime_engine):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    model = client.models.list().data[0].id
    expected = local_text(realtime_engine, load_audio(HELLO))
    with open(HELLO, "rb") as f:
        assert client.audio.transcriptions.create(model=model, file=f).text == expected
    with open(HELLO, "rb") as f:
        events = list(client.audio.transcriptions.create(model=model, file=f, stream=True))
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert events[-1].type == "transcript.text.done" and events[-1].text == expected
    assert "".join(e.delta for e in events[:-1]).strip() == expected
    with open(HELLO, "rb") as f:
        verbose = client.audio.transcriptions.create(model=model, file=f, response_format="verbose_json")
    assert verbose.text == expected and abs(verbose.duration - 4.324) < 0.01 and verbose.segments
    for fmt, head in (("text", expected[:10]), ("srt", "1\n00:00:00,000 --> "), ("vtt", "WEBVTT\n")):
        with open(HELLO, "rb") as f:
            assert client.audio.transcriptions.create(model=model, file=f, response_format=fmt).startswith(head)


def test_eight_concurrent_realtime_sessions_each_give_their_text_alone(server, realtime_engine, clips):
    from voxcli.engine.connect import connect_engine

    def one(clip):
        remote = connect_engine(server.url, timeout_s=120)
        return list(remote.transcribe(clip))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, clips))
    for clip, events in zip(clips, results):
        assert "".join(e.text for e in events).strip() == local_text(realtime_engine, clip)
    batches = [e.batch for events in results for e in events if e.batch]
    assert max(batches) >= 2, "sessions stepped together in one forward"
    server.wait_idle()


def test_openai_realtime_client_with_server_vad(server, talk):
    """The openai package's Realtime client, pointed here: 24 kHz PCM16, server VAD: speech
    started/stopped, then per item deltas and a completed transcript that is their sum."""
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", websocket_base_url=server.ws_url + "/v1")
    audio24 = resample(talk[1], 16000, 24000)
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        watchdog = threading.Timer(90, conn.close)  # recv() has no timeout of its own: a failure must not hang
        watchdog.start()
        assert conn.recv().type == "session.created"
        conn.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": {"type": "server_vad"}}}})
        assert conn.recv().type == "session.updated"
        for i in range(0, len(audio24), 4800):
            conn.input_audio_buffer.append(audio=pcm16(audio24[i:i + 4800]))
        conn.input_audio_buffer.commit()  # the end of the input: whatever is open completes
        deltas: dict[str, list[str]] = {}
        completed: dict[str, str] = {}
        kinds = []
        while len(completed) < 2 or len(completed) < kinds.count("input_audio_buffer.speech_stopped") + 1:
            event = conn.recv()
            kinds.append(event.type)
            if event.type == "conversation.item.input_audio_transcription.delta":
                deltas.setdefault(event.item_id, []).append(event.delta)
            elif event.type == "conversation.item.input_audio_transcription.completed":
                completed[event.item_id] = event.transcript
        watchdog.cancel()
    assert "input_audio_buffer.speech_started" in kinds and "input_audio_buffer.speech_stopped" in kinds
    assert "input_audio_buffer.committed" in kinds
    assert all(completed[i] == "".join(d).strip() for i, d in deltas.items())
    assert any(completed.values())


def test_audio_sent_at_once_past_several_ends_of_speech_is_all_heard(server, talk):
    """A client that sends a long stretch at once (three utterances in one append): the scheduler
    takes it a cycle's worth at a time, and an end of speech in the middle of what it took stops
    that cycle's feeding; the rest is heard next cycle, not dropped. The utterances' durations add
    up to all of the audio."""
    hello = load_audio(HELLO)
    gap = np.zeros(16000, np.float32)
    audio = np.concatenate([hello, gap, hello, gap, hello, gap])
    ws = connect(server.ws_url + "/v1/realtime?intent=transcription", open_timeout=10, legacy=True)
    assert json.loads(ws.recv(10))["type"] == "session.created"
    ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": {"type": "server_vad"}}}}}))
    ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm16(audio)}))
    ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
    stopped, heard_s, completed = 0, 0.0, 0
    while completed <= stopped:
        event = json.loads(ws.recv(60))
        if event["type"] == "input_audio_buffer.speech_stopped":
            stopped += 1
        elif event["type"] == "conversation.item.input_audio_transcription.completed":
            completed += 1
            heard_s += event["usage"]["seconds"]
    ws.close()
    assert stopped >= 3
    assert heard_s == pytest.approx(len(audio) / 16000, abs=0.002 * completed)


def test_the_mistralai_sdk_streams_a_file_and_gets_the_local_text(server, realtime_engine):
    """Mistral's own SDK (`mistralai[realtime]`), pointed here by server_url alone: a file paced at
    real speed over /v1/audio/transcriptions/realtime, with context_bias; its deltas add up to
    transcription.done's text, which is the local engine's for the same audio (the keyterm in
    both). A wrong audio format is refused with Mistral's error event."""
    from mistralai.client import Mistral
    from mistralai.client.models import AudioFormat

    from voxcli.engine.keyterms import Keyterms

    audio = load_audio(HELLO)
    client = Mistral(api_key="unused", server_url=server.url)

    async def paced():
        for i in range(0, len(audio), 1280):
            await asyncio.sleep(0.08)
            yield to_pcm16(audio[i:i + 1280])

    async def run(**kw):
        events = []
        async for event in client.audio.realtime.transcribe_stream(audio_stream=paced(), model="voxtral-mini-2602",
                                                                   **kw):
            events.append(event)
        return events

    events = asyncio.run(run(audio_format=AudioFormat(encoding="pcm_s16le", sample_rate=16000),
                             context_bias=["Voxtral"]))
    kinds = [getattr(e, "type", None) for e in events]
    assert kinds[:2] == ["session.created", "session.updated"] and kinds[-1] == "transcription.done"
    deltas = "".join(e.text for e in events if getattr(e, "type", None) == "transcription.text.delta")
    local = "".join(e.text for e in realtime_engine.transcribe(audio, keyterms=Keyterms.of(["Voxtral"], KEYTERM_BIAS)))
    assert events[-1].text == deltas.strip() == local.strip() != ""
    assert events[1].session.context_bias == ["Voxtral"]
    bad = asyncio.run(run(audio_format=AudioFormat(encoding="pcm_mulaw", sample_rate=8000)))
    assert getattr(bad[-1], "type", None) == "error" and "pcm_s16le" in str(bad[-1].error.message)


def test_the_mistralai_sdk_transcribes_a_file_over_rest_plain_and_streamed(server, realtime_engine):
    """Mistral's SDK's `transcriptions.complete` and `.stream` on the path OpenAI's also uses: told
    apart by the `diarize` field Mistral's form always carries, answered in Mistral's shape, with
    the local engine's text (context_bias as keyterms); OpenAI's answer on the same path is
    unchanged (test_the_openai_package_...)."""
    from mistralai.client import Mistral

    from voxcli.engine.keyterms import Keyterms

    audio = load_audio(HELLO)
    local = "".join(e.text for e in realtime_engine.transcribe(audio, keyterms=Keyterms.of(["Voxtral"], KEYTERM_BIAS)))
    client = Mistral(api_key="unused", server_url=server.url)
    upload = {"file_name": "hello.wav", "content": HELLO.read_bytes()}
    plain = client.audio.transcriptions.complete(model="voxtral-mini-latest", file=upload, context_bias=["Voxtral"])
    assert plain.text == local.strip() and plain.model == server.state.model_name
    assert plain.usage.prompt_audio_seconds == round(len(audio) / 16000)
    events = list(client.audio.transcriptions.stream(model="voxtral-mini-latest", file=upload,
                                                     context_bias=["Voxtral"]))
    kinds = [e.event for e in events]
    assert kinds[-1] == "transcription.done" and set(kinds[:-1]) == {"transcription.text.delta"}
    assert "".join(e.data.text for e in events[:-1]).strip() == events[-1].data.text == local.strip()


def test_mistral_dialect_faults_get_mistral_errors_and_the_session_goes_on(server, serve_engine, clips):
    """On Mistral's endpoint the faults the other dialects survive get Mistral's error event
    (``error.message``, a numeric ``error.code``), the session goes on, and a wrong key is refused."""
    ws = connect(server.ws_url + "/v1/audio/transcriptions/realtime?model=x", open_timeout=10)
    created = json.loads(ws.recv(10))
    assert created["type"] == "session.created" and created["session"]["audio_format"]["sample_rate"] == 16000
    for bad in ("not json", json.dumps({"type": "no.such.event"}),
                json.dumps({"type": "input_audio.append", "audio": "%%%"})):
        ws.send(bad)
        error = json.loads(ws.recv(10))
        assert error["type"] == "error" and isinstance(error["error"]["code"], int) and error["error"]["message"]
    ws.send(json.dumps({"type": "input_audio.append", "audio": pcm16(clips[3])}))
    ws.send(json.dumps({"type": "input_audio.end"}))
    _, done = until(ws, "transcription.done")
    assert done["text"] and done["usage"]["prompt_audio_seconds"] >= 2
    ws.close()
    with served(serve_engine, ServeOptions(max_sessions=2, api_key=KEY)) as keyed:
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus) as refused:
            connect(keyed.ws_url + "/v1/audio/transcriptions/realtime?model=x", open_timeout=10,
                    additional_headers={"Authorization": "Bearer wrong"})
        assert refused.value.response.status_code == 401


def test_health_models_and_metrics(server, realtime_engine):
    """The metrics count what this test makes (not what earlier tests left): a transcription's
    every token, the moment it is done."""
    import openai

    assert server.health()["max_sessions"] == 8
    assert server.metric("voxcli_sessions_max") == 8  # capacity, for an autoscaler
    status, body = server.get("/v1/models")
    assert status == 200 and len(json.loads(body)["data"]) == 1
    status, body = server.get("/metrics")
    for name in ("voxcli_sessions_active", "voxcli_tokens_total", "voxcli_step_seconds_bucket",
                 "voxcli_batch_size_bucket", "voxcli_emission_latency_seconds_bucket"):
        assert name in body
    before = server.metric("voxcli_tokens_total")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    with open(HELLO, "rb") as f:
        client.audio.transcriptions.create(model=server.state.model_name, file=f)
    made = sum(1 for _ in realtime_engine.transcribe(load_audio(HELLO)))  # the same tokens, here
    assert server.metric("voxcli_tokens_total") - before == made > 0
    status, page = server.get("/")
    assert status == 200 and 'id="transcript"' in page and 'id="start"' in page


def test_keyterms_are_a_session_option_on_both_apis(server, realtime_engine, clips):
    """A realtime session's ``voxcli.keyterms`` (beside one without, at the same time: rows of one
    forward) and a REST upload's ``keyterms`` (the openai package's ``extra_body``) give the text the
    local engine gives with the same keyterms; deltas name the phrase a token completed."""
    import openai

    from voxcli.engine.keyterms import Keyterms

    kt = Keyterms.of(["two", "class"], 3.0)
    clip = clips[2]
    favoured = "".join(e.text for e in realtime_engine.transcribe(clip, keyterms=kt)).strip()
    assert favoured != local_text(realtime_engine, clip)

    def one(options):
        ws = vllm_session(server)
        ws.send(json.dumps({"type": "session.update", "model": server.state.model_name, **options}))
        for i in range(0, len(clip), 1280):
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm16(clip[i:i + 1280])}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
        seen, done = until(ws, "transcription.done")
        ws.close()
        return seen, done

    options = {"voxcli": {"keyterms": ["two", "class"], "keyterm_bias": 3.0}}
    with ThreadPoolExecutor(2) as pool:
        (seen, done), (_, other) = pool.map(one, [options, {}])
    assert done["text"] == favoured and other["text"] == local_text(realtime_engine, clip)
    said = [e["voxcli"]["keyterm"] for e in seen if e["type"] == "transcription.delta" and "keyterm" in e["voxcli"]]
    assert said and set(said) <= {"two", "class"}
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    hello = load_audio(HELLO)
    with open(HELLO, "rb") as f:
        result = client.audio.transcriptions.create(model=server.state.model_name, file=f,
                                                    extra_body={"keyterms": ["two", "class"], "keyterm_bias": 3.0})
    assert result.text == "".join(e.text for e in realtime_engine.transcribe(hello, keyterms=kt)).strip()
    assert sum(c["said"] for c in result.model_extra["keyterms"].values()) > 0
    # voxcli's own client sends them too (--server against voxcli serve), and reads what each token completed.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "voxcli", "transcribe", "file", str(HELLO), "--server", server.url,
                          "-k", "two", "-k", "class", "--keyterm-bias", "3", "--format", "json"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    through = json.loads(run.stdout)
    local = list(realtime_engine.transcribe(hello, keyterms=kt))
    assert through["text"] == "".join(e.text for e in local).strip()
    from voxcli.events import keyterm_counts

    assert through["keyterms"] == keyterm_counts(local)
    with open(HELLO, "rb") as f, pytest.raises(openai.BadRequestError, match="keyterm_bias"):
        client.audio.transcriptions.create(model=server.state.model_name, file=f,
                                           extra_body={"keyterms": ["two"], "keyterm_bias": 99})
    server.wait_idle()


# ---------------------------------------------------------------------------------------------
# Faults: each answered clearly; the server and the other sessions go on
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("send, code", [
    ("{not json", "invalid_json"),
    (json.dumps({"type": "conversation.item.create"}), "unknown_event"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "***"}), "invalid_audio"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}), "invalid_audio"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (6 * 1024 * 1024)}), "audio_too_large"),
    (json.dumps({"type": "session.update", "voxcli": {"keyterms": "two"}}), "invalid_keyterms"),
])
def test_bad_events_get_an_error_and_the_session_goes_on(server, realtime_engine, clips, send, code):
    ws = vllm_session(server)
    ws.send(json.dumps({"type": "session.update", "model": server.state.model_name}))
    ws.send(send)
    _, error = until(ws, "error", 20)
    assert error["code"] == code and error["error"]
    for i in range(0, len(clips[0]), 1280):  # the same connection still transcribes
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm16(clips[0][i:i + 1280])}))
    ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
    _, done = until(ws, "transcription.done")
    assert done["text"] == local_text(realtime_engine, clips[0])
    ws.close()
    server.wait_idle()


def test_audio_before_setup_and_a_frame_past_the_limit(server, realtime_engine, clips):
    ws = vllm_session(server)
    ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm16(clips[0][:1280])}))
    _, error = until(ws, "error", 20)
    assert error["code"] == "session_not_configured"
    ws.close()
    ws = vllm_session(server, max_size=None)
    # Past uvicorn's frame limit: the server closes with 1009, in the send itself or after it. It
    # closes while the client is still writing the frame, so the kernel may reset the connection
    # and take the close frame with it (seen under load): a reset is the server closing it too.
    with pytest.raises((ConnectionClosed, ConnectionResetError, BrokenPipeError)) as closed:
        ws.send("x" * (17 * 1024 * 1024))
        until(ws, "never", 20)
    if isinstance(closed.value, ConnectionClosed) and closed.value.rcvd is not None:
        assert closed.value.rcvd.code == 1009
    healthy_after(server, realtime_engine, clips)


def test_a_client_that_vanishes_mid_stream_frees_its_row(server, realtime_engine, clips):
    before = server.metric("voxcli_dropped_clients_total", '{reason="lost"}')
    ws = vllm_session(server)
    ws.send(json.dumps({"type": "session.update", "model": server.state.model_name}))
    for i in range(0, len(clips[4]), 1280):
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm16(clips[4][i:i + 1280])}))
    until(ws, "transcription.delta")
    ws.socket.shutdown(socket.SHUT_RDWR)  # gone, without a closing handshake
    ws.socket.close()
    server.wait_idle()
    assert server.metric("voxcli_dropped_clients_total", '{reason="lost"}') == before + 1
    healthy_after(server, realtime_engine, clips)


def test_a_client_that_never_reads_is_dropped_and_slows_no_one(serve_engine, realtime_engine, clips):
    """A client that sends audio and reads nothing: its pings go unanswered and it is dropped within
    the bound (a second here; its events meanwhile fill the kernel's buffers, not the server's
    memory), its row freed, while another session goes on."""
    with served(serve_engine, ServeOptions(client_queue=16, send_timeout_s=1.0)) as slow_server:
        client = NeverReads(slow_server.ws_url + "/v1/realtime", slow_server.port)
        client.send(json.dumps({"type": "session.update"}))
        audio = np.tile(clips[4], 20)  # two minutes
        client.flood(json.dumps({"type": "input_audio_buffer.append", "audio": pcm16(audio[i:i + 16000])})
                     for i in range(0, len(audio), 16000))
        from voxcli.engine.connect import connect_engine

        other = connect_engine(slow_server.url, timeout_s=60)  # meanwhile another session gets its text
        assert "".join(e.text for e in other.transcribe(clips[1])).strip() == local_text(realtime_engine, clips[1])
        deadline = time.monotonic() + 60
        while slow_server.metric("voxcli_dropped_clients_total", '{reason="lost"}') < 1:
            assert time.monotonic() < deadline, "the client that never reads was not dropped"
            time.sleep(0.1)
        client.close()
        healthy_after(slow_server, realtime_engine, clips)


def ready(server) -> tuple[int, dict]:
    status, body = server.get("/ready")
    return status, json.loads(body)


def test_a_full_server_says_so_on_both_apis_and_is_not_ready(server, realtime_engine, clips, monkeypatch):
    """Full: a new session is refused on both APIs, and /ready (a balancer's check) says 503 "full"
    with /health's body, while /health (liveness) stays 200; one session gone, ready again."""
    assert ready(server) == (200, {"status": "ready", **{k: server.health()[k] for k in
                                                         ("sessions", "max_sessions", "draining")}})
    monkeypatch.setattr(server.state.scheduler, "max_sessions", 1)
    holder = vllm_session(server)
    holder.send(json.dumps({"type": "session.update", "model": server.state.model_name}))
    deadline = time.monotonic() + 10
    while ready(server)[0] == 200:
        assert time.monotonic() < deadline, "the held session never made /ready say full"
        time.sleep(0.02)
    assert ready(server) == (503, {"status": "full", "sessions": 1, "max_sessions": 1, "draining": False})
    status, body = server.get("/health")
    assert status == 200 and set(json.loads(body)) == {"status", "sessions", "max_sessions", "draining"}
    ws = vllm_session(server)
    ws.send(json.dumps({"type": "session.update", "model": server.state.model_name}))
    _, error = until(ws, "error", 20)
    assert error["code"] == "server_full"
    with pytest.raises(ConnectionClosed):
        until(ws, "never", 10)
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with open(HELLO, "rb") as f, pytest.raises(openai.InternalServerError) as full:
        client.audio.transcriptions.create(model=server.state.model_name, file=f)
    assert full.value.status_code == 503 and "max_sessions" in str(full.value)
    holder.close()
    server.wait_idle()
    assert ready(server)[0] == 200  # the row is free: ready again, at the same limit of 1
    monkeypatch.undo()
    assert server.metric("voxcli_rejected_requests_total", '{reason="server_full"}') >= 2  # both APIs
    healthy_after(server, realtime_engine, clips)


def test_a_draining_or_stopped_server_is_not_ready(serve_engine):
    """SIGTERM's drain: /ready says 503 "draining" (the balancer sends no one new) while /health,
    liveness, stays 200; an engine thread that has stopped: both 503."""
    import asyncio

    with served(serve_engine, ServeOptions(max_sessions=2)) as s:
        assert ready(s)[0] == 200
        ws = vllm_session(s)
        ws.send(json.dumps({"type": "session.update"}))  # a session open when the drain begins
        deadline = time.monotonic() + 10
        while s.state.scheduler.active == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        t0 = time.monotonic()
        asyncio.run(s.state.drain(8.0))
        # The open session ended and the engine's thread stopped at once, not at the drain's deadline
        # (it once held its own lock while dropping the streams: stuck until the process exited).
        assert time.monotonic() - t0 < 4.0 and not s.state.scheduler.alive
        ws.close()
        assert ready(s) == (503, {"status": "draining", "sessions": 0, "max_sessions": 2, "draining": True})
        assert s.health()["status"] == "draining"  # 200: shutting down as asked, not broken
    with served(serve_engine, ServeOptions(max_sessions=2)) as s:
        s.state.scheduler.stop(5)  # the engine's thread gone, with no drain asked for
        status, body = s.get("/health")
        assert status == 503 and json.loads(body)["status"] == "error"
        assert ready(s)[0] == 503 and ready(s)[1]["status"] == "error"


def test_rest_refuses_large_uploads_bad_audio_and_unknown_models(server, realtime_engine, clips, monkeypatch):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    model = server.state.model_name
    monkeypatch.setattr(server.state, "options", replace(server.state.options, max_upload_mb=0.05))
    with open(HELLO, "rb") as f, pytest.raises(openai.APIStatusError) as large:
        client.audio.transcriptions.create(model=model, file=f)
    assert large.value.status_code == 413 and "max_upload_mb" in str(large.value)
    monkeypatch.undo()
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(model=model, file=("notes.wav", b"this is not audio"))
    assert "not a readable audio file" in str(bad.value)
    with open(HELLO, "rb") as f, pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="whisper-1", file=f)
    healthy_after(server, realtime_engine, clips)


def test_a_page_from_another_site_is_refused_unless_listed(server, serve_engine):
    """Any page the user visits may open ws://127.0.0.1:PORT (WebSockets are not bound by CORS):
    a handshake whose Origin is another site's is refused with 403; this server's own page, a
    program that sends no Origin, and an origin in serve.allow_origins are let in, and REST
    answers CORS for the listed origins only."""
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        connect(server.ws_url + "/v1/realtime", open_timeout=10, origin="http://evil.example")
    assert refused.value.response.status_code == 403 and b"origin_not_allowed" in refused.value.response.body
    own = vllm_session(server, origin=server.url)  # the live page's own origin
    own.close()
    vllm_session(server).close()  # no Origin: a program
    with served(serve_engine, ServeOptions(max_sessions=2, allow_origins=("http://app.example",))) as listed:
        vllm_session(listed, origin="http://app.example").close()
        with pytest.raises(InvalidStatus):
            connect(listed.ws_url + "/v1/realtime", open_timeout=10, origin="http://evil.example")
        request = urllib.request.Request(listed.url + "/v1/models", headers={"Origin": "http://app.example"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["access-control-allow-origin"] == "http://app.example"
    request = urllib.request.Request(server.url + "/v1/models", headers={"Origin": "http://app.example"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["access-control-allow-origin"] is None  # nothing listed: no CORS
    assert server.metric("voxcli_rejected_requests_total", '{reason="origin"}') >= 1


def test_a_wrong_key_is_refused_on_every_api(serve_engine, realtime_engine, clips):
    import openai
    from websockets.exceptions import InvalidStatus

    from voxcli.engine.connect import connect_engine
    from voxcli.errors import ServerError

    with served(serve_engine, ServeOptions(api_key=KEY)) as keyed:
        with pytest.raises(InvalidStatus) as refused:
            connect(keyed.ws_url + "/v1/realtime", additional_headers={"Authorization": "Bearer wrong"}, legacy=True)
        assert refused.value.response.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            with open(HELLO, "rb") as f:
                openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong").audio.transcriptions.create(
                    model=keyed.state.model_name, file=f)
        with pytest.raises(ServerError, match="refused the API key"):
            connect_engine(keyed.url, api_key="wrong")
        with pytest.raises(ServerError, match="wants an API key"):
            connect_engine(keyed.url)
        # The right key, by header and by the browser's subprotocol; /health stays open.
        remote = connect_engine(keyed.url, api_key=KEY, timeout_s=60)
        assert "".join(e.text for e in remote.transcribe(clips[2])).strip() == local_text(realtime_engine, clips[2])
        ws = connect(keyed.ws_url + "/v1/realtime?intent=transcription",
                     subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"], legacy=True)
        assert json.loads(ws.recv(10))["type"] == "session.created" and ws.subprotocol == "realtime"
        ws.close()
        assert keyed.health()["status"] == "ok"
        assert keyed.metric("voxcli_rejected_requests_total", '{reason="unauthorized"}') >= 3


# ---------------------------------------------------------------------------------------------
# SIGTERM, and the page in a real browser
# ---------------------------------------------------------------------------------------------


def test_sigterm_ends_open_sessions_with_done_and_exits(realtime_dir, realtime_engine, clips):
    from vllm_server import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "voxcli", "serve", "-m", str(realtime_dir), "--model-device", "cpu",
                             "--port", str(port)], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ws = connect(f"ws://127.0.0.1:{port}/v1/realtime", open_timeout=5, legacy=True)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.3)
        json.loads(ws.recv(10))
        ws.send(json.dumps({"type": "session.update"}))
        for i in range(0, len(clips[0]), 1280):
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm16(clips[0][i:i + 1280])}))
        until(ws, "transcription.delta")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, done = until(ws, "transcription.done", 20)
        assert done["text"] == local_text(realtime_engine, clips[0])  # all of it, flushed
        assert proc.wait(30) == 0
        assert time.monotonic() - t0 < 15
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.parametrize("protocol", ["openai", "vllm", "mistral", "deepgram"])
def test_the_live_page_shows_text_from_a_fake_microphone(server, tmp_path, protocol):
    """Debian's chromium, headless, its fake microphone playing a WAV, the page speaking each
    WebSocket dialect in turn (its select): text appears in #transcript."""
    pytest.importorskip("playwright", reason="pip install playwright (the test extra has it)")
    browser_path = _chromium()
    if browser_path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs chromium (apt install chromium; .ci/setup.sh --test does)")
        pytest.skip("needs chromium (apt install chromium)")
    import soundfile as sf
    from playwright.sync_api import sync_playwright

    wav = tmp_path / "mic.wav"
    sf.write(wav, resample(load_audio(HELLO), 16000, 48000), 48000, subtype="PCM_16")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.select_option("#protocol", protocol)
            page.click("#start")
            page.wait_for_function("document.getElementById('transcript').textContent.trim().length > 3",
                                   timeout=60000)
            if protocol in ("openai", "vllm"):  # the dialects whose deltas carry voxcli's latency
                assert "emission latency" in page.text_content("#status")
            assert not page.text_content("#status").startswith(("server:", "connection closed", "could not"))
        finally:
            browser.close()
    server.wait_idle()


def test_a_session_past_the_rows_allocated_at_load_is_refused_as_server_full(realtime_dir, clips):
    """The scheduler allows more sessions than the engine has rows: the one without a row gets
    ``server_full`` (the engine allocates no row after load), and the other goes on."""
    import queue

    from voxcli.engine.local import load_engine
    from voxcli.serve.scheduler import Failed, Scheduler, Token

    engine = load_engine(str(realtime_dir), device="cpu", compile="off", sessions=1)
    scheduler = Scheduler(engine, max_sessions=2)
    got: list[queue.SimpleQueue] = [queue.SimpleQueue(), queue.SimpleQueue()]
    try:
        streams = [scheduler.open(got[i].put) for i in range(2)]
        streams[0].push(clips[0][:16000])
        deadline = time.monotonic() + 30
        while got[0].empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        streams[1].push(clips[0][:16000])
        refused = got[1].get(timeout=30)
        assert isinstance(refused, Failed) and refused.code == "server_full", refused
        assert "all 1 streams of the loaded model are in use" in refused.message
        assert isinstance(got[0].get(timeout=30), Token)  # the first session goes on
    finally:
        scheduler.stop(5)


def test_metrics_show_the_graphs_a_compiled_engine_made(realtime_dir):
    """voxcli_graphs{what, when}: what torch.compile made at warm-up and after it, read from the
    engine when scraped (here a stand-in engine whose environment says what a compiled one does)."""
    from fakes import ScriptedLocal

    from voxcli.serve.app import ServerState

    class Compiled(ScriptedLocal):
        after = {"compiled": 0, "recorded": 0, "skipped": 0}

        def environment(self) -> dict:
            return {"graphs": {"compiled": 9, "recorded": 9, "skipped": 0}, "graphs_after_warmup": self.after}

    engine = Compiled()
    state = ServerState(engine, ServeOptions())
    try:
        text = state.metrics.render().decode()
        assert 'voxcli_graphs{what="recorded",when="warmup"} 9.0' in text
        assert 'voxcli_graphs{what="skipped",when="after_warmup"} 0.0' in text
        engine.after = {"compiled": 1, "recorded": 2, "skipped": 1}  # a slow step: scraped as it is now
        text = state.metrics.render().decode()
        assert 'voxcli_graphs{what="recorded",when="after_warmup"} 2.0' in text
    finally:
        state.scheduler.stop(5)
    plain = ServerState(ScriptedLocal(), ServeOptions())  # an eager engine: no such series
    try:
        assert "voxcli_graphs" not in plain.metrics.render().decode()
    finally:
        plain.scheduler.stop(5)
