"""The endpointer: where speech starts and ends, as audio arrives.

    ep = Endpointer(EndpointOptions(detector="silero", min_silence_ms=320))
    for event in ep.feed(samples_16k):      # any block size
        event.kind, event.sample            # "start" / "end", a position in the stream
    ep.flush()                              # end of stream: an open utterance ends here

Silero VAD (the ``silero-vad`` package, whose wheel ships its model: no network) scores each
512-sample window (32 ms) with a speech probability; a level meter is the explicit fallback
(``detector="energy"``: a window counts as speech when its level is above ``silence_db``). Both
feed one hysteresis state machine: speech starts after ``min_speech_ms`` of speech windows and
ends after ``min_silence_ms`` without speech; the end event's ``sample`` is where the silence
began (the end of the speech) and ``decided_sample`` is where that was known. A fixed level
threshold is no endpointer in a real room (docs/design.md, "Voice activity"); Silero is.

No threads or terminal here: one caller feeds an endpointer (the engine thread, or ``transcribe
file`` planning its cuts), and every endpointer has a detector state of its own, so several may
run side by side in different threads (bench's concurrent sessions, two-pass, a server). They
share one network, which keeps no state (each stream's is passed in): :func:`feed_together` scores
many endpointers' windows in one call per window position, a row per stream (a server's sessions).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from voxcli.audio.levels import rms_db
from voxcli.choices import DETECTORS
from voxcli.units import SAMPLE_RATE

WINDOW = 512  # Silero's window at 16 kHz


@dataclass(frozen=True)
class EndpointOptions:
    detector: str = "silero"
    min_silence_ms: int = 320  # this much non-speech ends speech
    min_speech_ms: int = 96  # this much speech (3 windows) starts it: a click is not an utterance
    threshold: float = 0.5  # Silero: speech probability that counts as speech ...
    neg_threshold: float = 0.35  # ... and below which it counts as silence (hysteresis)
    silence_db: float = -45.0  # energy: a window below this level is silence

    def validate(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")
        if self.min_silence_ms <= 0 or self.min_speech_ms <= 0:
            raise ValueError("min_silence_ms and min_speech_ms must be > 0")
        if not 0.0 < self.neg_threshold <= self.threshold < 1.0:
            raise ValueError("thresholds must satisfy 0 < neg_threshold <= threshold < 1")


@dataclass(frozen=True)
class VadEvent:
    kind: str  # "start" or "end"
    sample: int  # where speech started / where it ended (the silence began)
    decided_sample: int  # how much audio had been fed when this was known


_SILERO = None  # the shipped model as loaded (its wrapper keeps one stream's state: never run)
_SILERO_LOCK = threading.Lock()
CONTEXT = 64  # samples of the last window Silero prepends to the next (its wrapper's context_size_samples)
STATE = (2, 1, 128)  # its LSTM state per stream: (h and c, row, units)


def _loaded():
    """The shipped TorchScript model, loaded once per process."""
    global _SILERO
    with _SILERO_LOCK:
        if _SILERO is None:
            import torch

            threads = torch.get_num_threads()
            from silero_vad import load_silero_vad  # its import sets torch to 1 thread: put it back

            torch.set_num_threads(threads)
            _SILERO = load_silero_vad()
        return _SILERO


def _core():
    """The 16 kHz network inside the shipped model: ``core(x, state) -> (p, state)``, with ``x``
    (B, CONTEXT + WINDOW) and ``state`` (2, B, 128) passed in and handed back, so it holds no
    stream's state and every endpointer (in any thread) shares it. The wrapper the package gives
    keeps one stream's state inside itself, as attributes: a wrapper per stream, one call each."""
    return _loaded()._model


def preload(detector: str = "silero") -> None:
    """Load the detector now (at warm-up), not inside the first file's or session's timing."""
    if detector == "silero":
        _loaded()


class _Silero:
    """One stream's Silero state: the last window's tail (context) and the LSTM state, as the
    package's wrapper keeps them; scored alone or beside other streams' (:func:`score_together`)."""

    def __init__(self) -> None:
        import torch

        self._torch = torch
        _core()  # loaded now, not inside the first window's time
        self.reset()

    def reset(self) -> None:
        self.context = np.zeros(CONTEXT, np.float32)
        self.state = self._torch.zeros(*STATE)

    def probabilities(self, windows: np.ndarray) -> list[float]:
        return score_together([self], [windows])[0]


