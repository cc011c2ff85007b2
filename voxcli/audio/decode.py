"""Audio in: file decoding, resampling and energy-based speech detection.

Everything here works on float32 mono numpy arrays at ``SAMPLE_RATE`` because that is what both
Voxtral processors expect. No models, no terminal: the engine and the CLI build on this module.
Microphone capture and file replay live in ``voxcli.audio.capture``; session WAVs in ``voxcli.output.recorder``.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import soundfile as sf
import soxr

from voxcli.audio.levels import rms_db
from voxcli.errors import AudioError
from voxcli.errors import one_line as _one_line
from voxcli.units import SAMPLE_RATE

__all__ = [
    "SAMPLE_RATE",
    "load_audio",
    "resample",
    "detect_speech",
    "plan_segments",
]

log = logging.getLogger(__name__)

"""Both Voxtral processors are built for 16 kHz input."""

# Decoding in blocks lets us keep what came before a damaged stretch (see load_audio): at most
# one block is lost there. Half a second bounds that loss; much smaller blocks cost measurably
# (4096-frame blocks made a 15-minute 48 kHz file load 40% slower).
_READ_BLOCK_S = 0.5

# 'HQ' is soxr's default and transparent for speech; 'VHQ' costs more time for no audible gain.
_RESAMPLE_QUALITY = "HQ"


# --------------------------------------------------------------------------------------------
# Decoding


def load_audio(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an audio file to float32 mono at ``SAMPLE_RATE``, values in [-1, 1].

    Anything libsndfile reads works (WAV 8/16/24/32-bit int and float, FLAC, OGG/Vorbis, MP3,
    AIFF, ...). A file that is damaged part-way through (truncated FLAC, say) returns the audio
    decoded before the damage and logs a warning: that prefix is real audio the user recorded,
    and libsndfile already does exactly this, silently, for truncated WAV, OGG and MP3 files.
    Every problem a user can cause raises ``AudioError`` with one line naming the file.
    """
    shown = _shown(path)
    with _open(path, "rb", shown) as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise AudioError(f"{shown}: file is empty (0 bytes)")
        frames, sample_rate = _decode(fh, shown)
    if len(frames) == 0:
        raise AudioError(f"{shown}: contains no audio (0 frames)")
    # Averaging (not summing) keeps the level in [-1, 1] and treats channels as equal; speech
    # recorded in stereo has the same words on both sides.
    mono = frames.mean(axis=1, dtype=np.float32)
    mono = resample(mono, sample_rate, SAMPLE_RATE)
    # Lossy decoders (Vorbis, MP3) and resampling both overshoot slightly past full scale.
    return np.clip(mono, -1.0, 1.0, out=mono)


def _open(path: str | os.PathLike[str], mode: str, shown: str):
    """Open a file for libsndfile, turning OS errors into one-line ``AudioError``s.

    Opening it ourselves gives the OS's precise reason (missing, directory, permission);
    libsndfile reports all of those as "System error" or "Format not recognised".
    """
    try:
        return open(path, mode)
    except FileNotFoundError:
        raise AudioError(f"{shown}: no such file or directory") from None
    except IsADirectoryError:
        raise AudioError(f"{shown}: is a directory, not a file") from None
    except PermissionError:
        raise AudioError(f"{shown}: permission denied") from None
    except OSError as e:
        raise AudioError(f"{shown}: cannot open ({_one_line(e.strerror or str(e))})") from None


def _decode(fh, shown: str) -> tuple[np.ndarray, int]:
    """Read all frames as float32 (frames, channels); salvage the prefix of a damaged stream."""
    try:
        snd = sf.SoundFile(fh)
    except sf.LibsndfileError as e:
        raise AudioError(f"{shown}: not a readable audio file ({_sf_reason(e)})") from None
    except sf.SoundFileError as e:  # soundfile's own checks, before libsndfile is asked
        raise AudioError(f"{shown}: not a readable audio file ({_one_line(str(e))})") from None
    blocks: list[np.ndarray] = []
    decoded = 0
    with snd:
        block_frames = max(1024, int(snd.samplerate * _READ_BLOCK_S))
        while True:
            try:
                block = snd.read(block_frames, dtype="float32", always_2d=True)
            except sf.LibsndfileError as e:
                if decoded == 0:
                    raise AudioError(f"{shown}: cannot decode audio ({_sf_reason(e)})") from None
                log.warning(
                    "%s: decoding stopped at %.2f s (%s); using the audio before that point",
                    shown, decoded / snd.samplerate, _sf_reason(e),
                )
                break
            if len(block) == 0:
                break
            blocks.append(block)
            decoded += len(block)
        channels, sample_rate = snd.channels, snd.samplerate
    if not blocks:
        return np.zeros((0, channels), dtype=np.float32), sample_rate
    return np.concatenate(blocks), sample_rate


