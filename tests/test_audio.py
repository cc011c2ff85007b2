"""voxcli.audio.decode on real files: espeak-ng speech converted by sox, and broken files."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from speech import (
    make_corrupt,
    make_empty,
    make_png,
    make_silence,
    make_speech,
    make_text,
    make_tone,
    make_truncated,
    make_zero_frames,
    trim,
)

from voxcli.audio.decode import (
    SAMPLE_RATE,
    detect_speech,
    load_audio,
    plan_segments,
    resample,
)
from voxcli.errors import AudioError

SENTENCE = "The quick brown fox jumps over the lazy dog"
FRAME_S = 0.030  # one detector frame; "the right duration" means within this


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Every good format, all from the same espeak-ng sentence, plus a 16 kHz reference."""
    d = tmp_path_factory.mktemp("clips")
    c = {
        "ref": make_speech(d / "ref.wav", SENTENCE),
        "wav8": make_speech(d / "u8.wav", SENTENCE, bits=8),
        "wav24_22k": make_speech(d / "s24.wav", SENTENCE, rate=22050, bits=24),
        "wav_f32": make_speech(d / "f32.wav", SENTENCE, bits=32, encoding="floating-point"),
        "wav_44k_stereo": make_speech(d / "st44.wav", SENTENCE, rate=44100, channels=2),
        "wav_48k_stereo": make_speech(d / "st48.wav", SENTENCE, rate=48000, channels=2, bits=24),
        "flac": make_speech(d / "s.flac", SENTENCE, rate=22050),
        "ogg": make_speech(d / "s.ogg", SENTENCE, rate=44100, channels=2),
        "mp3": make_speech(d / "s.mp3", SENTENCE, rate=22050),
    }
    c["short"] = trim(c["ref"], d / "short.wav", 0.5, 0.1)
    return c


@pytest.fixture(scope="module")
def ref(clips) -> np.ndarray:
    # Read with soundfile directly so the reference does not depend on the code under test.
    x, rate = sf.read(clips["ref"], dtype="float32")
    assert rate == SAMPLE_RATE and x.ndim == 1
    return x


# --------------------------------------------------------------------------------------------
# Good files

LOSSLESS = ["wav8", "wav24_22k", "wav_f32", "wav_44k_stereo", "wav_48k_stereo", "flac"]


@pytest.mark.parametrize("name", ["ref", *LOSSLESS, "ogg", "mp3"])
def test_every_format_decodes_to_float32_mono_16k(clips, ref, name):
    x = load_audio(clips[name])
    assert x.dtype == np.float32 and x.ndim == 1
    assert np.abs(x).max() <= 1.0
    # sox's MP3 encoder adds ~70 ms of encoder delay/padding that the decoder cannot remove.
    tolerance_s = 0.1 if name == "mp3" else FRAME_S
    assert _duration_s(x) == pytest.approx(_duration_s(ref), abs=tolerance_s)
    assert np.sqrt(np.mean(x**2)) > 0.05  # speech, not near-silence
    if name in LOSSLESS:
        # Same waveform as the reference: catches wrong sign/offset handling (unsigned 8-bit),
        # byte order, a channel dropped or a resampler shifting time.
        n = min(len(x), len(ref))
        assert np.corrcoef(x[:n], ref[:n])[0, 1] > 0.99


def test_overshoot_is_clipped_to_full_scale(tmp_path):
    # Lossy decoders and resamplers overshoot; a float WAV can hold anything.
    x = np.sin(np.linspace(0, 100, 44100)).astype(np.float32) * 1.5
    sf.write(tmp_path / "hot.wav", x, 44100, subtype="FLOAT")
    y = load_audio(tmp_path / "hot.wav")
    assert np.abs(y).max() == 1.0


def test_short_clip(clips):
    assert _duration_s(load_audio(clips["short"])) == pytest.approx(0.1, abs=1e-3)


def test_stereo_is_averaged_not_one_channel_or_summed(tmp_path, ref):
    stereo = np.stack([ref, np.zeros_like(ref)], axis=1)
    sf.write(tmp_path / "left_only.wav", stereo, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "left_only.wav"), ref / 2, atol=1e-6)


