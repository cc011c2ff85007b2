"""Mistral's realtime transcription protocol, at ``WS /v1/audio/transcriptions/realtime?model=...``:
what the ``mistralai`` SDK's ``client.audio.realtime`` speaks (``mistralai/extra/realtime``), so an
app written for Mistral's hosted Voxtral moves here by changing ``server_url`` alone.

| event in | what the session does | events out |
|---|---|---|
| (connect) | the session's settings: PCM s16le at 16 kHz | ``session.created`` ``{session: {request_id, model, audio_format, ...}}`` |
| ``session.update`` ``{session: {audio_format, context_bias, language, target_streaming_delay_ms}}`` | the rate (8-48 kHz, ``pcm_s16le`` only), ``context_bias`` as keyterms (before the first audio), the language | ``session.updated`` (the delay the server runs at) |
| ``input_audio.append`` ``{audio: base64}`` | resampled to 16 kHz, pushed | ``transcription.text.delta`` ``{text}`` per text token |
| ``input_audio.flush`` | the stream is flushed: its last words now, the session goes on | the deltas |
| ``input_audio.end`` | flushed, and the session's text is complete | ``transcription.done`` ``{model, text, usage, language}`` (the whole session's text) |

Errors are ``{"type": "error", "error": {"message", "code"}}`` with an HTTP-like number for the
code (voxcli's own code word in the message). The model named in the URL is not checked: the
server serves one, and an app keeps the hosted model's name.
"""

from __future__ import annotations

import json

from voxcli.choices import KEYTERM_BIAS
from voxcli.serve import codec
from voxcli.serve.codec import BadEvent, Settings, audio, keyterms
from voxcli.serve.scheduler import Done, Failed, Token

DIALECT = "mistral"
ENCODING = "pcm_s16le"
CODES = {"server_full": 503, "shutting_down": 503, "engine_error": 500, "server_error": 500}


class Codec(codec.Codec):
    """Mistral's events for one connection (:class:`voxcli.serve.realtime.Connection`): what comes
    in, done through the connection's session; what goes out."""

    dialect = DIALECT

    def __init__(self, connection) -> None:
        super().__init__(connection)
        self.settings = Settings(DIALECT, configured=True)  # PCM s16le at 16 kHz until session.update
        self.settings.extra.update(text=[], pending=0, fresh=False, ended=False)

    def opening(self) -> list[dict]:
        return [self.session("session.created")]

    def session(self, kind: str) -> dict:
        c = self.connection
        return {"type": kind, "session": session(self.settings, c.id, c.server.model_name,
                                                 c.server.engine.info.delay_ms)}

    async def handle(self, event: dict) -> None:
        kind, state, c = event["type"], self.settings.extra, self.connection
        if kind == "session.update":
            if c.stream is not None and "context_bias" in (event.get("session") or {}):
                raise BadEvent("context_bias must come before the first audio: the stream opens with it",
                               "session_already_started")
            update(self.settings, event)
            c.put(self.session("session.updated"))
        elif kind == "input_audio.append":
            await c.push(audio(event, kind))
            state["fresh"] = True
        elif kind in ("input_audio.flush", "input_audio.end"):
            if state["fresh"]:  # audio since the last flush: flush it (its last words now)
                state["fresh"] = False
                state["pending"] += 1
                c.end_utterance()
            if kind == "input_audio.end":
                state["ended"] = True
                for reply in done(self.settings, c.server.model_name):
                    c.put(reply)  # nothing was waiting: done now
        else:
            raise BadEvent(f"unknown event type {kind!r}", "unknown_event", event.get("event_id"))

    def outgoing(self, message: object) -> list[dict]:
        return outgoing(self.settings, self.connection.server.model_name, message)

    def error(self, message: str, code: str, event_id: str | None = None) -> dict:
        return error(message, code)


def session(settings, session_id: str, model: str, delay_ms: int | None) -> dict:
    keyterms = settings.options.get("keyterms")
    return {"request_id": session_id, "model": model,
            "audio_format": {"encoding": ENCODING, "sample_rate": settings.rate},
            "target_streaming_delay_ms": delay_ms, "language": settings.language,
            "context_bias": list(keyterms.phrases) if keyterms else None}


def update(settings, event: dict) -> None:
    """``session.update``'s fields (BadEvent for what cannot be taken)."""
    fields = event.get("session")
    if not isinstance(fields, dict):
        raise BadEvent("session.update needs a 'session' object", "invalid_event")
    fmt = fields.get("audio_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("encoding", ENCODING) != ENCODING:
            raise BadEvent(f"audio_format {fmt!r}: only {ENCODING} is spoken here", "unsupported_format")
        rate = fmt.get("sample_rate", settings.rate)
        if not isinstance(rate, int) or not 8000 <= rate <= 48000:
            raise BadEvent(f"sample_rate {rate!r}: 8000 to 48000 Hz", "unsupported_format")
        settings.rate = rate
    bias = fields.get("context_bias")
    if bias is not None:
        settings.options["keyterms"] = keyterms(bias, KEYTERM_BIAS)
    if isinstance(fields.get("language"), str):
        settings.language = fields["language"]


def is_mistral_form(form) -> bool:
    """A POST /v1/audio/transcriptions from Mistral's SDK: its form always says ``diarize``."""
    return "diarize" in form or "context_bias" in form


def rest_done(model: str, text: str, language, audio_s: float) -> dict:
    return {"model": model, "text": text, "language": language, "segments": [],
            "usage": {"prompt_audio_seconds": round(audio_s)}}


class RestEvents:
    """Mistral's server-sent events for an upload (``rest._events`` runs the stream): a delta per
    text token, ``transcription.done`` with the whole text, each with an ``event:`` line."""

    def __init__(self, model: str, language, audio_s: float) -> None:
        self.model, self.language, self.audio_s = model, language, audio_s

    def delta(self, text: str) -> dict:
        return {"type": "transcription.text.delta", "text": text}

    def done(self, text: str) -> dict:
        return {"type": "transcription.done", **rest_done(self.model, text, self.language, self.audio_s)}

    def failed(self, message: Failed) -> dict:
        return error(message.message, message.code)

    def sse(self, event: dict) -> str:
        return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


def error(message: str, code: str) -> dict:
    return {"type": "error", "error": {"message": f"{message} ({code})", "code": CODES.get(code, 400)}}


def outgoing(settings, model: str, message: object) -> list[dict]:
    state = settings.extra
    if isinstance(message, Token):
        return [{"type": "transcription.text.delta", "text": message.event.text}] if message.event.text else []
    if isinstance(message, Done):
        state["pending"] -= 1
        state["text"].append(message.text)
        state["audio_s"] = state.get("audio_s", 0.0) + message.audio_s
        return done(settings, model)
    if isinstance(message, Failed):
        return [error(message.message, message.code)]
    return []


def done(settings, model: str) -> list[dict]:
    """``transcription.done`` once the session has ended and every flush is back."""
    state = settings.extra
    if not state["ended"] or state["pending"] > 0:
        return []
    text = " ".join(t for t in state["text"] if t)
    return [{"type": "transcription.done", "model": model, "text": text, "language": settings.language,
             "usage": {"prompt_audio_seconds": round(state.get("audio_s", 0.0))}}]
