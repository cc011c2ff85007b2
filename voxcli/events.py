"""What the engine emits, and the arithmetic on latency samples. Nothing heavier than numpy is
imported here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

import numpy as np

from voxcli.units import TOKEN_MS, TOKEN_SAMPLES

STEP_BUDGET_MS = float(TOKEN_MS)  # one Realtime step per 80 ms chunk keeps up with real time


class StreamRole(StrEnum):
    """Which stream of a session a token comes from: the only one, or two-pass's provisional
    (first, short delay) or final one. A ``str``: rows and JSON carry its value."""

    ONLY = ""
    PROVISIONAL = "provisional"
    FINAL = "final"


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token, emitted the moment its id leaves the model.

    ``text`` is the text this token adds to the transcript (incremental detokenization: it may be
    empty while a multi-byte character is incomplete, and carries the leading space of a word).
    ``t_emitted`` is ``time.perf_counter()`` at the moment the id was known on the host.
    ``audio_start_s``/``audio_end_s`` are the span of input audio the token belongs to, when the
    model knows it (the Realtime model: 80 ms per token, shifted by its delay; the offline model:
    the span of the segment it was generated for), else ``None``. ``special`` marks control
    tokens (e.g. the Realtime model's streaming padding): they add no text and do not count as the
    first token. ``step_ms`` is how long the model step that made this token took (features,
    forward, reading the id back); ``None`` for the first token of a stream or segment (its step
    is the prefill, timed as ``critical_path_ms`` by ``voxcli bench``) and where the engine
    cannot tell (a server). ``restart_at_s``: this token is the end of sequence of a Realtime
    stream that had real audio left, and a new stream starts at that position of the audio (see
    :class:`voxcli.engine.RealtimeSession`); ``None`` for every other token. ``batch``: how many
    streams the forward that made it stepped together (the static step: two-pass, concurrent
    sessions); ``None`` where not known.

    Asked for (``transcription.alternatives``, ``output.low_confidence``): ``p``, the probability
    of the emitted token under the scores it was decoded from, and ``alternatives``, the top K as
    ``{token_id, text, logprob}``, best first (the emitted token first). With keyterms
    (:mod:`voxcli.engine.keyterms`): ``keyterm``, the phrase this token completed, and
    ``keyterm_biased``, whether the bias changed one of its tokens. Left out of ``to_dict`` when
    not set.
    """

    index: int
    token_id: int
    text: str
    t_emitted: float
    audio_start_s: float | None = None
    audio_end_s: float | None = None
    segment: int = 0
    special: bool = False
    step_ms: float | None = None
    restart_at_s: float | None = None
    batch: int | None = None
    p: float | None = None
    alternatives: tuple[dict, ...] | None = None
    keyterm: str | None = None
    keyterm_biased: bool = False

    def to_dict(self) -> dict:
        row = asdict(self)
        for key in _UNSET_LEFT_OUT:
            if row[key] is None or row[key] is False:
                del row[key]
        if row.get("alternatives") is not None:
            row["alternatives"] = list(row["alternatives"])
        return row


_UNSET_LEFT_OUT = ("p", "alternatives", "keyterm", "keyterm_biased")


@dataclass(frozen=True, slots=True)
class Restart:
    """A Realtime stream ended and a new one began at ``at_s`` of the audio: the model said end of
    sequence with audio left (``eos``), or it gave no text over a long stretch of speech
    (``blank_run``, in ``listen``)."""

    reason: str
    at_s: float

    def to_dict(self) -> dict:
        return {"type": "restart", "reason": self.reason, "at_s": round(self.at_s, 4)}


@dataclass(frozen=True)
class Reconnect:
    """A server lost and found again: where in the session's audio, for how long, what was replayed."""

    lost_at_s: float
    down_s: float
    replayed_s: float
    attempts: int
    error: str
    replay_from_s: float | None = field(default=None, compare=False)  # where the replay began (not written)

    def to_dict(self) -> dict:
        return {"type": "reconnect", "lost_at_s": round(self.lost_at_s, 4), "down_s": round(self.down_s, 3),
                "replayed_s": round(self.replayed_s, 4), "attempts": self.attempts, "error": self.error}


@dataclass(frozen=True)
class Notice:
    """A problem worth showing while the session goes on (a reconnect, a server error at a pause)."""

    text: str


def restart_sample(offset: int, answered: int, overlap: int) -> int:
    """Where a new session starts after a server ended its stream early (end of sequence): where
    it had last answered, less the model's delay (audio whose text had not come yet), but at least
    one 80 ms token (1280 samples) on, so a server that ends every stream at once still moves on."""
    return offset + max(answered - overlap, TOKEN_SAMPLES)


def restarts(events) -> list[Restart]:
    """The end-of-sequence restarts among ``events``."""
    return [Restart("eos", e.restart_at_s) for e in events if e.restart_at_s is not None]


def clamp_span(event: TokenEvent, end_s: float) -> TokenEvent:
    """The event with its audio span cut at ``end_s``: tokens made from the right padding (silence
    pushed after the audio) belong to no audio beyond what was really heard."""
    if event.audio_end_s is None or event.audio_end_s <= end_s:
        return event
    return replace(event, audio_start_s=min(event.audio_start_s, end_s), audio_end_s=end_s)


