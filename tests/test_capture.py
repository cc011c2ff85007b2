"""Live audio sources on the real stack: sounddevice -> PortAudio -> alsa-lib -> a virtual mic.

Nothing here fakes sounddevice, except the one case that cannot be arranged in-process (PortAudio
missing). The virtual mic delivers far faster than real time, so every capture is bounded with
``max_seconds`` and none of these tests waits on the wall clock for long.
"""

from __future__ import annotations

import builtins
import math
import queue
import subprocess
import sys
import time

import numpy as np
import pytest
from speech import make_speech, trim

from voxcli.audio.capture import FileSource, MicSource, _Source, level_db, list_input_devices
from voxcli.audio.decode import load_audio, resample
from voxcli.errors import AudioError

RATE = 16000


def drain(src, timeout_s: float = 20.0) -> list[tuple[float, np.ndarray]]:
    """Read blocks promptly, as the engine thread does, until the source is done."""
    items = []
    give_up = time.monotonic() + timeout_s
    while True:
        try:
            items.append(src.blocks.get(timeout=0.02))
        except queue.Empty:
            if src.finished.is_set() and src.blocks.empty():
                return items
            assert time.monotonic() < give_up, "source never finished"


def joined(items) -> np.ndarray:
    return np.concatenate([b for _, b in items]) if items else np.zeros(0, np.float32)


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg and "\r" not in msg
    return msg


# --------------------------------------------------------------------------------------------
# Devices


def test_import_does_not_load_portaudio():
    code = "import sys, voxcli.audio.capture; assert 'sounddevice' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lists_the_virtual_mic_once(vmic):
    devices = list_input_devices()
    mics = [d for d in devices if d.name == vmic.device_name]
    assert len(mics) == 1
    (mic,) = mics
    assert mic.hostapi == "ALSA"
    assert mic.channels >= 1
    assert mic.default_rate == RATE
    assert len({d.index for d in devices}) == len(devices)
    assert sum(d.is_default for d in devices) <= 1


# --------------------------------------------------------------------------------------------
# Microphone capture


@pytest.mark.parametrize("beyond_speech", [False, True], ids=["within-speech", "into-padding"])
def test_mic_delivers_the_device_samples_exactly(vmic, beyond_speech):
    seconds = math.ceil(len(vmic.speech) / RATE) + 0.5 if beyond_speech else 2.0
    n = round(seconds * RATE)
    expected = np.concatenate([vmic.speech, np.zeros(max(0, n - len(vmic.speech)), np.float32)])[:n]
    with MicSource(vmic.device_name, max_seconds=seconds) as src:
        items = drain(src)
    assert src.sample_rate == RATE
    got = joined(items)
    assert got.dtype == np.float32
    assert np.array_equal(got, expected)
    assert src.captured_samples == n
    assert (src.dropped_blocks, src.dropped_samples) == (0, 0)
    assert src.error is None
    assert all(len(b) <= src.block_frames for _, b in items)
    stamps = [t for t, _ in items]
    assert stamps == sorted(stamps) and stamps[0] >= src.t_started


def test_mic_by_index_and_default(vmic):
    (mic,) = [d for d in list_input_devices() if d.name == vmic.device_name]
    for device in (mic.index, str(mic.index)) + ((None,) if mic.is_default else ()):
        with MicSource(device, max_seconds=0.1) as src:
            got = joined(drain(src))
        assert src.device_info.name == vmic.device_name
        assert np.array_equal(got, vmic.speech[: round(0.1 * RATE)])


def test_stalled_consumer_loses_audio_but_counts_every_sample(vmic, monkeypatch):
    escaped = []  # an exception escaping the callback reaches sys.unraisablehook via cffi
    monkeypatch.setattr(sys, "unraisablehook", escaped.append)
    seconds = 2.0
    src = MicSource(vmic.device_name, queue_s=0.1, max_seconds=seconds)
    with src:
        assert src.finished.wait(20), "capture never reached max_seconds"
        kept = joined(drain(src))  # only now does the consumer read
    assert src.dropped_blocks > 0
    assert src.captured_samples == round(seconds * RATE)
    assert len(kept) + src.dropped_samples == src.captured_samples
    # The queue filled first, then later blocks were dropped: what was kept is the beginning.
    assert len(kept) == src.blocks.maxsize * src.block_frames
    assert np.array_equal(kept, vmic.speech[: len(kept)])
    # The callback never raised: not into cffi, nor into its own safety net (.error).
    assert escaped == []
    assert src.error is None


