"""The two realtime WebSocket dialects spoken at ``/v1/realtime``, as JSON in and out.

- **vLLM's** (what ``voxcli --server`` and vLLM's own clients speak): ``session.update`` with
  ``model``, ``input_audio_buffer.append`` (16 kHz PCM16, base64), ``input_audio_buffer.commit``
  (``final: true`` ends the stream); the server sends ``session.created``,
  ``transcription.delta`` / ``transcription.done`` and ``error`` (``error``: a string, ``code``).
- **OpenAI's Realtime transcription** (the ``openai`` package's realtime client, apps written for
  it): chosen by ``?intent=transcription`` or ``?model=`` in the URL, or a ``session.update`` that
  carries a ``session`` object. PCM16 at the format's rate (24 kHz unless it says otherwise),
  server VAD (``input_audio_buffer.speech_started`` / ``speech_stopped`` / ``committed``) unless
  ``turn_detection`` is null, and per utterance (an "item")
  ``conversation.item.input_audio_transcription.delta`` / ``.completed``.

voxcli's own additions ride along under one key, ``voxcli``, on each delta (token id, audio span,
step time, streams in the forward, emission latency; ``p`` and ``alternatives`` when the server
computes them, the ``keyterm`` a token completed); clients that do not know them ignore them. A
``session.update`` may carry ``voxcli: {"keyterms": [...], "keyterm_bias": B}`` (beside ``model``,
or inside OpenAI's ``session`` object): that session's phrases to favour, instead of the server's.
Set them before the first audio: the stream opens with them.
vLLM's dialect sends a delta for every token, blanks included (``delta: ""``), so a client can time
each token; OpenAI's sends text only.
"""

from __future__ import annotations

import itertools

from voxcli.audio.vad import EndpointOptions
from voxcli.choices import KEYTERM_BIAS
from voxcli.serve import codec
from voxcli.serve.codec import BadEvent, Settings, audio, keyterms
from voxcli.serve.scheduler import Done, Failed, Speech, Token

VLLM, OPENAI = "vllm", "openai"
OPENAI_RATE = 24000  # OpenAI's audio/pcm
_event_ids = itertools.count(1)


class Codec(codec.Codec):
    """vLLM's or OpenAI's events for one connection at ``/v1/realtime`` (OpenAI's when the URL or
    the first ``session.update`` says so)."""

    def __init__(self, connection, dialect: str) -> None:
        super().__init__(connection)
        self.settings = initial(dialect)

    @property
    def dialect(self) -> str:
        return self.settings.dialect

    def opening(self) -> list[dict]:
        c = self.connection
        return [created(self.settings, c.id, c.server.model_name)]

    async def handle(self, event: dict) -> None:
        kind, c = event["type"], self.connection
        if kind in ("session.update", "transcription_session.update"):
            update(self.settings, event)
            model = self.settings.model
            if model and model not in c.server.model_names:
                raise BadEvent(f"model {model!r} is not served here; this server serves "
                               f"{c.server.model_name!r}", "model_not_found")
            c.open()
            reply = updated(self.settings, c.id, c.server.model_name)
            if reply:
                c.put(reply)
        elif kind == "input_audio_buffer.append":
            if not self.settings.configured:
                raise BadEvent("audio before session.update: send session.update (with the model) first",
                               "session_not_configured", event.get("event_id"))
            await c.push(audio(event))
        elif kind == "input_audio_buffer.commit":
            if self.dialect == VLLM and not event.get("final"):
                return  # vLLM's first commit starts generation; here audio is transcribed as it comes
            if not self.settings.configured:
                raise BadEvent("commit before session.update", "session_not_configured", event.get("event_id"))
            c.end_utterance()
        else:
            raise BadEvent(f"unknown event type {kind!r}", "unknown_event", event.get("event_id"))

    def outgoing(self, message: object) -> list[dict]:
        return outgoing(self.settings, self.connection.id, message)

    def error(self, message: str, code: str, event_id: str | None = None) -> dict:
        return error(self.settings, message, code, event_id)


def initial(dialect: str) -> Settings:
    if dialect == OPENAI:
        return Settings(OPENAI, configured=True, rate=OPENAI_RATE, vad=EndpointOptions())
    return Settings(VLLM, configured=False)


def update(settings: Settings, event: dict) -> Settings:
    """``session.update`` (either dialect) or ``transcription_session.update`` (OpenAI's beta)."""
    session = event.get("session")
    if isinstance(session, dict):
        settings.dialect = OPENAI
        _openai_session(settings, session)
        _voxcli_options(settings, session.get("voxcli"))
    elif event.get("type") == "transcription_session.update":
        raise BadEvent("transcription_session.update needs a 'session' object", "invalid_event", event.get("event_id"))
    else:
        model = event.get("model")
        if model is not None and not isinstance(model, str):
            raise BadEvent("session.update: 'model' must be a string", "invalid_event")
        settings.model = model
    _voxcli_options(settings, event.get("voxcli"))
    settings.configured = True
    return settings


def _voxcli_options(settings: Settings, options) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        raise BadEvent("'voxcli' must be an object, e.g. {\"keyterms\": [\"Voxtral\"]}", "invalid_event")
    if "keyterms" in options:
        settings.options["keyterms"] = keyterms(options["keyterms"], options.get("keyterm_bias", KEYTERM_BIAS))