@dataclass(slots=True)
class TranscriptMetrics:
    """Timing of one transcription, all in milliseconds except where the name says otherwise.

    ``ttft_ms``: from the moment the complete audio is handed to the warm engine to the first
    generated text token id. ``total_ms``: from the same start to the last token.
    """

    audio_s: float = 0.0
    n_tokens: int = 0
    ttft_ms: float | None = None
    total_ms: float | None = None
    step_ms: list[float] = field(default_factory=list)

    @classmethod
    def measure(cls, events: list[TokenEvent], t_start: float, audio_s: float) -> TranscriptMetrics:
        """The one definition of ``ttft_ms`` and ``total_ms`` (docs/design.md), from ``t_start``,
        the moment the complete audio was handed to the warm engine."""
        metrics = cls(audio_s=audio_s, n_tokens=len(events),
                      step_ms=[e.step_ms for e in events if e.step_ms is not None])
        first = first_token(events)
        if first is not None:
            metrics.ttft_ms = (first.t_emitted - t_start) * 1000.0
        if events:
            metrics.total_ms = (events[-1].t_emitted - t_start) * 1000.0
        return metrics

    @property
    def rtf(self) -> float | None:
        """Compute time over audio duration: below 1 is faster than real time."""
        if self.total_ms is None or self.audio_s <= 0:
            return None
        return self.total_ms / 1000.0 / self.audio_s

    def to_dict(self) -> dict:
        """The figures that exist: one that could not be measured (no token, no step time from a
        server) is left out rather than written as null or ``{"n": 0}``."""
        figures = {
            "audio_s": round(self.audio_s, 4),
            "n_tokens": self.n_tokens,
            "ttft_ms": round_or_none(self.ttft_ms),
            "total_ms": round_or_none(self.total_ms),
            "rtf": round_or_none(self.rtf, 4),
            "step_ms": summarize(self.step_ms) if self.step_ms else None,
        }
        return {k: v for k, v in figures.items() if v is not None}


def keyterm_counts(events, counts: dict | None = None) -> dict:
    """``{phrase: {"said": n, "biased": m}}``: how often each keyterm was completed, and how many
    of those needed the bias (it changed one of the phrase's tokens); added into ``counts``."""
    counts = {} if counts is None else counts
    for event in events:
        if event.keyterm is not None:
            tally = counts.setdefault(event.keyterm, {"said": 0, "biased": 0})
            tally["said"] += 1
            tally["biased"] += int(event.keyterm_biased)
    return counts


def first_token(events) -> TokenEvent | None:
    """The first token that counts for time-to-first-token: the first one that is not special."""
    return next((e for e in events if not e.special), None)


def round_or_none(value: float | None, ndigits: int = 3) -> float | None:
    return None if value is None else round(value, ndigits)


def pool(values) -> list[float]:
    """Samples from per-run records: lists are spread out, missing (None) values skipped."""
    out: list[float] = []
    for value in values:
        if isinstance(value, list):
            out.extend(value)
        elif value is not None:
            out.append(value)
    return out


def percentile(values, q):
    """numpy's percentile (linear interpolation) of ``values`` at ``q`` (a number or a list of
    them): floats, or None for no samples. The one place voxcli and bench/ take percentiles."""
    if not len(values):
        return None if np.ndim(q) == 0 else [None] * len(q)
    out = np.percentile(np.asarray(values, dtype=np.float64), q)
    return float(out) if np.ndim(q) == 0 else [float(v) for v in out]


def summarize(values: list[float]) -> dict:
    """n, p50, p90, p95, p99, mean, min, max of a list of samples (empty -> just n=0); numpy's
    percentiles (linear interpolation)."""
    if not len(values):
        return {"n": 0}
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p95, p99 = percentile(a, [50, 90, 95, 99])
    return {"n": len(a), "p50": p50, "p90": p90, "p95": p95, "p99": p99, "mean": float(a.mean()),
            "min": float(a.min()), "max": float(a.max())}


@dataclass(slots=True)
class Transcript:
    """Everything known about one transcribed source: what the renderers and writers consume."""

    source: str
    model: str
    events: list[TokenEvent] = field(default_factory=list)
    metrics: TranscriptMetrics = field(default_factory=TranscriptMetrics)
    complete: bool = True  # False when interrupted (Ctrl-C) before the end of the audio
    t_start: float | None = None  # perf_counter() when the audio was handed to the engine

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events).strip()

    def to_dict(self) -> dict:
        keyterms = keyterm_counts(self.events)
        return {
            "source": self.source,
            "model": self.model,
            "text": self.text,
            "complete": self.complete,
            "metrics": self.metrics.to_dict(),
            **({"keyterms": keyterms} if keyterms else {}),
            "restarts": [r.to_dict() for r in restarts(self.events)],
            "events": [e.to_dict() for e in self.events],
        }


# ------------------------------------------------------------------------------------ status lines


@dataclass(frozen=True, slots=True)
class FileStatus:
    """What ``transcribe file`` shows under its live transcript."""

    file: str
    audio_s: float
    tokens: int | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None


@dataclass(frozen=True, slots=True)
class LiveStatus:
    """What ``listen`` shows under its live transcript, refreshed about ten times a second.

    ``latency_ms``: emission latency (p50, p95) of recent tokens; ``step_ms``: the median of recent
    decode steps, against ``budget_ms`` (one step per 80 ms chunk keeps up with real time).
    ``notice``: the latest problem worth seeing (a reconnect); ``state``: what the session is
    doing when it is not simply listening (stopping).
    """

    heard_s: float = 0.0
    level_db: float = -120.0
    latency_ms: tuple[float, float] | None = None
    step_ms: float | None = None
    final_step_ms: float | None = None  # two-pass: the final stream's own steps (an offline final model)
    budget_ms: float = STEP_BUDGET_MS
    backlog_blocks: int = 0
    dropped_blocks: int = 0
    input_overflows: int = 0
    endpoints: int = 0
    notice: str | None = None
    state: str | None = None

    @property
    def behind(self) -> bool:
        """Steps slower than the audio, or captured blocks piling up (half a second of them)."""
        return (self.step_ms or 0.0) + (self.final_step_ms or 0.0) > self.budget_ms or self.backlog_blocks > 25