def score_together(detectors: list[_Silero], windows: list[np.ndarray]) -> list[list[float]]:
    """Speech probabilities of several streams' windows (``windows[i]``: (k_i, WINDOW) for
    ``detectors[i]``) in one Silero call per window position: row i is stream i's window with its
    own context and state, which go back to it. A stream's probabilities are its solo run's to
    float32 rounding (tests/test_vad.py). Per call, a handful of array operations whatever the
    rows: the network is most of its time."""
    import torch

    core = _core()
    probs: list[list[float]] = [[] for _ in detectors]
    for j in range(max((len(w) for w in windows), default=0)):
        rows = [i for i, w in enumerate(windows) if len(w) > j]
        x = np.empty((len(rows), CONTEXT + WINDOW), np.float32)
        for k, i in enumerate(rows):
            x[k, :CONTEXT] = detectors[i].context
            x[k, CONTEXT:] = windows[i][j]
        with torch.inference_mode():
            state = torch.cat([detectors[i].state for i in rows], 1) if len(rows) > 1 else detectors[rows[0]].state
            p, state = core(torch.from_numpy(x), state)
        p = p[:, 0].tolist()
        for k, (i, row_state) in enumerate(zip(rows, state.split(1, 1))):
            detectors[i].context = x[k, -CONTEXT:]
            detectors[i].state = row_state
            probs[i].append(p[k])
    return probs


class _Energy:
    def __init__(self, silence_db: float) -> None:
        self.silence_db = silence_db

    def probabilities(self, windows: np.ndarray) -> list[float]:
        return [1.0 if rms_db(w) >= self.silence_db else 0.0 for w in windows]

    def reset(self) -> None:
        pass


class Endpointer:
    """Speech start / end events for a stream of 16 kHz mono float32 samples."""

    def __init__(self, options: EndpointOptions | None = None) -> None:
        self.options = options or EndpointOptions()
        self.options.validate()
        opts = self.options
        self.detector = _Silero() if opts.detector == "silero" else _Energy(opts.silence_db)
        self._pending = np.zeros(0, np.float32)
        self.position = 0  # samples scored so far
        self.in_speech = False
        self._speech_run = 0  # consecutive speech samples while not in speech
        self._run_start = 0
        self._silence_start: int | None = None
        self._min_speech = opts.min_speech_ms * SAMPLE_RATE // 1000
        self._min_silence = opts.min_silence_ms * SAMPLE_RATE // 1000

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        return self.decide(self.detector.probabilities(self.windows(samples)))

    def windows(self, samples: np.ndarray) -> np.ndarray:
        """The whole windows ``samples`` completes, (k, WINDOW); the rest waits for the next block.
        ``feed`` is ``decide(probabilities of windows(samples))``: :func:`feed_together` scores
        several endpointers' windows in shared calls."""
        samples = np.asarray(samples, dtype=np.float32)
        if len(self._pending):
            samples = np.concatenate([self._pending, samples])
        n = len(samples) // WINDOW * WINDOW
        self._pending = samples[n:].copy()
        return samples[:n].reshape(-1, WINDOW)

    def decide(self, probabilities: list[float]) -> list[VadEvent]:
        """The events of the next windows' speech probabilities, in order."""
        return [event for p in probabilities if (event := self._step(p)) is not None]

    def flush(self) -> list[VadEvent]:
        """The stream ended: an utterance still open ends where the speech did."""
        if not self.in_speech:
            return []
        self.in_speech = False
        end = self._silence_start if self._silence_start is not None else self.position
        self._silence_start = None
        return [VadEvent("end", end, self.position)]

    def _step(self, prob: float) -> VadEvent | None:
        opts = self.options
        start = self.position
        self.position += WINDOW
        if not self.in_speech:
            if prob >= opts.threshold:
                if not self._speech_run:
                    self._run_start = start
                self._speech_run += WINDOW
                if self._speech_run >= self._min_speech:
                    self.in_speech, self._speech_run, self._silence_start = True, 0, None
                    return VadEvent("start", self._run_start, self.position)
            elif prob < opts.neg_threshold:
                self._speech_run = 0
            return None
        if prob >= opts.threshold:
            self._silence_start = None
        elif prob < opts.neg_threshold:
            if self._silence_start is None:
                self._silence_start = start
            if self.position - self._silence_start >= self._min_silence:
                self.in_speech = False
                end, self._silence_start = self._silence_start, None
                return VadEvent("end", end, self.position)
        return None