def test_resampled_file_keeps_duration_and_frequency(tmp_path):
    x = load_audio(make_tone(tmp_path / "tone.wav", 1000, 2.0, rate=44100))
    assert _duration_s(x) == pytest.approx(2.0, abs=1e-3)
    assert _peak_hz(x, SAMPLE_RATE) == pytest.approx(1000, abs=2)


@pytest.mark.parametrize(("from_rate", "to_rate"), [(48000, 16000), (16000, 8000), (8000, 22050)])
def test_resample_keeps_duration_and_frequency(from_rate, to_rate):
    t = np.arange(int(1.5 * from_rate)) / from_rate
    y = resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), from_rate, to_rate)
    assert y.dtype == np.float32
    assert len(y) == pytest.approx(1.5 * to_rate, abs=1)
    assert _peak_hz(y, to_rate) == pytest.approx(440, abs=2)


@pytest.mark.parametrize("bad", [0, -16000, 16000.5, None, True])
def test_bad_rates_are_value_errors(bad):
    with pytest.raises(ValueError, match="positive integer"):
        resample(np.zeros(10, np.float32), bad, 16000)


# --------------------------------------------------------------------------------------------
# Bad files


def _bad_files(d: Path, clips: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    """name -> (file, a word the error message must contain)."""
    directory = d / "a_directory.wav"
    directory.mkdir()
    header_only = d / "header_only.wav"
    header_only.write_bytes(clips["ref"].read_bytes()[:30])
    return {
        "missing": (d / "missing.wav", "no such file or directory"),
        "directory": (directory, "directory"),
        "empty": (make_empty(d / "empty.wav"), "empty"),
        "zero_frames": (make_zero_frames(d / "zero.wav"), "0 frames"),
        "header_only": (header_only, "not a readable audio file"),
        "corrupt_wav": (make_corrupt(clips["ref"], d / "c.wav", keep_bytes=12), "not a readable"),
        "corrupt_flac": (make_corrupt(clips["flac"], d / "c.flac", keep_bytes=4), "flac"),
        "corrupt_mp3": (make_corrupt(clips["mp3"], d / "c.mp3", keep_bytes=4), "audio"),
        "text": (make_text(d / "notes.txt"), "not a readable audio file"),
        "text_named_wav": (make_text(d / "notes.wav"), "not a readable audio file"),
        "png": (make_png(d / "picture.png"), "not a readable audio file"),
    }


BAD = ["missing", "directory", "empty", "zero_frames", "header_only", "corrupt_wav",
       "corrupt_flac", "corrupt_mp3", "text", "text_named_wav", "png"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, clips):
    return _bad_files(tmp_path_factory.mktemp("bad"), clips)


@pytest.mark.parametrize("name", BAD)
def test_bad_input_raises_one_line_audio_error(bad_files, name):
    path, reason = bad_files[name]
    with pytest.raises(AudioError) as info:
        load_audio(path)
    _assert_one_line_naming(info.value, path)
    assert reason in str(info.value)


def test_permission_denied(tmp_path, ref):
    path = tmp_path / "private.wav"
    sf.write(path, ref, 16000, subtype="FLOAT")
    path.chmod(0)
    with _unprivileged(), pytest.raises(AudioError) as info:
        load_audio(path)
    _assert_one_line_naming(info.value, path)
    assert "permission denied" in str(info.value)


def test_newline_in_path_stays_one_line(tmp_path):
    with pytest.raises(AudioError) as info:
        load_audio(tmp_path / "two\nlines.wav")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["ref", "flac", "ogg", "mp3"])
def test_truncated_file_returns_the_real_audio_before_the_cut(tmp_path, clips, name, caplog):
    full = load_audio(clips[name])
    with caplog.at_level(logging.WARNING, logger="voxcli.audio.decode"):
        part = load_audio(make_truncated(clips[name], tmp_path / f"cut{clips[name].suffix}"))
    # Half the bytes: at least a fifth of the audio survives (lossy headers are small, FLAC
    # loses at most one half-second block), and never more than the whole.
    assert 0.2 * len(full) < len(part) < len(full)
    n = min(len(part), len(full)) - 1600  # the resampler's edge differs near the cut
    assert np.corrcoef(part[:n], full[:n])[0, 1] > 0.999
    if name == "flac":  # libsndfile reports the damage only for FLAC; we pass that on
        assert "decoding stopped" in caplog.text and "cut.flac" in caplog.text


