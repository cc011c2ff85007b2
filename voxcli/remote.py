"""A vLLM server as voxcli's engine: same interface and events as voxcli.engine, no torch.

- Voxtral Realtime through the ``/v1/realtime`` WebSocket: audio is appended as it is captured
  (16 kHz PCM16, base64), deltas become TokenEvents the moment they arrive, a final commit ends
  the utterance. :class:`RemoteRealtimeSession` has the local session's push/steps/finish shape,
  so ``listen``, ``transcribe file`` and ``bench`` run unchanged.
- Voxtral 3B/24B through ``/v1/audio/transcriptions`` with ``stream=true`` (SSE).

Events carry ``t_emitted`` = when the delta arrived here. What a server cannot tell is absent,
not invented: no token ids (``-1``) and no per-token audio spans (the offline endpoint's events
carry their segment's span, which the client knows).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import queue
import threading
import time
import wave
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np

from voxcli.config import DEFAULT_MODEL
from voxcli.engine import EngineInfo, transcribe_segments
from voxcli.errors import ServerError, setting
from voxcli.events import TokenEvent
from voxcli.netproto import WebSocket, WebSocketClosed, multipart, sse_data

SAMPLE_RATE = 16000
KINDS = ("auto", "realtime", "offline")
TIMEOUT_S = 30.0
APPEND_SAMPLES = 1280  # 80 ms per append message: what one Realtime token covers


class _Server:
    def __init__(self, url: str, timeout_s: float = TIMEOUT_S) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "ws") or not parts.hostname:
            raise ServerError(f"{setting('model.server')} {url!r}: expected http://HOST:PORT (TLS is not supported)",
                              url=url)
        self.url = f"http://{parts.hostname}:{parts.port or 80}"
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout_s = timeout_s

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)

    def get_json(self, path: str) -> dict:
        conn = self.connection()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
        except OSError as exc:
            raise ServerError(f"cannot reach the vLLM server at {self.url} ({exc}); is it running?") from None
        finally:
            conn.close()
        if response.status != 200:
            raise ServerError(f"{self.url}{path} answered HTTP {response.status}")
        return json.loads(body)

    def websocket(self, path: str) -> WebSocket:
        return WebSocket(f"ws://{self.host}:{self.port}{path}", timeout_s=self.timeout_s)


def pcm16_base64(samples: np.ndarray) -> str:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    return base64.b64encode(pcm.tobytes()).decode()


def _wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes())
    return buffer.getvalue()


class RemoteEngine:
    remote = True

    def __init__(self, server: _Server, model: str, kind: str, load_s: float, max_new_tokens: int) -> None:
        self.server = server
        self.model_name = model
        self.kind = kind
        self.max_new_tokens = max_new_tokens
        self.info = EngineInfo(model=model, kind=kind, device=f"vLLM server {server.url}", dtype="server",
                               n_params=0, load_s=load_s)

    def warmup(self) -> float:
        return 0.0


class RemoteRealtimeEngine(RemoteEngine):
    """Voxtral Realtime served by vLLM; one WebSocket connection per session."""

    def session(self, *, max_new_tokens: int | None = None) -> "RemoteRealtimeSession":
        return RemoteRealtimeSession(self)

    def stream(self, blocks, *, max_new_tokens: int | None = None) -> Iterator[TokenEvent]:
        session = self.session()
        try:
            for block in blocks:
                session.push(np.asarray(block, dtype=np.float32))
                yield from session.steps()
            yield from session.finish()
        finally:
            session.close()

    def transcribe(self, audio: np.ndarray, *, language: str | None = None, max_new_tokens: int | None = None,
                   segments=None) -> Iterator[TokenEvent]:
        """All of ``audio`` as fast as the server takes it, then the final commit."""
        audio = np.asarray(audio, dtype=np.float32)
        blocks = (audio[i:i + APPEND_SAMPLES] for i in range(0, len(audio), APPEND_SAMPLES))
        yield from self.stream(blocks)


class RemoteRealtimeSession:
    """push(samples) sends them at once; steps() yields the deltas that have arrived; finish()
    sends the final commit and waits (bounded) for ``transcription.done``. Where waiting would
    hold up capture (an end of speech mid-session), commit() sends the final commit and
    pending() yields what has arrived since, without waiting, until ``finished``."""

    finish_waits = True

    def __init__(self, engine: RemoteRealtimeEngine) -> None:
        self.engine = engine
        self.pushed_samples = 0
        self.n_tokens = 0
        self._inbox: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._error: str | None = None
        self._closed = False
        self.finished = False  # after commit(): everything has arrived
        self._timeout_s = TIMEOUT_S
        self._deadline = 0.0
        try:
            self._ws = engine.server.websocket("/v1/realtime")
            first = json.loads(self._ws.recv(TIMEOUT_S))
            if first.get("type") != "session.created":
                raise ServerError(f"vLLM realtime: expected session.created, got {first.get('type')!r}")
            self._ws.send_json({"type": "session.update", "model": engine.model_name})
            self._ws.send_json({"type": "input_audio_buffer.commit"})  # starts generation
        except (OSError, ConnectionError) as exc:
            raise ServerError(f"cannot open a realtime session on the vLLM server at {engine.server.url} ({exc})") from None
        self._reader = threading.Thread(target=self._read, name="voxcli-ws-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while not self._closed:
                try:
                    message = json.loads(self._ws.recv(None))
                except TimeoutError:
                    continue
                kind = message.get("type")
                if kind == "transcription.delta":
                    self._inbox.put((time.perf_counter(), message.get("delta", "")))
                elif kind == "transcription.done":
                    self._done.set()
                    return
                elif kind == "error":
                    self._error = f"vLLM server error: {message.get('error')} ({message.get('code')})"
                    self._done.set()
                    return
        except (WebSocketClosed, OSError, ConnectionError, ValueError) as exc:
            if not self._closed:
                self._error = f"the vLLM server dropped the realtime connection ({exc})"
            self._done.set()

    def push(self, samples: np.ndarray) -> None:
        for i in range(0, len(samples), APPEND_SAMPLES):
            piece = samples[i:i + APPEND_SAMPLES]
            self._send({"type": "input_audio_buffer.append", "audio": pcm16_base64(piece)})
            self.pushed_samples += len(piece)

    def _send(self, message: dict) -> None:
        self._raise_if_failed()
        try:
            self._ws.send_json(message)
        except OSError as exc:
            self._error = f"the vLLM server dropped the realtime connection ({exc})"
            self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise ServerError(self._error)

    def steps(self) -> Iterator[TokenEvent]:
        while True:
            try:
                t, delta = self._inbox.get_nowait()
            except queue.Empty:
                break
            yield self._event(t, delta)
        self._raise_if_failed()

    def _event(self, t: float, delta: str) -> TokenEvent:
        event = TokenEvent(index=self.n_tokens, token_id=-1, text=delta, t_emitted=t, special=not delta)
        self.n_tokens += 1
        return event

    def finish(self, timeout_s: float = TIMEOUT_S) -> Iterator[TokenEvent]:
        self._send({"type": "input_audio_buffer.commit", "final": True})
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                t, delta = self._inbox.get(timeout=0.05)
                yield self._event(t, delta)
                deadline = time.monotonic() + timeout_s  # the server is still talking
                continue
            except queue.Empty:
                pass
            if self._done.is_set() and self._inbox.empty():
                break
            if time.monotonic() > deadline:
                self._error = f"the vLLM server sent nothing for {timeout_s:.0f} s after the final commit"
                break
        self.close()
        self._raise_if_failed()

    def commit(self, timeout_s: float = TIMEOUT_S) -> None:
        """End this stream without waiting for the server's last deltas (see pending())."""
        self._send({"type": "input_audio_buffer.commit", "final": True})
        self._timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s

    def pending(self) -> Iterator[TokenEvent]:
        """After commit(): the deltas that have arrived, at once. Sets ``finished`` when the
        server is done (or has said nothing for the timeout, which raises ServerError)."""
        if self.finished:
            return
        while True:
            try:
                t, delta = self._inbox.get_nowait()
            except queue.Empty:
                break
            self._deadline = time.monotonic() + self._timeout_s  # the server is still talking
            yield self._event(t, delta)
        if self._done.is_set() and self._inbox.empty():
            self.finished = True
            self.close()
            self._raise_if_failed()
        elif time.monotonic() > self._deadline:
            self.finished = True
            self._error = f"the vLLM server sent nothing for {self._timeout_s:.0f} s after the final commit"
            self.close()
            self._raise_if_failed()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ws.close()


