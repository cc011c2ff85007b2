"""What a stream driver hands on (tokens, speech starts and ends, finished utterances, the audio
heard), and its settings: the vocabulary listen, bench and serve share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voxcli.audio.vad import EndpointOptions
from voxcli.config import Config, ListenConfig
from voxcli.events import StreamRole, TokenEvent


@dataclass(frozen=True)
class LiveToken:
    """A token on its way to the screen (or a client), with the two moments its latency counts from.

    ``t_ready``: when the audio block that let the model take this step was captured (the chunk
    became available). ``t_audio``: when the last sample of the audio the token covers was
    captured. Emission latency = time drawn - ``t_audio``. Both are ``None`` when the engine cannot
    tell (``info.audio_spans``, ``info.step_times``: a server says neither).
    """

    event: TokenEvent
    t_ready: float | None
    t_audio: float | None
    audio_available_s: float  # audio handed to the engine when the token came out
    flushed: bool = False  # made from the right padding pushed at end of speech
    utterance: int = 0  # which stretch of speech (0-based; a new one after each end)
    stream: StreamRole = StreamRole.ONLY


@dataclass(frozen=True)
class Endpoint:
    """An end of speech, once its stream is flushed, as positions in the session's audio: where the
    speech ended, and how much audio had been heard when the endpointer knew it."""

    speech_end_s: float
    decided_s: float
    utterance: int

    def to_dict(self) -> dict:
        return {"type": "endpoint", "speech_end_s": round(self.speech_end_s, 4),
                "decided_s": round(self.decided_s, 4), "utterance": self.utterance}


@dataclass(frozen=True)
class Speech:
    """The endpointer's decision, the moment it is made: speech started or ended at ``at_ms``."""

    kind: str  # "start" or "end"
    at_ms: int  # in the session's audio
    utterance: int


@dataclass(frozen=True)
class UtteranceDone:
    """An utterance's stream is flushed (an end of speech, or the caller's end): its last token is out."""

    utterance: int
    audio_s: float  # how much audio the utterance had


@dataclass(frozen=True)
class AudioIn:
    """16 kHz samples exactly as handed to the engine (for the WAV), with their level."""

    samples: np.ndarray
    level_db: float
    backlog_blocks: int


_LISTEN = ListenConfig()  # listen's defaults, defined once in the configuration


@dataclass
class LiveOptions:
    """A driver's settings. ``from_config`` is the one way listen and bench make them, so both
    run the same session; the defaults are the configuration's."""

    flush_after_ms: int = _LISTEN.flush_after_ms  # this much non-speech ends speech: flush / cut there (0: never)
    vad: str = _LISTEN.vad  # the endpointer's detector: silero, or the energy fallback
    silence_db: float = _LISTEN.silence_db  # energy only: a window below this level is silence
    blank_run_s: float = _LISTEN.blank_run_s  # speech with no text for this long restarts the stream (0: never)
    language: str | None = None  # offline models (and an offline final pass): the language hint
    max_utterance_s: float = 30.0  # offline models: longest utterance transcribed at once
    preroll_s: float = 0.2  # offline models: audio kept before a speech start, so onsets are whole
    tail_s: float = 0.1  # offline models: audio kept after a speech end
    endpoint_options: EndpointOptions | None = None  # a server session's own endpointer (its turn detection)

    def endpoint(self) -> EndpointOptions | None:
        """The endpointer these settings ask for (None: none, only the caller ends an utterance)."""
        if self.endpoint_options is not None:
            return self.endpoint_options
        if not self.flush_after_ms:
            return None
        return EndpointOptions(detector=self.vad, min_silence_ms=self.flush_after_ms, silence_db=self.silence_db)

    @classmethod
    def from_config(cls, cfg: Config) -> LiveOptions:
        language = cfg.transcription.language
        return cls(flush_after_ms=cfg.listen.flush_after_ms, vad=cfg.listen.vad, silence_db=cfg.listen.silence_db,
                   blank_run_s=cfg.listen.blank_run_s, language=None if language == "auto" else language)