# --------------------------------------------------------------------------------------------
# Speech detection


@pytest.fixture(scope="module")
def two_utterances(tmp_path_factory):
    """Quiet noise + speech + noise + speech + noise, with the true speech spans in samples."""
    d = tmp_path_factory.mktemp("vad")
    a = load_audio(make_speech(d / "a.wav", SENTENCE))
    b = load_audio(make_speech(d / "b.wav", "Please send the report to the whole team by Friday"))
    rng = np.random.default_rng(0)
    parts, truth, at = [], [], 0
    for piece in [None, a, None, b, None]:
        if piece is None:  # 1.2 s of -60 dBFS hiss: a quiet room, not digital silence
            piece = rng.normal(0, 1e-3, int(1.2 * SAMPLE_RATE)).astype(np.float32)
        else:
            loud = np.flatnonzero(np.abs(piece) > 0.01)
            truth.append((at + loud[0], at + loud[-1]))
        parts.append(piece)
        at += len(piece)
    return np.concatenate(parts), truth


def test_detect_speech_finds_each_utterance(two_utterances):
    x, truth = two_utterances
    regions = detect_speech(x)
    tol = int(0.2 * SAMPLE_RATE)
    for start, end in truth:
        inside = [(a, b) for a, b in regions if a < end and b > start]
        assert inside, f"no speech found in {start / SAMPLE_RATE:.2f}-{end / SAMPLE_RATE:.2f} s"
        assert abs(inside[0][0] - start) <= tol
        assert abs(inside[-1][1] - end) <= tol
    # Nothing found in the hiss between or around the utterances.
    for a, b in regions:
        assert any(a < e + tol and b > s - tol for s, e in truth)
    _assert_sorted_disjoint_in_bounds(regions, len(x))


def test_detect_speech_silence_is_empty(tmp_path):
    assert detect_speech(load_audio(make_silence(tmp_path / "quiet.wav", 3.0))) == []
    assert detect_speech(np.zeros(5 * SAMPLE_RATE, np.float32)) == []
    assert detect_speech(np.zeros(0, np.float32)) == []
    hiss = np.random.default_rng(2).normal(0, 3e-4, 3 * SAMPLE_RATE).astype(np.float32)
    assert detect_speech(hiss) == []
    # Faint hiss in digital silence stands far above a -200 dB "floor": only the absolute
    # level threshold keeps it from being called speech.
    burst = np.zeros(4 * SAMPLE_RATE, np.float32)
    burst[SAMPLE_RATE : 2 * SAMPLE_RATE] = hiss[:SAMPLE_RATE] * 3  # about -60 dBFS
    assert detect_speech(burst) == []


def test_detect_speech_ignores_one_click():
    x = np.random.default_rng(3).normal(0, 1e-3, 2 * SAMPLE_RATE).astype(np.float32)
    x[SAMPLE_RATE : SAMPLE_RATE + 80] = 0.9  # 5 ms
    assert detect_speech(x) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"frame_ms": 0}, "frame_ms"),
        ({"pad_s": -0.1}, "pad_s"),
        ({"min_silence_s": float("nan")}, "min_silence_s"),
        ({"min_level_db": 3}, "min_level_db"),
    ],
)
def test_detect_speech_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        detect_speech(np.zeros(100, np.float32), **kwargs)


def test_detect_speech_rejects_stereo():
    with pytest.raises(ValueError, match="mono"):
        detect_speech(np.zeros((100, 2), np.float32))


# --------------------------------------------------------------------------------------------
# Segment planning


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory):
    """~40 s: six sentences separated by 0.4-1.5 s pauses."""
    d = tmp_path_factory.mktemp("long")
    texts = [SENTENCE, "Seven", "Please send the report to the whole team by Friday",
             "Good morning everyone", "It is going to rain again tomorrow afternoon", "Thanks"]
    rng = np.random.default_rng(4)
    parts = []
    for i, text in enumerate(texts * 2):
        parts.append(load_audio(make_speech(d / f"{i}.wav", text)))
        parts.append(rng.normal(0, 1e-3, int(rng.uniform(0.4, 1.5) * SAMPLE_RATE)))
    return np.concatenate(parts).astype(np.float32)