def feed_together(endpointers: list[Endpointer], blocks: list[np.ndarray]) -> list[list[VadEvent]]:
    """``[ep.feed(block) for ep, block in zip(endpointers, blocks)]``, with every Silero
    endpointer's windows scored in shared calls (a server's sessions: one call per window position
    for all of them, not one per stream)."""
    windows = [ep.windows(block) for ep, block in zip(endpointers, blocks)]
    probs: list[list[float] | None] = [None] * len(endpointers)
    silero = [i for i, ep in enumerate(endpointers) if isinstance(ep.detector, _Silero) and len(windows[i])]
    if silero:
        for i, p in zip(silero, score_together([endpointers[i].detector for i in silero], [windows[i] for i in silero])):
            probs[i] = p
    return [ep.decide(p if p is not None else ep.detector.probabilities(w))
            for ep, w, p in zip(endpointers, windows, probs)]


def speech_regions(audio: np.ndarray, options: EndpointOptions | None = None) -> list[tuple[int, int]]:
    """(start, end) sample ranges of speech in a whole clip, with the streaming endpointer."""
    ep = Endpointer(options)
    events = ep.feed(audio) + ep.flush()
    regions, start = [], None
    for event in events:
        if event.kind == "start":
            start = event.sample
        elif start is not None:
            regions.append((start, min(event.sample, len(audio))))
            start = None
    return regions


def padded_speech_regions(audio: np.ndarray, pad_s: float = 0.1,
                          options: EndpointOptions | None = None) -> list[tuple[int, int]]:
    """:func:`speech_regions`, each widened by ``pad_s`` (soft word edges fall below any
    detector's threshold), clamped to the clip and merged where they touch: cut points for
    transcribing a long clip in pieces."""
    pad = int(pad_s * SAMPLE_RATE)
    merged: list[tuple[int, int]] = []
    for a, b in speech_regions(audio, options):
        a, b = max(0, a - pad), min(len(audio), b + pad)
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def stream_segments(audio: np.ndarray, max_segment_s: float = 30.0, pad_s: float = 0.1,
                    options: EndpointOptions | None = None, block_s: float = 1.0):
    """Segments of at most ``max_segment_s`` to transcribe a long clip in pieces (the cut points
    of :func:`voxcli.audio.plan_segments` over :func:`padded_speech_regions`), yielded as the
    clip is searched: each once nothing found later can change it. The first is ready after a
    few seconds of the clip are searched, not the whole clip (Silero reads ~9 ms of CPU a second
    of audio: an hour waited ~30 s for its first segment)."""
    from voxcli.audio.decode import SegmentPlanner

    planner = SegmentPlanner(audio, SAMPLE_RATE, max_segment_s)
    opts = options or EndpointOptions()
    ep = Endpointer(opts)
    pad, block, n = int(pad_s * SAMPLE_RATE), int(block_s * SAMPLE_RATE), len(audio)
    # A speech start is reported after min_speech_ms, and widened by the pad: a region found
    # later can begin this far before what has been searched.
    lookback = pad + opts.min_speech_ms * SAMPLE_RATE // 1000 + 2 * WINDOW
    start = None
    for i in range(0, n, block):
        for event in ep.feed(audio[i:i + block]):
            if event.kind == "start":
                start = event.sample
            elif start is not None:
                yield from planner.add(start - pad, min(event.sample, n) + pad)
                start = None
        # A region found from here on starts no earlier than the open one (if speech is going
        # on), or than what was searched, less how late a start is reported and the pad.
        yield from planner.heard(start - pad if start is not None else min(n, i + block) - lookback)
    for event in ep.flush():
        if start is not None:
            yield from planner.add(start - pad, min(event.sample, n) + pad)
            start = None
    yield from planner.flush()