def _openai_session(settings: Settings, session: dict) -> None:
    audio_in = ((session.get("audio") or {}).get("input") or {}) if "audio" in session else session
    fmt = audio_in.get("format", audio_in.get("input_audio_format"))
    if isinstance(fmt, dict):
        if fmt.get("type", "audio/pcm") != "audio/pcm":
            raise BadEvent(f"audio format {fmt.get('type')!r}: only audio/pcm (PCM16) is spoken here",
                           "unsupported_format", None)
        settings.rate = int(fmt.get("rate", OPENAI_RATE))
    elif fmt not in (None, "pcm16"):
        raise BadEvent(f"audio format {fmt!r}: only pcm16 is spoken here", "unsupported_format")
    if not 8000 <= settings.rate <= 48000:
        raise BadEvent(f"rate {settings.rate}: 8000 to 48000 Hz", "unsupported_format")
    transcription = audio_in.get("transcription", audio_in.get("input_audio_transcription")) or {}
    settings.model = transcription.get("model", settings.model)
    settings.language = transcription.get("language", settings.language)
    if "turn_detection" in audio_in:
        turn = audio_in["turn_detection"]
        if turn is None:
            settings.vad = None
        else:
            silence = int(turn.get("silence_duration_ms") or EndpointOptions.min_silence_ms)
            threshold = float(turn.get("threshold") or EndpointOptions.threshold)
            settings.vad = EndpointOptions(min_silence_ms=max(silence, 32), threshold=min(max(threshold, 0.36), 0.99))


def created(settings: Settings, session_id: str, model: str) -> dict:
    session = {"id": session_id, "object": "realtime.session", "model": model}
    if settings.dialect == OPENAI:
        session.update(type="transcription", audio={"input": _openai_input(settings)})
    return {"type": "session.created", "event_id": _event_id(), "id": session_id, "session": session,
            "voxcli": {"token_fields": True, "keyterms": True}}


def updated(settings: Settings, session_id: str, model: str) -> dict | None:
    if settings.dialect != OPENAI:
        return None  # vLLM answers session.update with nothing
    return {"type": "session.updated", "event_id": _event_id(),
            "session": {"id": session_id, "type": "transcription", "object": "realtime.session",
                        "model": model, "audio": {"input": _openai_input(settings)}}}


def _openai_input(settings: Settings) -> dict:
    vad = settings.vad
    turn = None if vad is None else {"type": "server_vad", "threshold": vad.threshold,
                                     "silence_duration_ms": vad.min_silence_ms, "prefix_padding_ms": 0}
    return {"format": {"type": "audio/pcm", "rate": settings.rate}, "turn_detection": turn,
            "transcription": {"model": settings.model, "language": settings.language}}


def error(settings: Settings, message: str, code: str, event_id: str | None = None) -> dict:
    if settings.dialect == OPENAI:
        kind = "server_error" if code in ("engine_error", "server_error") else "invalid_request_error"
        return {"type": "error", "event_id": _event_id(),
                "error": {"type": kind, "code": code, "message": message, "param": None, "event_id": event_id}}
    return {"type": "error", "error": message, "code": code}


def committed(settings: Settings, session_id: str, utterance: int) -> dict | None:
    if settings.dialect != OPENAI:
        return None
    return {"type": "input_audio_buffer.committed", "event_id": _event_id(),
            "item_id": item_id(session_id, utterance),
            "previous_item_id": item_id(session_id, utterance - 1) if utterance else None}


def outgoing(settings: Settings, session_id: str, message: object) -> list[dict]:
    """What the scheduler said, as this dialect's events."""
    openai = settings.dialect == OPENAI
    if isinstance(message, Token):
        if openai and not message.event.text:
            return []
        event = {"type": "conversation.item.input_audio_transcription.delta" if openai else "transcription.delta",
                 "delta": message.event.text, "voxcli": _token_fields(message)}
        if openai:
            event.update(event_id=_event_id(), item_id=item_id(session_id, message.utterance), content_index=0)
        return [event]
    if isinstance(message, Speech):
        if not openai and settings.vad is None:
            return []
        item = item_id(session_id, message.utterance)
        if message.kind == "start":
            return [{"type": "input_audio_buffer.speech_started", "event_id": _event_id(),
                     "audio_start_ms": message.at_ms, "item_id": item}]
        stopped = {"type": "input_audio_buffer.speech_stopped", "event_id": _event_id(),
                   "audio_end_ms": message.at_ms, "item_id": item}
        return [stopped, *filter(None, [committed(settings, session_id, message.utterance)])]
    if isinstance(message, Done):
        if openai:
            return [{"type": "conversation.item.input_audio_transcription.completed", "event_id": _event_id(),
                     "item_id": item_id(session_id, message.utterance), "content_index": 0,
                     "transcript": message.text,
                     "usage": {"type": "duration", "seconds": round(message.audio_s, 3)}}]
        return [{"type": "transcription.done", "text": message.text,
                 "usage": {"type": "duration", "seconds": round(message.audio_s, 3)}}]
    if isinstance(message, Failed):
        return [error(settings, message.message, message.code)]
    raise TypeError(f"unknown message {message!r}")


def _token_fields(token: Token) -> dict:
    e = token.event
    fields = {"index": e.index, "token_id": e.token_id, "special": e.special, "start_s": e.audio_start_s,
              "end_s": e.audio_end_s, "step_ms": _r(e.step_ms), "batch": e.batch,
              "latency_ms": _r(token.latency_ms), "utterance": token.utterance}
    if e.restart_at_s is not None:
        fields["restart_at_s"] = e.restart_at_s
    if e.p is not None:
        fields["p"] = e.p
    if e.alternatives is not None:
        fields["alternatives"] = list(e.alternatives)
    if e.keyterm is not None:
        fields.update(keyterm=e.keyterm, keyterm_biased=e.keyterm_biased)
    return fields


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def item_id(session_id: str, utterance: int) -> str:
    return f"item_{session_id}_{utterance}"


def _event_id() -> str:
    return f"event_{next(_event_ids)}"
