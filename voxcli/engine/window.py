"""A Realtime stream's audio on its way to the model, as the model hears it.

The session's audio lies on a :class:`voxcli.audio.tape.Tape` (positions are the session's 16 kHz
samples). A stream reads it from a sample (``open``): the left pad first, then the real audio, then,
once the stream is finishing, silence up to a whole token plus the right padding. The read
position moves on as the model takes each window; what lies far enough behind it (more than a
restart can reach back to) is dropped from the tape.
"""

from __future__ import annotations

import numpy as np

from voxcli.audio.tape import Tape

FEATURE_BATCH_STEPS = 64  # most steps whose features are computed in one call (5.1 s of audio)


class AudioWindow:
    """One session's audio and the stream now reading it. ``engine``: the Realtime engine whose
    geometry (left pad, window, hop, first chunk) and log-mel it uses."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.tape = Tape()
        # The most a restart reaches back behind the read position: the first chunk (its position,
        # counted in tokens, is where the text is; the model has heard a delay further).
        self.keep = engine.first_chunk_samples + engine.hop_samples
        self.open(0)

    @property
    def pushed(self) -> int:
        return self.tape.end

    @property
    def held(self) -> int:
        """Samples the window holds now (bounded, for a session of any length: bench/soak.py)."""
        return self.tape.end - self.tape.start

    def open(self, start: int) -> None:
        """A stream reading from sample ``start`` of the session's audio: the left pad again."""
        self.stream_start = start
        self.read = -len(self.engine.left_pad)  # in the stream's audio: the left pad is before 0
        self.padding = 0  # silence after the last real sample (a finishing stream's)
        self.feats = np.zeros((1, 0, 0), dtype=np.float32)  # features computed ahead, per step
        self.feats_next = 0

    def push(self, samples: np.ndarray) -> None:
        if len(samples):
            self.tape.append(np.array(samples, dtype=np.float32))  # a copy: the caller may reuse its block

    def pad(self) -> None:
        """Pad exactly as mistral-common pads a whole clip: up to a whole 80 ms token, then the
        right padding. The stream's real audio plus this is what the model hears in total."""
        e = self.engine
        self.padding = (-(self.pushed - self.stream_start)) % e.hop_samples + e.num_right_pad_tokens * e.hop_samples

    def available(self) -> int:
        """Samples from the read position on that exist (left pad, real audio, padding)."""
        return self.pushed - self.stream_start + self.padding - self.read

    def heard_padding(self) -> bool:
        """Has the last step read past the last real sample? (A step's window ends
        ``window_samples - hop_samples`` past where the next one starts.)"""
        e = self.engine
        return self.stream_start + self.read + e.window_samples - e.hop_samples > self.pushed

    def samples(self, n: int) -> np.ndarray:
        """The next ``n`` samples from the read position, zero past what exists."""
        e = self.engine
        out = np.zeros(n, dtype=np.float32)
        lo, hi = self.read, self.read + n
        if lo < 0:  # the left pad
            pad = e.left_pad[len(e.left_pad) + lo:len(e.left_pad) + min(hi, 0)]
            out[:len(pad)] = pad
        real_end = self.pushed - self.stream_start
        a, b = max(lo, 0), min(hi, real_end)
        if a < b:
            out[a - lo:b - lo] = self.tape.slice(self.stream_start + a, self.stream_start + b)
        return out

    def advance(self, n: int) -> None:
        """``n`` samples handed to the model; the tape keeps what a restart may replay."""
        self.read += n
        self.tape.keep_from(self.stream_start + self.read - self.keep)

    def prefill_features(self):
        """The prefill's mel (the left pad and the first chunk); the window moves past them."""
        e = self.engine
        feats = e.log_mel(self.samples(len(e.left_pad) + e.first_chunk_samples), center=True)
        self.advance(e.next_window_start)
        return feats

    def features_due(self) -> int:
        """The samples the next step's features must be computed from (every step the audio
        allows, up to FEATURE_BATCH_STEPS), or 0: none due (computed ahead, or too little audio).
        An engine stepping many sessions computes them together (``computed``)."""
        e = self.engine
        if self.feats_next < self.feats.shape[-1] or self.available() < e.window_samples:
            return 0
        n = min(FEATURE_BATCH_STEPS, 1 + (self.available() - e.window_samples) // e.hop_samples)
        return n * e.hop_samples + (e.chunk_samples - e.hop_samples)

    def computed(self, feats) -> None:
        """The features of ``samples(features_due())``, (1, bins, frames)."""
        self.feats, self.feats_next = feats, 0

    def step_features(self):
        """The next step's 8 mel frames; the window moves on 80 ms. Features are computed for
        every step the audio allows (up to FEATURE_BATCH_STEPS) in one call: live, that is one step
        at a time; for a file it amortises the extractor's per-call cost, ~10% of a tiny model's
        step. Frames do not depend on how the audio is batched: each covers its own 400 samples,
        and the global log-mel maximum is fixed. The last hop of a window is never read (the
        extractor drops that frame): it is zero-filled."""
        e = self.engine
        width = self.features_due()
        if width:
            self.computed(e.log_mel(self.samples(width), center=False))
        frames = e.frames_per_token
        feats = self.feats[..., self.feats_next:self.feats_next + frames]
        self.feats_next += frames
        self.advance(e.hop_samples)
        return feats
