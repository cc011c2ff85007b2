"""Connecting to a server as an engine: is it up, which model does it serve, of which kind (a
server for an offline model refuses the realtime WebSocket), at which delay, and does it take
keyterms (``voxcli serve`` does)."""

from __future__ import annotations

import json
import time

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from voxcli.choices import DEFAULT_MODEL, SERVER_KINDS
from voxcli.delays import is_allowed_delay_ms
from voxcli.engine.remote import RemoteEngine, RemoteOfflineEngine, RemoteRealtimeEngine, no_keyterms
from voxcli.engine.server import TIMEOUT_S, Server, pcm16_base64
from voxcli.errors import ServerError, setting
from voxcli.units import SAMPLE_RATE, TOKEN_SAMPLES

PROBE_S = 10.0  # the most connect_engine waits for vLLM's answer that tells its delay
LEFT_PAD_TOKENS = 32  # the real checkpoints' streaming_n_left_pad_tokens: a Realtime prompt is BOS + these + the delay's


def connect_engine(url: str, model: str | None = None, *, kind: str = "auto", max_new_tokens: int = 500,
                   api_key: str | None = None, timeout_s: float = TIMEOUT_S, reconnect_s: float = 0.0,
                   keyterms=None) -> RemoteEngine:
    """Check the server is up and serves ``model`` (default: the only model it serves), tell the
    model kind (a server for an offline model refuses the realtime WebSocket), and return an engine.
    ``keyterms`` (every session's) need ``voxcli serve`` with a Realtime model: its ``/v1/models``
    says ``owned_by: voxcli``, and its sessions take them; anything else is a ConfigError."""
    t0 = time.perf_counter()
    if kind not in SERVER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SERVER_KINDS)}, got {kind!r}")
    server = Server(url, api_key=api_key, timeout_s=timeout_s)
    listed = server.get_json("/v1/models").get("data", [])
    served = [m["id"] for m in listed]
    if not served:
        raise ServerError(f"the vLLM server at {server.url} serves no model", url=server.url)
    if model not in served:
        if model is not None and not (model == DEFAULT_MODEL and len(served) == 1):
            raise ServerError(f"the vLLM server at {server.url} does not serve {model!r}; it serves: "
                              f"{', '.join(served)} (pass one as {setting('model.name')})", url=server.url)
        if len(served) > 1:
            raise ServerError(f"the vLLM server at {server.url} serves several models ({', '.join(served)}); "
                              f"pick one as {setting('model.name')}", url=server.url)
        model = served[0]  # the default name was not the user's choice: take what is served
    spare = None
    if kind == "auto":
        kind, spare = _probe_kind(server)
    cls = RemoteRealtimeEngine if kind == "realtime" else RemoteOfflineEngine
    engine = cls(server, model, kind, time.perf_counter() - t0, max_new_tokens, reconnect_s)
    engine.info.scores = kind == "realtime" and any(m.get("id") == model and m.get("owned_by") == "voxcli"
                                                    for m in listed)
    if keyterms and not engine.info.scores:
        if spare is not None:
            spare.close()
        raise no_keyterms(server.url)
    engine.keyterms = keyterms
    if kind == "realtime":
        engine.info.delay_ms, spare = _served_delay_ms(server, model, listed, spare)
    if spare is not None:
        engine.spare = spare
    return engine


def _served_delay_ms(server: Server, model: str, listed: list[dict],
                     spare: ClientConnection | None) -> tuple[int | None, ClientConnection | None]:
    """The served Realtime model's delay, and the connection left for the first session: ``voxcli
    serve`` says the delay in ``/v1/models``; vLLM does not, but its answer to a request says how
    long the first prompt was (``usage.prompt_tokens``: BOS, the left pad and the delay's tokens),
    asked on ``spare`` (then closed: one connection at a time) or a connection of its own. None if
    neither tells (a replay then reaches back the longest delay, UNKNOWN_DELAY_MS)."""
    entry = next((m for m in listed if m.get("id") == model), {})
    said = (entry.get("voxcli") or {}).get("delay_ms")
    if is_allowed_delay_ms(said):
        return said, spare
    usage = _probe_usage(server, model, spare)
    prompt = usage.get("prompt_tokens") if usage else None
    if not isinstance(prompt, int):
        return None, None
    delay_ms = (prompt - 1 - LEFT_PAD_TOKENS) * TOKEN_SAMPLES * 1000 // SAMPLE_RATE
    return (delay_ms if is_allowed_delay_ms(delay_ms) else None), None


def _probe_usage(server: Server, model: str, ws: ClientConnection | None = None) -> dict | None:
    """A request of 80 ms of silence (on ``ws``, or a connection of its own; closed after): the
    ``usage`` of its ``transcription.done``. None if the server answers otherwise, or not within
    PROBE_S: a slow answer costs the start that long at most."""
    if ws is None:
        try:
            ws = server.websocket("/v1/realtime")
        except ServerError:
            return None
    wait_s = min(server.timeout_s, PROBE_S)
    deadline = time.monotonic() + wait_s
    try:
        ws.recv(wait_s)  # session.created
        for message in ({"type": "session.update", "model": model}, {"type": "input_audio_buffer.commit"},
                        {"type": "input_audio_buffer.append", "audio": pcm16_base64(np.zeros(TOKEN_SAMPLES, np.float32))},
                        {"type": "input_audio_buffer.commit", "final": True}):
            ws.send(json.dumps(message))
        while (left := deadline - time.monotonic()) > 0:
            message = json.loads(ws.recv(left))
            if message.get("type") in ("transcription.done", "error"):
                return message.get("usage") if message.get("type") == "transcription.done" else None
    except (ConnectionClosed, OSError, TimeoutError, ValueError):
        return None
    finally:
        ws.close()
    return None


def _probe_kind(server: Server) -> tuple[str, ClientConnection | None]:
    """A server for an offline model has no /v1/realtime: its handshake is refused (403/404).
    A realtime server's connection is returned open, for the first session."""
    try:
        ws = server.websocket("/v1/realtime")
    except ServerError as exc:
        if exc.data.get("status") in (403, 404):
            return "offline", None
        raise
    return "realtime", ws