class RemoteOfflineEngine(RemoteEngine):
    """Voxtral 3B/24B served by vLLM: one streamed transcription request per speech segment."""

    MAX_SEGMENT_S = 30.0

    def transcribe(self, audio: np.ndarray, *, language: str | None = None, max_new_tokens: int | None = None,
                   segments: list[tuple[int, int]] | None = None) -> Iterator[TokenEvent]:
        audio = np.asarray(audio, dtype=np.float32)
        limit = max_new_tokens or self.max_new_tokens

        def clip_events(clip: np.ndarray) -> Iterator[TokenEvent]:
            for i, (t, text) in enumerate(self._request(clip, language, limit)):
                yield TokenEvent(index=i, token_id=-1, text=text, t_emitted=t, special=not text)

        yield from transcribe_segments(audio, segments, clip_events, max_segment_s=self.MAX_SEGMENT_S)

    def _request(self, clip: np.ndarray, language: str | None, max_new_tokens: int) -> Iterator[tuple[float, str]]:
        fields = {"model": self.model_name, "stream": "true", "max_completion_tokens": str(max_new_tokens)}
        if language:
            fields["language"] = language
        body, content_type = multipart(fields, {"file": ("audio.wav", _wav_bytes(clip), "audio/wav")})
        conn = self.server.connection()
        try:
            conn.request("POST", "/v1/audio/transcriptions", body=body, headers={"Content-Type": content_type})
            response = conn.getresponse()
            if response.status != 200:
                raise ServerError(_http_error(self.server.url, response))
            for t, payload in sse_data(response):
                if payload == "[DONE]":
                    return
                chunk = json.loads(payload)
                if "error" in chunk:
                    raise ServerError(f"vLLM server error: {chunk['error']}")
                for choice in chunk.get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text is not None:
                        yield t, text
            raise ServerError(f"the vLLM server at {self.server.url} closed the stream before [DONE]")
        except (OSError, http.client.HTTPException) as exc:
            raise ServerError(f"lost the vLLM server at {self.server.url} ({exc})") from None
        finally:
            conn.close()