def test_stop_is_idempotent_and_keeps_what_was_queued(vmic):
    src = MicSource(vmic.device_name, max_seconds=1.0)
    src.start()
    assert src.finished.wait(20)
    src.stop()
    src.stop()
    assert len(joined(drain(src))) == RATE
    assert src.error is None
    with pytest.raises(RuntimeError):
        src.start()


def test_stop_before_start_is_harmless():
    src = MicSource("anything")
    src.stop()
    assert src.finished.is_set()


def test_device_that_stops_on_its_own_sets_error(vmic):
    # PortAudio ending the stream without our asking (what an unplugged device does) goes
    # through the same finished callback as aborting it under the source's feet.
    src = MicSource(vmic.device_name)  # unbounded: the device only stops when it fails
    src.start()
    try:
        deadline = time.monotonic() + 10
        while src.blocks.empty():
            assert time.monotonic() < deadline, "no audio arrived"
            time.sleep(0.001)
        src._stream.abort()
        assert src.finished.wait(5)
        assert src.error and "\n" not in src.error and "stopped" in src.error
    finally:
        src.stop()
    assert src.blocks.qsize() > 0  # what came before the failure is still there


# --------------------------------------------------------------------------------------------
# Errors at open


def test_unknown_device_name_lists_the_devices(vmic):
    with pytest.raises(AudioError) as err:
        MicSource("no-such-microphone").start()
    msg = assert_one_line(err)
    assert "no-such-microphone" in msg and vmic.device_name in msg


@pytest.mark.parametrize("index", [99, "99", -5])
def test_index_out_of_range(vmic, index):
    with pytest.raises(AudioError) as err:
        MicSource(index).start()
    msg = assert_one_line(err)
    assert "index" in msg and vmic.device_name in msg


@pytest.mark.parametrize("device", [None, "vmic", 0])
def test_no_input_device_at_all(no_mic, device):
    assert list_input_devices() == []
    src = MicSource(device)
    with pytest.raises(AudioError) as err:
        src.start()
    assert assert_one_line(err).startswith("no audio input device found")
    assert src.finished.is_set()


