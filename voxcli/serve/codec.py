"""What a realtime dialect is: a thin codec over one session, and what every dialect shares.

Every WebSocket dialect voxcli serve speaks (vLLM's and OpenAI's in :mod:`voxcli.serve.wire`,
Mistral's in :mod:`voxcli.serve.mistral`, Deepgram's in :mod:`voxcli.serve.deepgram`) is a
:class:`Codec` driven by one :class:`voxcli.serve.realtime.Connection`. The connection owns the
socket and the session: reading, writing on a bounded queue, backpressure, dropping a slow or
silent client, closing. The codec owns the words: what each client event means for the session
(the connection's ``open()``, ``push(samples)``, ``end_utterance()``, ``put(event)``,
``finish()``) and how each thing the session says (the scheduler's ``Token``, ``Speech``,
``Done``, ``Failed``) is written in its dialect. Wyoming (:mod:`voxcli.serve.wyoming`) is TCP, not
a WebSocket: its handler drives the same scheduler stream with the same steps. The tables, one per
dialect: docs/design.md, "The server's dialects".
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

import numpy as np

from voxcli.audio.pcm import from_pcm16
from voxcli.audio.vad import EndpointOptions
from voxcli.engine.keyterms import Keyterms
from voxcli.units import SAMPLE_RATE

MAX_APPEND_BYTES = 4 * 1024 * 1024  # one append's decoded audio: about 2 min at 16 kHz
MAX_KEYTERMS, MAX_KEYTERM_CHARS = 1000, 200  # a session's keyterms: how many, how long each


class BadEvent(Exception):
    """A client event that cannot be acted on: answered with an ``error`` event, the connection stays."""

    def __init__(self, message: str, code: str, event_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.event_id = event_id


@dataclass
class Settings:
    """What a session was set up with."""

    dialect: str
    configured: bool  # vLLM's needs a session.update first; OpenAI's has defaults
    model: str | None = None
    rate: int = SAMPLE_RATE
    vad: EndpointOptions | None = None
    language: str | None = None
    delay_ms: int | None = None  # the session's own delay (None: the server's)
    extra: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # the engine session's own (keyterms)


def parse(raw: str) -> dict:
    try:
        event = json.loads(raw)
    except ValueError as exc:
        raise BadEvent(f"not JSON: {exc}", "invalid_json") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise BadEvent("an event is a JSON object with a string 'type'", "invalid_event")
    return event


def keyterms(phrases, bias) -> Keyterms | None:
    """A client's keyterms, checked (BadEvent says what is wrong); an empty list: none."""
    if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
        raise BadEvent("keyterms: a list of strings", "invalid_keyterms")
    if len(phrases) > MAX_KEYTERMS or any(len(p) > MAX_KEYTERM_CHARS for p in phrases):
        raise BadEvent(f"keyterms: at most {MAX_KEYTERMS}, each at most {MAX_KEYTERM_CHARS} characters",
                       "invalid_keyterms")
    if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not 0 <= bias <= 20:
        raise BadEvent("keyterm_bias: a number from 0 to 20", "invalid_keyterms")
    return Keyterms.of(phrases, float(bias))


def audio(event: dict, kind: str = "input_audio_buffer.append") -> np.ndarray:
    """An append's samples (base64 PCM16 in ``audio``) as float32, at the session's rate (the
    caller resamples)."""
    data = event.get("audio")
    if not isinstance(data, str):
        raise BadEvent(f"{kind} needs 'audio': base64 PCM16", "invalid_audio", event.get("event_id"))
    if len(data) > MAX_APPEND_BYTES * 4 // 3 + 4:
        raise BadEvent(f"one append of {len(data) * 3 // 4} bytes: at most {MAX_APPEND_BYTES} per message; "
                       f"send the audio in pieces", "audio_too_large", event.get("event_id"))
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadEvent("'audio' is not valid base64", "invalid_audio", event.get("event_id")) from None
    if len(raw) % 2:
        raise BadEvent(f"'audio' has {len(raw)} bytes: PCM16 has 2 per sample", "invalid_audio", event.get("event_id"))
    return from_pcm16(raw)


class Codec:
    """One dialect's events for one connection. Subclasses set ``dialect`` and ``settings``."""

    dialect: str
    settings: Settings

    def __init__(self, connection) -> None:
        self.connection = connection  # voxcli.serve.realtime.Connection

    def opening(self) -> list[dict]:
        """The events sent when the socket opens; BadEvent closes it with that reason (a URL the
        server cannot take)."""
        return []

    async def handle(self, event: dict) -> None:
        """A JSON text event (parsed; BadEvent: answered with an error, the connection stays)."""
        raise NotImplementedError

    async def binary(self, data: bytes) -> None:
        """A binary frame (a dialect that streams raw audio takes it)."""
        raise BadEvent("send JSON events as text frames", "invalid_event")

    def outgoing(self, message: object) -> list[dict]:
        """What the session said (the scheduler's Token, Speech, Done, Failed) in this dialect."""
        raise NotImplementedError

    def error(self, message: str, code: str, event_id: str | None = None) -> dict:
        raise NotImplementedError