@pytest.mark.parametrize("max_segment_s", [30.0, 8.0, 3.0, 1.0])
def test_plan_segments_bounds_and_covers(long_speech, max_segment_s):
    x = long_speech
    segments = plan_segments(x, max_segment_s=max_segment_s)
    assert segments
    assert max(b - a for a, b in segments) <= max_segment_s * SAMPLE_RATE
    _assert_sorted_disjoint_in_bounds(segments, len(x))
    covered = np.zeros(len(x), bool)
    for a, b in segments:
        covered[a:b] = True
    for a, b in detect_speech(x):
        assert covered[a:b].all(), f"speech at {a / SAMPLE_RATE:.2f} s is in no segment"


def test_plan_segments_cuts_between_utterances_when_possible(two_utterances):
    x, truth = two_utterances
    segments = plan_segments(x, max_segment_s=4.0)
    assert len(segments) == 2  # each ~3 s utterance fits; together they do not
    (_, first_end), (second_start, _) = segments
    assert truth[0][1] <= first_end <= second_start <= truth[1][0]


def test_plan_segments_cuts_one_long_region_at_quiet_points(long_speech):
    # The pauses removed: one long region that must still be cut into 2 s pieces.
    speech_only = np.concatenate(
        [long_speech[a:b] for a, b in detect_speech(long_speech, pad_s=0.0)]
    )
    segments = plan_segments(speech_only, max_segment_s=2.0)
    assert max(b - a for a, b in segments) <= 2 * SAMPLE_RATE
    _assert_sorted_disjoint_in_bounds(segments, len(speech_only))
    inner_cuts = [end for (_, end), (start, _) in zip(segments, segments[1:]) if end == start]
    assert len(inner_cuts) >= 5
    median_rms = np.median(_frame_rms(speech_only))
    for cut in inner_cuts:  # each lands in a quiet frame, not mid-syllable
        frame = speech_only[cut - 240 : cut + 240]
        assert np.sqrt(np.mean(frame**2)) < median_rms


def test_plan_segments_silence_and_arguments():
    assert plan_segments(np.zeros(3 * SAMPLE_RATE, np.float32)) == []
    for bad in (0.0, 0.05, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_segment_s"):
            plan_segments(np.zeros(100, np.float32), max_segment_s=bad)


# --------------------------------------------------------------------------------------------
# Helpers


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def _frame_rms(x: np.ndarray, frame: int = 480) -> np.ndarray:
    n = len(x) // frame
    return np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1))


def _assert_one_line_naming(error: Exception, path: Path) -> None:
    message = str(error)
    assert "\n" not in message and message.strip() == message
    assert str(path) in message


def _assert_sorted_disjoint_in_bounds(ranges: list[tuple[int, int]], n: int) -> None:
    for a, b in ranges:
        assert 0 <= a < b <= n
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
        assert end <= start


@contextlib.contextmanager
def _unprivileged():
    """Make permission checks apply: as root, drop the effective uid to 'nobody' for a moment.

    Root reads mode-000 files anyway (CAP_DAC_OVERRIDE); a non-zero effective uid clears that
    capability, and the real uid (still 0) lets us switch back.
    """
    if os.geteuid() != 0:
        yield
        return
    try:
        os.seteuid(65534)
    except PermissionError:
        pytest.skip("running as root without CAP_SETUID: cannot test an unreadable file")
    try:
        yield
    finally:
        os.seteuid(0)


def _duration_s(samples) -> float:
    return len(samples) / 16000


def test_pcm16_out_and_back_is_exact_for_audio_read_from_a_16_bit_file():
    """What voxcli sends a server (OpenAI, vLLM, Mistral, Deepgram, Wyoming) is decoded there by
    32768: a 16-bit file's samples must come back bit-identical, or the server hears other audio
    than the local engine. Scaling by 32767 moved every sample past half of full scale."""
    from voxcli.audio.pcm import from_pcm16, to_pcm16

    every = np.arange(-32768, 32768, dtype="<i2")
    assert to_pcm16(from_pcm16(every.tobytes())) == every.tobytes()
    hello = load_audio(Path(__file__).resolve().parent.parent / "examples" / "hello.wav")
    assert np.array_equal(from_pcm16(to_pcm16(hello)), hello)
    assert np.frombuffer(to_pcm16(np.array([1.0, -1.0, 1.5, -7.0], np.float32)), "<i2").tolist() == \
        [32767, -32768, 32767, -32768]