def test_portaudio_missing_gives_the_install_hint(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    for call in (MicSource().start, list_input_devices):
        with pytest.raises(AudioError) as err:
            call()
        msg = assert_one_line(err)
        assert "PortAudio is not installed" in msg
        assert "sudo apt-get install libportaudio2" in msg and "macOS" in msg


@pytest.mark.parametrize(
    "kwargs",
    [{"block_ms": 0}, {"block_ms": 2.5}, {"queue_s": 0}, {"queue_s": math.nan},
     {"max_seconds": 0}, {"max_seconds": math.inf}],
)
def test_bad_arguments_are_rejected_early(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MicSource(**kwargs)


# --------------------------------------------------------------------------------------------
# File replay


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 1.0 s clip of speech (decoded: exactly 16000 samples)."""
    tmp = tmp_path_factory.mktemp("clip")
    full = make_speech(tmp / "full.wav", "Hello there, this is a replayed file.")
    path = trim(full, tmp / "clip.wav", 0.2, 1.0)
    samples = load_audio(path)
    assert len(samples) == RATE
    return path, samples


@pytest.mark.parametrize("speed", [0.0, math.inf])
def test_file_replay_as_fast_as_possible_delivers_the_file_exactly(clip, speed):
    path, samples = clip
    with FileSource(path, speed=speed) as src:
        items = drain(src)
    assert src.sample_rate == RATE
    assert np.array_equal(joined(items), samples)
    assert src.dropped_blocks == 0 and src.error is None
    assert [len(b) for _, b in items] == [src.block_frames] * (RATE // src.block_frames)


@pytest.mark.parametrize("speed", [1.0, 4.0])
def test_file_replay_is_paced_by_the_wall_clock(clip, speed):
    path, samples = clip
    with FileSource(path, speed=speed) as src:
        items = drain(src)
    assert np.array_equal(joined(items), samples)
    stamps = np.array([t for t, _ in items])
    assert np.all(np.diff(stamps) > 0)
    # Lower bounds only (a slow machine is late, never early): each block arrives no sooner
    # than a microphone could have delivered it, and the whole clip spans its duration.
    ends = np.cumsum([len(b) for _, b in items]) / RATE / speed
    assert np.all(stamps - src.t_started >= ends)
    assert stamps[-1] - stamps[0] >= 0.9 * (len(samples) / RATE) / speed


def test_file_replay_honours_max_seconds(clip):
    path, samples = clip
    with FileSource(path, speed=0, max_seconds=0.51) as src:
        got = joined(drain(src))
    assert np.array_equal(got, samples[: round(0.51 * RATE)])
    assert src.captured_samples == len(got)


def test_file_replay_to_a_stalled_consumer_counts_drops(clip):
    path, samples = clip
    with FileSource(path, speed=0, queue_s=0.1) as src:
        assert src.finished.wait(10)
        kept = joined(drain(src))
    assert src.dropped_blocks > 0
    assert len(kept) + src.dropped_samples == src.captured_samples == len(samples)
    assert np.array_equal(kept, samples[: len(kept)])


def test_file_replay_stops_promptly(clip):
    path, _ = clip
    src = FileSource(path, speed=1.0)
    src.start()
    src.blocks.get(timeout=5)
    src.stop()
    src.stop()
    assert src.finished.is_set() and not src._thread.is_alive()
    assert src.captured_samples < RATE


def test_file_replay_of_a_missing_file(tmp_path):
    src = FileSource(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="no such file"):
        src.start()
    assert src.finished.is_set()


def test_bad_speed_is_rejected(clip):
    for speed in (-1.0, math.nan):
        with pytest.raises(ValueError, match="speed"):
            FileSource(clip[0], speed=speed)


# --------------------------------------------------------------------------------------------
# Level meter


def test_level_db():
    t = np.arange(RATE) / RATE
    assert level_db(np.sin(2 * np.pi * 440 * t)) == pytest.approx(-3.01, abs=0.01)
    assert level_db(np.full(320, 0.5, np.float32)) == pytest.approx(-6.02, abs=0.01)
    assert level_db(np.zeros(320, np.float32)) == pytest.approx(-200.0)
    assert level_db(np.zeros(0, np.float32)) == pytest.approx(-200.0)


# --------------------------------------------------------------------------------------------
# 16 kHz out, whatever the device's rate


class _ScriptedSource(_Source):
    """A source at any rate, fed by the test: the consumer side (``stream``) is what is tested."""

    def __init__(self, rate: int, blocks: list[np.ndarray]) -> None:
        super().__init__(block_ms=20, queue_s=60.0, max_seconds=None)
        self._rate, self._script = rate, blocks

    def start(self) -> None:
        self._begin(self._rate)
        for block in self._script:
            self._offer(time.perf_counter(), block)
        self.finished.set()

    def stop(self) -> None:
        self.finished.set()


@pytest.mark.parametrize("rate", [48000, 44100, RATE])
def test_stream_delivers_16k_whatever_the_device_rate(rate):
    t = np.arange(3 * rate) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    block = rate // 50
    src = _ScriptedSource(rate, [tone[i:i + block] for i in range(0, len(tone), block)])
    src.start()
    items = [item for item in src.stream(0.01) if item is not None]
    got = joined(items)
    assert got.dtype == np.float32
    assert len(got) == 3 * RATE  # every sample, the resampler's look-ahead included
    # The same audio as resampling the whole recording at once, away from its two edges.
    whole = resample(tone, rate, RATE)
    assert np.max(np.abs(got[800:-800] - whole[800:-800])) < 1e-3
    if rate == RATE:
        assert np.array_equal(got, tone)  # nothing touched at the model's own rate


def test_stream_before_start_is_an_error():
    with pytest.raises(RuntimeError):
        next(FileSource("x.wav").stream(0.01))
