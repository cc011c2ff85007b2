"""Mistral's realtime transcription protocol, at ``WS /v1/audio/transcriptions/realtime?model=...``:
what the ``mistralai`` SDK's ``client.audio.realtime`` speaks (``mistralai/extra/realtime``), so an
app written for Mistral's hosted Voxtral moves here by changing ``server_url`` alone.

| event in | what the session does | events out |
|---|---|---|
| (connect) | the session's settings: PCM s16le at 16 kHz | ``session.created`` ``{session: {request_id, model, audio_format, ...}}`` |
| ``session.update`` ``{session: {audio_format, context_bias, language, target_streaming_delay_ms, turn_detection}}`` | the rate (8-48 kHz, ``pcm_s16le`` only); before the first audio: ``context_bias`` as keyterms, the session's own delay (the same weights at that delay, its row stepped in the same forwards as the others'), ``turn_detection`` as the endpointer (start/end thresholds, ``min_silence_ms``) | ``session.updated`` (the session as it runs) |
| ``input_audio.append`` ``{audio: base64}`` | resampled to 16 kHz, pushed | ``transcription.text.delta`` ``{text}`` per text token |
| (turn detection: speech starts, ends) | an end of speech flushes the stream | ``turn.start`` ``{time_s}``; ``turn.end`` ``{time_s, end_reason}``, then ``transcription.segment`` ``{text, start, end}`` |
| ``input_audio.flush`` | the stream is flushed: its last words now, the session goes on | the deltas |
| ``input_audio.end`` (or SIGTERM) | flushed, and the session's text is complete | ``transcription.done`` ``{model, text, usage, language}`` (the whole session's text) |

Errors are ``{"type": "error", "error": {"message", "code"}}`` with an HTTP-like number for the
code (voxcli's own code word in the message). The model named in the URL is not checked: the
server serves one, and an app keeps the hosted model's name.
"""

from __future__ import annotations

import json

from voxcli.audio.vad import EndpointOptions
from voxcli.choices import KEYTERM_BIAS
from voxcli.delays import ALLOWED_TEXT, is_allowed_delay_ms
from voxcli.serve import codec
from voxcli.serve.codec import BadEvent, Settings, audio, keyterms
from voxcli.serve.scheduler import Done, Failed, Speech, Token

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
        self.settings.extra.update(text=[], pending=0, fresh=False, ended=False, turns=set())

    def opening(self) -> list[dict]:
        return [self.session("session.created")]

    def session(self, kind: str) -> dict:
        c = self.connection
        return {"type": kind, "session": session(self.settings, c.id, c.server.model_name,
                                                 self.settings.delay_ms or c.server.engine.info.delay_ms)}

    async def handle(self, event: dict) -> None:
        kind, state, c = event["type"], self.settings.extra, self.connection
        if kind == "session.update":
            late = {"context_bias", "target_streaming_delay_ms", "turn_detection"} & set(event.get("session") or {})
            if c.stream is not None and late:
                raise BadEvent(f"{', '.join(sorted(late))} must come before the first audio: the stream opens "
                               f"with it", "session_already_started")
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
        if isinstance(message, Done) and self.connection.server.draining:  # SIGTERM ended the session
            self.settings.extra.update(ended=True, pending=max(self.settings.extra["pending"], 1))
        return outgoing(self.settings, self.connection.server.model_name, message)

    def error(self, message: str, code: str, event_id: str | None = None) -> dict:
        return error(message, code)


def session(settings, session_id: str, model: str, delay_ms: int | None) -> dict:
    keyterms, vad = settings.options.get("keyterms"), settings.vad
    turn = None if vad is None else {"start_threshold": vad.threshold, "end_threshold": vad.neg_threshold,
                                     "min_silence_ms": vad.min_silence_ms}
    return {"request_id": session_id, "model": model,
            "audio_format": {"encoding": ENCODING, "sample_rate": settings.rate},
            "target_streaming_delay_ms": delay_ms, "language": settings.language,
            "context_bias": list(keyterms.phrases) if keyterms else None, "turn_detection": turn}


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
    delay = fields.get("target_streaming_delay_ms")
    if delay is not None:
        if not is_allowed_delay_ms(delay):
            raise BadEvent(f"target_streaming_delay_ms {delay!r}: {ALLOWED_TEXT}", "invalid_delay")
        settings.delay_ms = delay
    if "turn_detection" in fields:
        settings.vad = _turns(fields["turn_detection"])
    if isinstance(fields.get("language"), str):
        settings.language = fields["language"]


def _turns(config) -> EndpointOptions | None:
    """Mistral's ``turn_detection`` as the endpointer's options (null: none). Its end timeout and
    eager end have no counterpart: the endpointer ends a turn at ``min_silence_ms`` of silence."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise BadEvent("turn_detection: an object (start_threshold, end_threshold, min_silence_ms) or null",
                       "invalid_event")
    try:
        start = float(config.get("start_threshold") or 0.5)
        end = min(float(config.get("end_threshold") or 0.33), start)
        silence = int(config.get("min_silence_ms") or 500)
    except (TypeError, ValueError):
        raise BadEvent("turn_detection: numbers for its thresholds and min_silence_ms", "invalid_event") from None
    if not 0 < end <= start < 1 or silence <= 0:
        raise BadEvent("turn_detection: 0 < end_threshold <= start_threshold < 1, min_silence_ms > 0", "invalid_event")
    return EndpointOptions(threshold=start, neg_threshold=end, min_silence_ms=max(silence, 32))


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
    if isinstance(message, Speech):  # turn detection: the endpointer's start and end of speech
        if message.kind == "start":
            return [{"type": "turn.start", "time_s": message.at_ms / 1000.0}]
        state["turns"].add(message.utterance)
        return [{"type": "turn.end", "time_s": message.at_ms / 1000.0, "end_reason": "threshold"}]
    if isinstance(message, Done):
        start = state.get("audio_s", 0.0)
        state["text"].append(message.text)
        state["audio_s"] = start + message.audio_s
        if message.utterance in state["turns"]:  # a turn the endpointer ended: its segment
            state["turns"].discard(message.utterance)
            return [{"type": "transcription.segment", "text": message.text, "start": round(start, 3),
                     "end": round(state["audio_s"], 3)}]
        state["pending"] -= 1
        return done(settings, model)
    if isinstance(message, Failed):
        return [error(message.message, message.code)]
    return []


def done(settings, model: str) -> list[dict]:
    """``transcription.done`` once the session has ended and every flush is back."""
    state = settings.extra
    if not state["ended"] or state["pending"] > 0 or state.get("done"):
        return []
    state["done"] = True
    text = " ".join(t for t in state["text"] if t)
    return [{"type": "transcription.done", "model": model, "text": text, "language": settings.language,
             "usage": {"prompt_audio_seconds": round(state.get("audio_s", 0.0))}}]
