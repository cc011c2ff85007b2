"""Deepgram's live transcription protocol, at ``WS /v1/listen``: what ``deepgram-sdk``'s
``client.listen.v1.connect(...)`` speaks, and LiveKit's and Pipecat's Deepgram plugins with their
``base_url`` set here. The settings are the URL's query; audio comes as binary frames; JSON text
frames control the stream.

| in | what the session does | out |
|---|---|---|
| URL ``encoding`` (``linear16``, ``linear32``, ``mulaw``, ``alaw``), ``sample_rate``, ``channels`` | frames decoded, downmixed, resampled to 16 kHz | (another encoding, or none: an ``Error`` and close 1008 with the reason) |
| URL ``endpointing`` (ms, or ``false``) | the endpointer's silence (at least ``MIN_ENDPOINTING_MS``; ``false``: none) | |
| URL ``interim_results=true`` | | ``Results`` ``is_final: false`` at each text token: the segment so far |
| URL ``vad_events=true`` | | ``SpeechStarted`` ``{timestamp}`` when the endpointer hears speech |
| URL ``utterance_end_ms`` | | ``UtteranceEnd`` ``{last_word_end}`` once the model's audio is that far past the last word |
| URL ``keyterm`` (repeated) | the session's keyterms | |
| URL ``model``, ``language``, ``punctuate``, ``smart_format``, ``tag``, ... | taken (Voxtral writes punctuated text); others named in ``Metadata.warnings`` | ``Metadata`` at the start, when there are warnings |
| binary frame | pushed | |
| (end of speech) | the stream is flushed | ``Results`` ``is_final, speech_final: true`` |
| ``{"type": "Finalize"}`` | flushed now | ``Results`` ``is_final, from_finalize: true`` |
| ``{"type": "CloseStream"}`` (or an empty frame) | flushed, the stream ends | the final ``Results``, ``Metadata``, close 1000 |
| ``{"type": "KeepAlive"}`` | nothing | |

``Results`` carry ``start``/``duration`` in the stream's audio (segments are contiguous: a
segment is an utterance), and ``channel.alternatives[0]``: ``transcript`` and ``words`` (each
``word``, ``punctuated_word``, ``start``, ``end``: the spans of its tokens). ``confidence`` (of a
word: the product of its tokens' probabilities; of the transcript: their words' mean) is there
when the server computes probabilities (``serve --alternatives``); otherwise a word has none and
the transcript's is ``null``, not made up (the key stays: LiveKit's plugin reads it). Errors are
``{"type": "Error", "variant", "description"}``.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np

from voxcli.audio.pcm import from_pcm16
from voxcli.audio.vad import EndpointOptions
from voxcli.choices import KEYTERM_BIAS
from voxcli.serve import codec
from voxcli.serve.codec import BadEvent, Settings, keyterms
from voxcli.serve.scheduler import Done, Failed, Speech, Token

DIALECT = "deepgram"
ENCODINGS = {"linear16": 2, "linear32": 4, "mulaw": 1, "alaw": 1}  # bytes per sample
MIN_ENDPOINTING_MS = 100  # Silero's own shortest pause; each end of speech restarts the model's stream
TAKEN = {"encoding", "sample_rate", "channels", "interim_results", "endpointing", "utterance_end_ms", "vad_events",
         "keyterm", "model", "language", "punctuate", "smart_format", "version", "tag", "mip_opt_out", "extra"}
IGNORED = {"diarize", "diarize_model", "redact", "numerals", "profanity_filter", "search", "replace", "keywords",
           "detect_entities", "multichannel", "dictation", "callback", "callback_method", "filler_words",
           "language_hint", "no_delay", "alternatives", "detect_language"}


class Codec(codec.Codec):
    """Deepgram's events for one connection (:class:`voxcli.serve.realtime.Connection`)."""

    dialect = DIALECT

    def __init__(self, connection) -> None:
        super().__init__(connection)
        self.settings = Settings(DIALECT, configured=True, vad=EndpointOptions())
        self.encoding, self.channels, self.rest = "linear16", 1, b""
        self.interim = self.vad_events = False
        self.utterance_end_s: float | None = None
        self.warnings: list[dict] = []
        self.text = ""  # the open segment's
        self.words: list[dict] = []  # its words: text, start, end, p (the product of its tokens')
        self.in_word = False
        self.segment_start = 0.0  # where the open segment's audio begins (the ends of those before)
        self.last_word_end: float | None = None  # since the last UtteranceEnd
        self.speech_ended: set[int] = set()  # utterances the endpointer ended
        self.fresh = self.closing = False  # audio since the last flush; CloseStream came
        self.pending = 0  # flushes asked for (Finalize, CloseStream) and not yet done

    # -- in --

    def opening(self) -> list[dict]:
        self._configure(self.connection.ws.query_params)
        self.connection.open()
        return [self._metadata(0.0)] if self.warnings else []

    def _configure(self, query) -> None:
        s = self.settings
        encoding = query.get("encoding")
        if encoding not in ENCODINGS:
            raise BadEvent(f"encoding={encoding}: raw audio only, one of {', '.join(ENCODINGS)} (with sample_rate); "
                           f"containers are not read on this socket", "unsupported_format")
        self.encoding = encoding
        s.rate = _number(query, "sample_rate", 8000, 48000, None)
        self.channels = _number(query, "channels", 1, 8, 1)
        self.interim = _flag(query, "interim_results")
        self.vad_events = _flag(query, "vad_events")
        if query.get("utterance_end_ms") is not None:
            self.utterance_end_s = _number(query, "utterance_end_ms", 0, 60000, None) / 1000.0
        endpointing = query.get("endpointing")
        if endpointing is not None and endpointing.lower() == "false":
            s.vad = None
            if self.vad_events:
                self._warn("vad_events", "no SpeechStarted without endpointing: the endpointer hears speech here")
        elif endpointing is not None:
            ms = _number(query, "endpointing", 0, 60000, None)
            if ms < MIN_ENDPOINTING_MS:
                self._warn("endpointing", f"{ms} ms taken as {MIN_ENDPOINTING_MS} ms, the shortest pause ended here")
            s.vad = EndpointOptions(min_silence_ms=max(ms, MIN_ENDPOINTING_MS))
        terms = query.getlist("keyterm")
        if terms:
            s.options["keyterms"] = keyterms(terms, KEYTERM_BIAS)
        s.language = query.get("language")
        for name in dict.fromkeys(query.keys()):
            if name in IGNORED:
                self._warn(name, f"{name} is not supported by this server; ignored")
            elif name not in TAKEN:
                self._warn(name, f"unknown parameter {name}; ignored")

    def _warn(self, parameter: str, message: str) -> None:
        self.warnings.append({"parameter": parameter, "type": "unsupported_parameter", "message": message})

    async def binary(self, data: bytes) -> None:
        if not data:  # Deepgram's old way to close the stream
            return await self.handle({"type": "CloseStream"})
        if self.closing:
            raise BadEvent("audio after CloseStream", "stream_closed")
        raw = self.rest + data
        frame = ENCODINGS[self.encoding] * self.channels
        whole = len(raw) - len(raw) % frame
        self.rest = raw[whole:]  # a sample split across frames waits for its other bytes
        if whole:
            samples = _decode(raw[:whole], self.encoding, self.settings.rate)
            await self.connection.push(samples.reshape(-1, self.channels).mean(axis=1, dtype=np.float32))
            self.fresh = True

    async def handle(self, event: dict) -> None:
        kind, c = event["type"], self.connection
        if kind == "KeepAlive":
            return
        if kind == "Configure":
            c.put({"type": "ConfigureFailure", "request_id": c.id, "code": "CONFIGURE_KEYTERMS_NOT_SUPPORTED",
                   "description": "keyterms are set for the whole stream here: the keyterm query parameter"})
        elif kind in ("Finalize", "CloseStream"):
            if self.closing:
                return
            if self.fresh:
                self.fresh = False
                self.pending += 1
                c.end_utterance()
            if kind == "CloseStream":
                self.closing = True
                if not self.pending:
                    c.put(self._metadata(self.segment_start))
                    c.finish()
        else:
            raise BadEvent(f"unknown message type {kind!r}: KeepAlive, Finalize, CloseStream", "unknown_event")

    # -- out --

    def outgoing(self, message: object) -> list[dict]:
        if isinstance(message, Token):
            return self._token(message.event)
        if isinstance(message, Speech):
            if message.kind == "start":
                return [{"type": "SpeechStarted", "channel": [0, 1], "timestamp": message.at_ms / 1000.0}] \
                    if self.vad_events and self.settings.vad is not None else []
            self.speech_ended.add(message.utterance)
            return []
        if isinstance(message, Done):
            return self._final(message)
        if isinstance(message, Failed):
            return [self.error(message.message, message.code)]
        return []

    def _token(self, e) -> list[dict]:
        out = []
        if e.text and not e.special:
            self.text += e.text
            start, end = e.audio_start_s or 0.0, e.audio_end_s or 0.0
            for ch in e.text:  # words split at whitespace, wherever it falls in a token
                if ch.isspace():
                    self.in_word = False
                    continue
                if not self.in_word:
                    self.words.append({"text": "", "start": start, "end": end, "p": 1.0, "tokens": 0})
                    self.in_word = True
                word = self.words[-1]
                word["text"] += ch
                word["end"] = max(word["end"], end)
                if word["tokens"] < e.index + 1:  # each token's probability once per word
                    word["tokens"] = e.index + 1
                    word["p"] = None if e.p is None or word["p"] is None else word["p"] * e.p
                self.last_word_end = word["end"]
            if self.interim:
                out.append(self._results(max(end, self.segment_start), final=False))
        elif self.utterance_end_s is not None and self.last_word_end is not None and e.audio_end_s is not None \
                and e.audio_end_s - self.last_word_end >= self.utterance_end_s:
            out.append({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(self.last_word_end, 3)})
            self.last_word_end = None
        return out

    def _final(self, done: Done) -> list[dict]:
        end = self.segment_start + done.audio_s
        speech_final = done.utterance in self.speech_ended
        self.speech_ended.discard(done.utterance)
        from_finalize = not speech_final and self.pending > 0
        if from_finalize:
            self.pending -= 1
        out = [self._results(end, final=True, speech_final=speech_final, from_finalize=from_finalize)]
        self.text, self.words, self.in_word, self.segment_start = "", [], False, end
        if (self.closing and not self.pending) or self.connection.server.draining:  # the stream's end (or SIGTERM's)
            out.append(self._metadata(end))
            self.connection.finish()
        return out

    def _results(self, end: float, *, final: bool, speech_final: bool = False, from_finalize: bool = False) -> dict:
        c = self.connection
        words = [_word(w) for w in self.words]
        known = words and all("confidence" in w for w in words)  # null: not computed (LiveKit wants the key)
        alternative = {"transcript": self.text.strip(), "words": words,
                       "confidence": sum(w["confidence"] for w in words) / len(words) if known else None}
        return {"type": "Results", "channel_index": [0, 1], "start": round(self.segment_start, 3),
                "duration": round(max(end - self.segment_start, 0.0), 3), "is_final": final,
                "speech_final": speech_final, "from_finalize": from_finalize,
                "channel": {"alternatives": [alternative]},
                "metadata": {"request_id": c.id, "model_uuid": c.id,
                             "model_info": {"name": c.server.model_name, "version": "voxcli", "arch": "voxtral"}}}

    def _metadata(self, duration_s: float) -> dict:
        c = self.connection
        out = {"type": "Metadata", "transaction_key": "deprecated", "request_id": c.id, "sha256": "",
               "created": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "duration": round(duration_s, 3), "channels": self.channels, "models": [c.server.model_name]}
        if self.warnings:
            out["warnings"] = self.warnings
        return out

    def error(self, message: str, code: str, event_id: str | None = None) -> dict:
        return {"type": "Error", "variant": code, "description": message, "message": message}