def _sf_reason(e: sf.LibsndfileError) -> str:
    # error_string is libsndfile's own text without soundfile's "Error opening <object>" prefix,
    # which would show a Python file object's repr to the user. Some codecs prefix "Error : ".
    reason = e.error_string.strip().removeprefix("Error :").strip().rstrip(".")
    return _one_line(reason or f"libsndfile error {e.code}")


def _shown(path: str | os.PathLike[str]) -> str:
    return _one_line(os.fsdecode(path))




# --------------------------------------------------------------------------------------------
# Small utilities


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample 1-D (or (frames, channels)) audio from ``from_rate`` to ``to_rate``, as float32."""
    _check_rate("from_rate", from_rate)
    _check_rate("to_rate", to_rate)
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if from_rate == to_rate or len(samples) == 0:
        return samples
    return soxr.resample(samples, from_rate, to_rate, quality=_RESAMPLE_QUALITY).astype(
        np.float32, copy=False
    )


def _check_rate(name: str, rate: int) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"{name} must be a positive integer in Hz, got {rate!r}")


# --------------------------------------------------------------------------------------------
# Speech detection and segmentation

# A low percentile of frame levels tracks the background even when most of the file is speech:
# speech has pauses between words, and the quietest tenth of any real recording is background.
_NOISE_PERCENTILE = 10.0


def detect_speech(
    samples: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    *,
    frame_ms: float = 30.0,
    threshold_db: float = 12.0,
    min_level_db: float = -50.0,
    min_silence_s: float = 0.3,
    min_speech_s: float = 0.1,
    pad_s: float = 0.1,
) -> list[tuple[int, int]]:
    """Find speech as sorted, disjoint ``(start_sample, end_sample)`` regions (end exclusive).

    A frame is speech when its RMS level is ``threshold_db`` above the background estimate AND
    above ``min_level_db`` dBFS; the absolute floor is what makes digital silence and faint hiss
    return ``[]`` instead of "speech" found relative to nothing. A region only ends after
    ``min_silence_s`` below threshold (the hangover, so pauses inside a sentence do not split
    it); regions shorter than ``min_speech_s`` (clicks, pops) are dropped; each survivor is
    padded by ``pad_s`` on both sides because the soft edges of words sit below the threshold.
    A perfectly steady sound (a tone, constant noise) has no background to stand out from and
    is not reported.
    """
    x = _check_mono(samples)
    _check_rate("sample_rate", sample_rate)
    _check_range("frame_ms", frame_ms, 1.0, 1000.0)
    _check_range("threshold_db", threshold_db, 0.0, 100.0)
    _check_range("min_level_db", min_level_db, -200.0, 0.0)
    _check_range("min_silence_s", min_silence_s, 0.0, 60.0)
    _check_range("min_speech_s", min_speech_s, 0.0, 60.0)
    _check_range("pad_s", pad_s, 0.0, 10.0)

    frame_len = max(1, round(sample_rate * frame_ms / 1000.0))
    levels_db = _frame_levels_db(x, frame_len)
    if len(levels_db) == 0:
        return []
    floor_db = float(np.percentile(levels_db, _NOISE_PERCENTILE))
    voiced = levels_db > max(floor_db + threshold_db, min_level_db)

    runs = _runs(voiced)
    runs = _merge_close(runs, max_gap=round(min_silence_s * sample_rate / frame_len))
    min_frames = min_speech_s * sample_rate / frame_len
    runs = [(a, b) for a, b in runs if b - a >= min_frames]

    pad, n = round(pad_s * sample_rate), len(x)
    regions = [(max(0, a * frame_len - pad), min(n, b * frame_len + pad)) for a, b in runs]
    # Padding can make neighbours touch or overlap; callers rely on disjoint regions.
    return _merge_close(regions, max_gap=0)


MAX_GAP_S = 2.0  # a segment never spans a longer stretch without speech (an offline model invents text there)


def plan_segments(
    samples: np.ndarray, sample_rate: int = SAMPLE_RATE, max_segment_s: float = 30.0,
    regions: list[tuple[int, int]] | None = None,
) -> list[tuple[int, int]]:
    """Group speech ``regions`` (default: :func:`detect_speech`, by level; the engine passes
    Silero's, from ``voxcli.audio.vad``) into ``(start_sample, end_sample)`` segments <= ``max_segment_s``.

    The offline Voxtral model hears 30 s windows, so long files must be split, and a cut inside a
    word costs that word. Cuts therefore fall in the silences between speech regions; only a
    single region longer than the limit is cut inside, at its quietest frame in the last quarter
    before the limit (a breath, usually). Segments are sorted, disjoint, within bounds, cover all
    detected speech, none is longer than ``max_segment_s``, and none spans more than
    ``MAX_GAP_S`` without speech. Silence-only audio gives ``[]``. The same grouping, fed as the
    regions are found, is :class:`SegmentPlanner`.
    """
    planner = SegmentPlanner(samples, sample_rate, max_segment_s)
    segments: list[tuple[int, int]] = []
    for start, end in detect_speech(planner.x, sample_rate) if regions is None else regions:
        segments += planner.add(start, end)
    return segments + planner.flush()


class SegmentPlanner:
    """:func:`plan_segments` one region at a time, as an endpointer finds them: ``add(start,
    end)`` for each speech region in order, ``heard(position)`` as audio is read, ``flush()`` at
    the end; each returns the segments that can no longer change, so the first one is decoded as
    soon as its end is known rather than after the whole file was scanned."""

    def __init__(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE, max_segment_s: float = 30.0,
                 max_gap_s: float = MAX_GAP_S) -> None:
        self.x = _check_mono(samples)
        _check_rate("sample_rate", sample_rate)
        # The lower bound keeps at least a few detector frames per segment (and progress certain).
        _check_range("max_segment_s", max_segment_s, 0.1, 86400.0)
        self.rate = sample_rate
        self.max_len = int(max_segment_s * sample_rate)
        self.max_gap = int(max_gap_s * sample_rate)
        self._open: tuple[int, int] | None = None  # the segment still growing

    def add(self, start: int, end: int) -> list[tuple[int, int]]:
        done = []
        start, end = max(0, start), min(len(self.x), end)
        while end - start > self.max_len:
            cut = _quietest_cut(self.x, start, self.max_len, self.rate)
            done += self._piece(start, cut)
            start = cut
        return done + self._piece(start, end)

    def _piece(self, start: int, end: int) -> list[tuple[int, int]]:
        if self._open is not None:
            a, b = self._open
            if end - a <= self.max_len and start - b <= self.max_gap:
                self._open = (a, max(b, end))
                return []
        done = [self._open] if self._open is not None else []
        self._open = (start, end)
        if done and done[0][1] > start:  # touching after padding, but too long together: no overlap
            done[0] = (done[0][0], start)
        return done

    def heard(self, earliest: int) -> list[tuple[int, int]]:
        """No region found from now on starts before ``earliest`` (the searcher knows how far it
        has searched and whether a region is open). The open segment is final once no such
        region could join it."""
        if self._open is not None and earliest - self._open[1] > self.max_gap:
            done, self._open = [self._open], None
            return done
        return []

    def flush(self) -> list[tuple[int, int]]:
        done, self._open = ([self._open] if self._open is not None else []), None
        return done


def _quietest_cut(x: np.ndarray, start: int, max_len: int, sample_rate: int) -> int:
    """A cut point in (start, start + max_len], at the quietest 30 ms frame of the last quarter."""
    hi = start + max_len
    lo = hi - max_len // 4
    frame_len = max(1, round(sample_rate * 0.030))
    if hi - lo < frame_len:
        return hi  # window too small to have a "quietest frame"; a hard cut still bounds length
    levels = _frame_levels_db(x[lo:hi], frame_len)
    # Only whole frames: a partial last frame's level is not comparable with the others.
    whole = (hi - lo) // frame_len
    quietest = int(np.argmin(levels[:whole]))
    return lo + quietest * frame_len + frame_len // 2


def _frame_levels_db(x: np.ndarray, frame_len: int) -> np.ndarray:
    """RMS level in dBFS of consecutive frames; a final partial frame is zero-padded."""
    n_frames = -(-len(x) // frame_len)
    padded = np.zeros(n_frames * frame_len, dtype=np.float64)
    padded[: len(x)] = x
    return rms_db(padded.reshape(n_frames, frame_len), axis=1)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open index ranges where ``mask`` is True."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _merge_close(ranges: list[tuple[int, int]], max_gap: int) -> list[tuple[int, int]]:
    """Join sorted ranges whose gap is at most ``max_gap``."""
    merged: list[tuple[int, int]] = []
    for a, b in ranges:
        if merged and a - merged[-1][1] <= max_gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _check_mono(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"samples must be mono (1-D), got shape {x.shape}; downmix first")
    return x


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):  # also rejects NaN
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")
