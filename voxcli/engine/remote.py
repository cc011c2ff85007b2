"""A vLLM server as voxcli's engine: same contract and events as the local engines, no torch.

- Voxtral Realtime through the ``/v1/realtime`` WebSocket (``websockets``' sync client): audio is
  appended as it is captured (16 kHz PCM16, base64), deltas become TokenEvents the moment they
  arrive, a final commit ends the utterance. :class:`RemoteRealtimeSession` is one connection;
  callers get a :class:`voxcli.engine.reconnect.ReconnectingSession` around them, with the local
  session's shape, which outlives a server that goes away (``reconnect_s``).
- Voxtral 3B/24B through ``/v1/audio/transcriptions`` with ``stream=true``: ``httpx2`` (httpx's
  continuation, the client huggingface_hub already brings) posts the multipart form and reads the
  server-sent events line by line.

How the server is reached (TLS, the key, bounds on every network step: a server that stops
reading cannot block ``push``) is :mod:`voxcli.engine.server`; how an engine is made from a URL
(model, kind, delay) is :mod:`voxcli.engine.connect`.

Events carry ``t_emitted`` = when the delta arrived here. What a server cannot tell is absent,
not invented: no token ids (``-1``) and no per-token audio spans (the offline endpoint's events
carry their segment's span, which the client knows).
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
from collections.abc import Iterator
from functools import partial

import httpx2
import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from voxcli.delays import ALLOWED_DELAYS_MS
from voxcli.engine.contract import DEFAULT, EngineInfo
from voxcli.engine.reconnect import Link, ReconnectingSession
from voxcli.engine.segments import transcribe_segments
from voxcli.engine.server import Server, http_error, pcm16_base64, wav_bytes
from voxcli.errors import ConfigError, ServerError, StreamEnded, first_line, setting
from voxcli.events import TokenEvent
from voxcli.units import SAMPLE_RATE, TOKEN_SAMPLES

APPEND_SAMPLES = TOKEN_SAMPLES  # 80 ms per append message: what one Realtime token covers
# A server whose delay cannot be learned: replay from the longest delay back, so nothing is lost (a
# replay may repeat up to 1.9 s of text at a shorter one).
UNKNOWN_DELAY_MS = max(ALLOWED_DELAYS_MS)


class RemoteEngine:
    def __init__(self, server: Server, model: str, kind: str, load_s: float, max_new_tokens: int,
                 reconnect_s: float = 0.0) -> None:
        self.server = server
        self.model_name = model
        self.kind = kind
        self.max_new_tokens = max_new_tokens
        self.reconnect_s = reconnect_s
        self.link = Link()  # an outage, as its sessions know it together
        # A server says neither token ids, nor which audio a delta covers (an offline request's
        # events carry their segment's span, which this side knows), nor how long a step took.
        self.info = EngineInfo(model=model, kind=kind, device=f"vLLM server {server.url}", dtype="server",
                               n_params=0, load_s=load_s, here=False, token_ids=False, audio_spans=kind == "offline",
                               step_times=False, scores=False)

    def warmup(self) -> float:
        return 0.0

    def critical_path_ms(self, audio: np.ndarray) -> None:
        return None  # the model's own path runs on the server, out of this side's sight

    def environment(self) -> dict:
        """The server; and where it is ``voxcli serve``, its scheduler's cycle counters so far
        (``server_cycles``: a load test's split of the server's time, from two readings)."""
        cycles = self.server.cycle_counters()
        return {"server": self.server.url, **({"server_cycles": cycles} if cycles else {})}


class RemoteRealtimeEngine(RemoteEngine):
    """Voxtral Realtime served by vLLM; one WebSocket connection per session. The connection that
    told the kind apart (``server_kind: auto``) is kept for the first session, rather than closed
    and opened again at once."""

    spare: ClientConnection | None = None
    keyterms = None  # every session's (voxcli serve only: info.scores)

    def session(self, *, reconnect_s: float | None = None, keyterms=DEFAULT) -> ReconnectingSession:
        """A stream that outlives the server for ``reconnect_s`` (default: the engine's): see
        :mod:`voxcli.engine.reconnect`. ``keyterms`` (default: the engine's) go to the server
        with the session's setup: only ``voxcli serve`` takes them (``info.scores``)."""
        keyterms = self.keyterms if keyterms is DEFAULT else keyterms
        if keyterms and not self.info.scores:
            raise no_keyterms(self.server.url)
        # A replay starts the server's delay back from where it last answered: the audio it had
        # heard but whose text had not come yet.
        delay_ms = self.info.delay_ms or UNKNOWN_DELAY_MS
        return ReconnectingSession(partial(self._connection, keyterms), name=f"the vLLM server at {self.server.url}",
                                   link=self.link, reconnect_s=self.reconnect_s if reconnect_s is None else reconnect_s,
                                   overlap_samples=delay_ms * SAMPLE_RATE // 1000)

    def _connection(self, keyterms=None) -> "RemoteRealtimeSession":
        ws, self.spare = self.spare, None
        return RemoteRealtimeSession(self, ws, keyterms=keyterms)

    def transcribe(self, audio: np.ndarray, *, language: str | None = None, max_new_tokens: int | None = None,
                   segments=None, keyterms=DEFAULT) -> Iterator[TokenEvent]:
        """All of ``audio`` as fast as the server takes it, then the final commit. A stream the
        server ends early (end of sequence) goes on in a new connection from where it had answered,
        less the model's delay, marked by an empty event carrying ``restart_at_s``. A file is not
        reconnected: a lost server fails it at once."""
        audio = np.asarray(audio, dtype=np.float32)
        session = self.session(reconnect_s=0, keyterms=keyterms)
        try:
            for i in range(0, len(audio), APPEND_SAMPLES):
                session.push(audio[i:i + APPEND_SAMPLES])
                yield from session.steps()
            yield from session.finish()
        finally:
            session.close()


class RemoteRealtimeSession:
    """One connection, driven by :class:`voxcli.engine.reconnect.ReconnectingSession`'s sender
    thread: push(samples) sends them at once; steps() yields the deltas that have arrived;
    commit() sends the final commit and pending() yields what has arrived since, without
    waiting, until ``finished`` (``transcription.done``, or nothing for ``timeout_s``).

    ``answered_samples``: how far the server is known to have listened: the text it sent reaches
    ``text_samples`` (a delta per 80 ms token, blanks included; ``voxcli serve`` says each
    token's span, and where a stream it restarted at end of sequence went back to), and it has
    heard the delay past that, but never more than was sent. A reconnect replays from
    ``answered_samples`` less the delay: from where the text stopped. (The audio sent when the
    last delta came runs ahead of that on a loaded server: a replay from there skipped a token.)"""

    def __init__(self, engine: RemoteRealtimeEngine, ws: ClientConnection | None = None, *, keyterms=None) -> None:
        self.engine = engine
        self.pushed_samples = 0
        self.answered_samples = 0
        self.text_samples = 0  # the audio the deltas so far have transcribed
        self._deltas = 0
        self._ahead = (engine.info.delay_ms or UNKNOWN_DELAY_MS) * SAMPLE_RATE // 1000  # heard past the text
        self.n_tokens = 0
        self._inbox: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._error: str | None = None
        self._committed = False  # the final commit was sent
        self._ended_early = False  # the server said transcription.done before that
        self._closed = False
        self.finished = False  # after commit(): everything has arrived
        self._timeout_s = engine.server.timeout_s
        self._deadline = 0.0
        server = engine.server
        self._ws = ws if ws is not None else server.websocket("/v1/realtime")
        try:
            first = json.loads(self._ws.recv(self._timeout_s))
            if first.get("type") != "session.created":
                raise ServerError(f"vLLM realtime: expected session.created, got {first.get('type')!r}",
                                  url=server.url)
            setup = {"type": "session.update", "model": engine.model_name}
            if keyterms:  # voxcli serve's session option (vLLM is never sent it: see session())
                setup["voxcli"] = {"keyterms": list(keyterms.phrases), "keyterm_bias": keyterms.bias}
            self._ws.send(json.dumps(setup))
            self._ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # starts generation
        except (ConnectionClosed, OSError, TimeoutError, ValueError) as exc:
            self._ws.close()
            raise server.unreachable(exc, "open a realtime session on") from None
        self._reader = threading.Thread(target=self._read, name="voxcli-ws-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for raw in self._ws:  # ends when the connection closes
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "transcription.delta":
                    self._answered(message.get("voxcli"))
                    self._inbox.put((time.perf_counter(), message.get("delta", ""), message.get("voxcli")))
                elif kind == "transcription.done":
                    # Before the final commit: the model said end of sequence with audio still
                    # coming (vLLM ends the request there). The caller opens a new session.
                    self._ended_early = not self._committed
                    self._done.set()
                    return
                elif kind == "error":
                    self._error = f"vLLM server error: {message.get('error')} ({message.get('code')})"
                    self._done.set()
                    return
            if not self._closed:
                self._error = f"the vLLM server at {self.engine.server.url} closed the realtime connection"
        except (ConnectionClosed, OSError, ValueError) as exc:
            if not self._closed:
                self._error = f"the vLLM server at {self.engine.server.url} dropped the realtime connection " \
                              f"({first_line(exc)})"
        self._done.set()

    def _answered(self, fields) -> None:
        """A delta came (the reader's thread): how far the text, and the listening, now reach."""
        self._deltas += 1
        span = fields.get("restart_at_s", fields.get("end_s")) if isinstance(fields, dict) else None
        text = round(span * SAMPLE_RATE) if isinstance(span, (int, float)) else self._deltas * TOKEN_SAMPLES
        self.text_samples = max(self.text_samples, text)
        self.answered_samples = min(self.pushed_samples, self.text_samples + self._ahead)

    def push(self, samples: np.ndarray) -> None:
        for i in range(0, len(samples), APPEND_SAMPLES):
            piece = samples[i:i + APPEND_SAMPLES]
            self._send({"type": "input_audio_buffer.append", "audio": pcm16_base64(piece)})
            self.pushed_samples += len(piece)

    def _send(self, message: dict) -> None:
        self._raise_if_failed()
        try:
            self._ws.send(json.dumps(message))
        except (ConnectionClosed, OSError) as exc:
            # websockets reports a write that timed out as a closed connection caused by it.
            if isinstance(exc, TimeoutError) or isinstance(exc.__cause__, TimeoutError):
                self._error = (f"the vLLM server at {self.engine.server.url} stopped reading: a write waited "
                               f"{self._timeout_s:.0f} s")
            else:
                self._error = f"the vLLM server at {self.engine.server.url} dropped the realtime connection " \
                              f"({first_line(exc)})"
            self._abort()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise ServerError(self._error, url=self.engine.server.url)
        if self._ended_early and self._inbox.empty():
            raise StreamEnded(f"the vLLM server at {self.engine.server.url} ended the stream (end of sequence) "
                              f"before the audio did", url=self.engine.server.url)

    def steps(self) -> Iterator[TokenEvent]:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            yield self._event(*item)
        self._raise_if_failed()

    def _event(self, t: float, delta: str, extra: dict | None = None) -> TokenEvent:
        """``extra``: what ``voxcli serve`` adds to a delta (its token id, whether it is a blank,
        its step, the keyterm it completed, ``p`` and alternatives if it computes them); vLLM
        sends none of it. Its audio span is left out: it counts from this connection's first
        sample, which a reconnect's replay moves."""
        event = TokenEvent(index=self.n_tokens, token_id=-1, text=delta, t_emitted=t, special=not delta)
        if isinstance(extra, dict):
            alternatives = extra.get("alternatives")
            event = dataclasses.replace(event, token_id=int(extra.get("token_id", -1)),
                                        special=bool(extra.get("special", not delta)),
                                        step_ms=extra.get("step_ms"), batch=extra.get("batch"), p=extra.get("p"),
                                        alternatives=tuple(alternatives) if isinstance(alternatives, list) else None,
                                        keyterm=extra.get("keyterm"), keyterm_biased=bool(extra.get("keyterm_biased")))
        self.n_tokens += 1
        return event

    def commit(self) -> None:
        """End this stream without waiting for the server's last deltas (see pending())."""
        self._send({"type": "input_audio_buffer.commit", "final": True})
        self._committed = True
        self._deadline = time.monotonic() + self._timeout_s

    def pending(self) -> Iterator[TokenEvent]:
        """After commit(): the deltas that have arrived, at once. Sets ``finished`` when the
        server is done (or has said nothing for the timeout, which raises ServerError)."""
        if self.finished:
            return
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            self._deadline = time.monotonic() + self._timeout_s  # the server is still talking
            yield self._event(*item)
        if self._done.is_set() and self._inbox.empty():
            self.finished = True
            self.close()
            self._raise_if_failed()
        elif time.monotonic() > self._deadline:
            self.finished = True
            self._error = (f"the vLLM server at {self.engine.server.url} sent nothing for "
                           f"{self._timeout_s:.0f} s after the final commit")
            self._abort()
            self._raise_if_failed()

    def _abort(self) -> None:
        """Drop the connection without a closing handshake: the server is not listening."""
        self._closed = True
        self._ws.socket.close()
        self._done.set()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ws.close()


class RemoteOfflineEngine(RemoteEngine):
    """Voxtral 3B/24B served by vLLM: one streamed transcription request per speech segment."""

    MAX_SEGMENT_S = 30.0

    def transcribe(self, audio: np.ndarray, *, language: str | None = None, max_new_tokens: int | None = None,
                   segments: list[tuple[int, int]] | None = None, keyterms=DEFAULT) -> Iterator[TokenEvent]:
        if keyterms is not DEFAULT and keyterms:  # the offline endpoint gives no scores to steer
            raise no_keyterms(self.server.url)
        audio = np.asarray(audio, dtype=np.float32)
        limit = max_new_tokens or self.max_new_tokens

        def clip_events(clip: np.ndarray) -> Iterator[TokenEvent]:
            for i, (t, text) in enumerate(self._request(clip, language, limit)):
                yield TokenEvent(index=i, token_id=-1, text=text, t_emitted=t, special=not text)

        yield from transcribe_segments(audio, segments, clip_events, max_segment_s=self.MAX_SEGMENT_S)

    def _request(self, clip: np.ndarray, language: str | None, max_new_tokens: int) -> Iterator[tuple[float, str]]:
        server = self.server
        fields = {"model": self.model_name, "stream": "true", "max_completion_tokens": str(max_new_tokens)}
        if language:
            fields["language"] = language
        files = {"file": ("audio.wav", wav_bytes(clip), "audio/wav")}
        try:
            with server.http.stream("POST", "/v1/audio/transcriptions", data=fields, files=files) as response:
                if response.status_code != 200:
                    response.read()
                    raise server.refused(response.status_code, http_error(server.url, response))
                for line in response.iter_lines():
                    t = time.perf_counter()
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, other SSE fields
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        raise ServerError(f"vLLM server error: {chunk['error']}", url=server.url)
                    for choice in chunk.get("choices", []):
                        text = (choice.get("delta") or {}).get("content")
                        if text is not None:
                            yield t, text
            raise ServerError(f"the vLLM server at {server.url} closed the stream before [DONE]", url=server.url)
        except httpx2.ReadTimeout:
            raise ServerError(f"the vLLM server at {server.url} sent nothing for {server.timeout_s:.0f} s",
                              url=server.url) from None
        except httpx2.WriteTimeout:
            raise ServerError(f"the vLLM server at {server.url} stopped reading: a write waited "
                              f"{server.timeout_s:.0f} s", url=server.url) from None
        except httpx2.HTTPError as exc:
            raise server.unreachable(exc) from None


def no_keyterms(url: str) -> ConfigError:
    return ConfigError(f"keyterms ({setting('transcription.keyterms')}) need a local model, or voxcli serve with a "
                       f"Realtime model: the server at {url} gives its tokens without scores", url=url)