def _http_error(url: str, response) -> str:
    try:
        message = json.loads(response.read())["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.reason
    return f"vLLM server {url} answered HTTP {response.status}: {message}"


def connect_engine(url: str, model: str | None = None, *, kind: str = "auto",
                   max_new_tokens: int = 500) -> RemoteEngine:
    """Check the server is up and serves ``model`` (default: the only model it serves), tell the
    model kind (a server for an offline model refuses the realtime WebSocket), and return an engine."""
    t0 = time.perf_counter()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    server = _Server(url)
    served = [m["id"] for m in server.get_json("/v1/models").get("data", [])]
    if not served:
        raise ServerError(f"the vLLM server at {server.url} serves no model")
    if model not in served:
        if model is not None and not (model == DEFAULT_MODEL and len(served) == 1):
            raise ServerError(f"the vLLM server at {server.url} does not serve {model!r}; it serves: "
                              f"{', '.join(served)} (pass one as {setting('model.name')})", url=server.url)
        if len(served) > 1:
            raise ServerError(f"the vLLM server at {server.url} serves several models ({', '.join(served)}); "
                              f"pick one as {setting('model.name')}", url=server.url)
        model = served[0]  # the default name was not the user's choice: take what is served
    if kind == "auto":
        kind = _probe_kind(server)
    cls = RemoteRealtimeEngine if kind == "realtime" else RemoteOfflineEngine
    return cls(server, model, kind, time.perf_counter() - t0, max_new_tokens)


def _probe_kind(server: _Server) -> str:
    try:
        ws = server.websocket("/v1/realtime")
    except ConnectionError as exc:
        if "403" in str(exc) or "404" in str(exc):
            return "offline"
        raise ServerError(f"cannot reach the vLLM server at {server.url} ({exc})") from None
    except OSError as exc:
        raise ServerError(f"cannot reach the vLLM server at {server.url} ({exc})") from None
    ws.close()
    return "realtime"