def _word(word: dict) -> dict:
    text = word["text"]
    out = {"word": text.strip(".,!?;:\"'()[]«»¿¡…").lower() or text, "punctuated_word": text,
           "start": round(word["start"], 3), "end": round(word["end"], 3)}
    if word["p"] is not None:
        out["confidence"] = word["p"]
    return out


def _decode(raw: bytes, encoding: str, rate: int) -> np.ndarray:
    if encoding == "linear16":
        return from_pcm16(raw)
    if encoding == "linear32":  # Deepgram's linear32: 32-bit float PCM
        samples = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        return np.nan_to_num(np.clip(samples, -1.0, 1.0))
    import soundfile as sf  # G.711 (mu-law, A-law): libsndfile decodes it

    samples, _ = sf.read(io.BytesIO(raw), format="RAW", subtype="ULAW" if encoding == "mulaw" else "ALAW",
                         samplerate=rate, channels=1, dtype="float32")
    return samples


def _number(query, name: str, low: int, high: int, default: int | None) -> int:
    raw = query.get(name)
    if raw is None:
        if default is None:
            raise BadEvent(f"{name} is needed with raw audio (e.g. {name}=16000)", "unsupported_format")
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise BadEvent(f"{name}={raw}: a whole number from {low} to {high}", "invalid_parameter")
    return value


def _flag(query, name: str) -> bool:
    raw = (query.get(name) or "false").lower()
    if raw not in ("true", "false"):
        raise BadEvent(f"{name}={query.get(name)}: true or false", "invalid_parameter")
    return raw == "true"
