"""Live audio sources: the microphone, and a file replayed as if it were one.

Both sources share one contract, which is all the consumer (the engine thread) relies on::

    source.start()                      # AudioError (one line) if it cannot start
    for item in source.stream(poll_s):  # until everything captured has been delivered
        if item is None: ...            # nothing came within poll_s: do other work
        t_captured, samples = item      # float32 mono at 16 kHz, whatever the device's rate
    source.stop()                       # idempotent, thread-safe; what is queued stays queued

A device that refuses 16 kHz is opened at its own rate (``sample_rate``) and resampled in
``stream()`` with soxr's streaming resampler, in the consumer's thread: the PortAudio callback only
copies and enqueues. ``blocks`` is the raw queue at ``sample_rate`` underneath.

``t_captured`` is ``time.perf_counter()`` when the block became available: for the microphone,
on entry to the PortAudio callback, i.e. just after the block's last sample was recorded plus the
host's buffering. PortAudio's own ``time.inputBufferAdcTime`` is not used: through ALSA it is not
even monotonic (on the file-backed test device it jumps back and forth by a block), and it is on
a different clock from the one the consumer reads.

The queue is bounded (``queue_s`` seconds of blocks). A producer never waits for the consumer: a
block that does not fit is dropped and counted in ``dropped_blocks``/``dropped_samples``, so lost
audio is always reported, never silent. ``captured_samples`` counts every sample produced, kept
or dropped; ``max_seconds`` bounds that count (a stalled consumer does not stretch the
recording), and once reached the source puts nothing more and sets ``finished``.

sounddevice is imported lazily so ``import voxcli.audio.capture`` works without PortAudio installed.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Iterator

import numpy as np

from voxcli.audio.decode import SAMPLE_RATE, load_audio
from voxcli.audio.devices import (
    DeviceInfo,
    default_input,
    list_input_devices,
    load_sounddevice,
    pick_rate,
    resolve_device,
)
from voxcli.audio.levels import rms_db
from voxcli.errors import AudioError
from voxcli.errors import one_line as _one_line

__all__ = ["DeviceInfo", "list_input_devices", "MicSource", "FileSource", "level_db"]

class _Source:
    """The queue, counters and end-of-stream bookkeeping both sources share."""

    def __init__(self, *, block_ms: int, queue_s: float, max_seconds: float | None) -> None:
        if isinstance(block_ms, bool) or not isinstance(block_ms, int) or not 1 <= block_ms <= 1000:
            raise ValueError(f"block_ms must be an integer in [1, 1000], got {block_ms!r}")
        if not (isinstance(queue_s, (int, float)) and 0 < queue_s < math.inf):
            raise ValueError(f"queue_s must be a positive number of seconds, got {queue_s!r}")
        if max_seconds is not None and not (
            isinstance(max_seconds, (int, float)) and 0 < max_seconds < math.inf
        ):
            raise ValueError(f"max_seconds must be a positive number or None, got {max_seconds!r}")
        self.block_ms = block_ms
        self.queue_s = float(queue_s)
        self.max_seconds = max_seconds
        self.blocks: queue.Queue[tuple[float, np.ndarray]] = queue.Queue(
            maxsize=max(1, math.ceil(queue_s * 1000 / block_ms))
        )
        self.sample_rate: int | None = None  # known once started
        self.captured_samples = 0  # every sample produced, kept or dropped
        self.dropped_blocks = 0
        self.dropped_samples = 0
        self.input_overflows = 0  # host-side input losses PortAudio reported (the microphone only)
        self.finished = threading.Event()
        self.error: str | None = None  # one line, set when the source failed mid-stream
        self.t_started: float | None = None  # perf_counter() when capture began
        self._max_samples: int | None = None
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False

    @property
    def block_frames(self) -> int:
        if self.sample_rate is None:
            raise RuntimeError("the source has not been started")
        return max(1, round(self.sample_rate * self.block_ms / 1000))

    def _begin(self, sample_rate: int) -> None:
        with self._lock:
            if self._started or self._stopped:
                raise RuntimeError("a source can only be started once, and not after stop()")
            self._started = True
        self.sample_rate = int(sample_rate)
        if self.max_seconds is not None:
            self._max_samples = max(1, round(self.max_seconds * self.sample_rate))

    def _offer(self, t_captured: float, block: np.ndarray) -> None:
        """Queue one block without ever waiting; count it if it does not fit."""
        if self.finished.is_set():
            return
        last = False
        if self._max_samples is not None:
            room = self._max_samples - self.captured_samples
            if len(block) >= room:
                block, last = block[:room], True
        self.captured_samples += len(block)
        try:
            self.blocks.put_nowait((t_captured, block))
        except queue.Full:
            self.dropped_blocks += 1
            self.dropped_samples += len(block)
        if last:
            self.finished.set()

    @property
    def backlog(self) -> int:
        """Blocks captured and not yet taken by the consumer."""
        return self.blocks.qsize()

    def stream(self, poll_s: float) -> Iterator[tuple[float, np.ndarray] | None]:
        """Everything captured, as ``(t_captured, samples)`` with 16 kHz mono float32 samples,
        until the source has delivered all it will; ``None`` whenever no block came within
        ``poll_s``. Call ``stop()`` between items to end capture: what is queued still comes."""
        if self.sample_rate is None:
            raise RuntimeError("the source has not been started")
        resampler = None
        if self.sample_rate != SAMPLE_RATE:
            import soxr

            resampler = soxr.ResampleStream(self.sample_rate, SAMPLE_RATE, 1, dtype="float32")
        while True:
            try:
                t_captured, block = self.blocks.get(timeout=poll_s)
            except queue.Empty:
                if self.finished.is_set() and self.blocks.empty():
                    break
                yield None
                continue
            samples = block if resampler is None else resampler.resample_chunk(block)
            if len(samples):
                yield t_captured, samples
        if resampler is not None:  # the resampler's look-ahead, kept until now
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                yield time.perf_counter(), tail

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = _one_line(message)
        self.finished.set()

    def _claim_stop(self) -> bool:
        """True for the one caller that should do the stopping."""
        with self._lock:
            if self._stopped:
                return False
            self._stopped = True
            return True

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class MicSource(_Source):
    """Capture mono float32 from an input device through PortAudio (sounddevice).

    ``device``: ``None`` for the system default input, an int index (a string of digits counts
    as one), or a name (sounddevice's substring match: "USB", "hw:1,0"). The stream opens at
    16 kHz when the device accepts it, else at the device's default rate: see ``sample_rate``.
    ``input_overflows`` counts callbacks where PortAudio reported that the host lost input (the
    callback ran too late); that loss happens before the audio reaches us, so it is not in
    ``dropped_*``. If the device fails or disappears mid-stream, ``error`` says so in one line
    and ``finished`` is set; what was captured before stays queued.
    """

    def __init__(
        self,
        device: str | int | None = None,
        *,
        block_ms: int = 20,
        queue_s: float = 10.0,
        max_seconds: float | None = None,
    ) -> None:
        super().__init__(block_ms=block_ms, queue_s=queue_s, max_seconds=max_seconds)
        self.device = device
        self.device_info: DeviceInfo | None = None
        self._stream = None
        self._stopping = False

    def check(self) -> None:
        """Resolve the device and its rate without opening it: errors come before a model loads."""
        sd = load_sounddevice()
        info = resolve_device(sd, self.device)
        pick_rate(sd, info["index"], info["name"], int(info["default_samplerate"]))

    def start(self) -> None:
        try:
            self._open()
        except AudioError:
            self.finished.set()
            raise

    def _open(self) -> None:
        sd = load_sounddevice()
        info = resolve_device(sd, self.device)
        index, name = info["index"], info["name"]
        rate = pick_rate(sd, index, name, int(info["default_samplerate"]))
        self.device_info = DeviceInfo(
            index=index,
            name=name,
            hostapi=sd.query_hostapis(info["hostapi"])["name"],
            channels=int(info["max_input_channels"]),
            default_rate=float(info["default_samplerate"]),
            is_default=index == default_input(sd),
        )
        self._begin(rate)
        try:
            self._stream = sd.InputStream(
                device=index,
                samplerate=rate,
                channels=1,
                dtype="float32",
                blocksize=self.block_frames,
                callback=self._callback,
                finished_callback=self._on_finished,
            )
            self.t_started = time.perf_counter()
            self._stream.start()
        except (sd.PortAudioError, ValueError) as e:
            self._close_quietly()
            raise AudioError(
                f"cannot open audio input device [{index}] {name} ({_one_line(str(e))})"
            ) from None

    def _callback(self, indata, frames, time_info, status) -> None:
        # Runs on PortAudio's thread, under a real-time deadline: copy, enqueue, count. Nothing
        # may escape: an exception here would only be printed by cffi and capture would go on
        # silently broken, so it is recorded as the source's error instead.
        t_captured = time.perf_counter()
        try:
            if status.input_overflow:
                self.input_overflows += 1
            self._offer(t_captured, indata[:, 0].copy())
        except BaseException as e:  # noqa: BLE001 - see above
            self._fail(f"audio callback failed: {type(e).__name__}: {e}")

    def _on_finished(self) -> None:
        # PortAudio calls this whenever the stream becomes inactive; unless we asked for that,
        # the device failed or went away (unplugged, taken by another program, ...).
        if not self._stopping:
            self._fail("the audio input device stopped delivering audio (disconnected or failed)")

    def stop(self) -> None:
        """Stop and close the stream; safe to call repeatedly, from any thread, before start()."""
        if not self._claim_stop():
            return
        self._stopping = True
        try:
            if self._stream is not None:
                import sounddevice as sd  # already imported: a stream exists

                try:
                    self._stream.stop()
                except sd.PortAudioError as e:
                    self._fail(f"audio input device failed ({_one_line(str(e))})")
                self._close_quietly()
        finally:
            self.finished.set()

    def _close_quietly(self) -> None:
        if self._stream is None:
            return
        try:
            self._stream.close(ignore_errors=True)
        except Exception:  # noqa: BLE001 - a vanished device may fail to close; nothing to save
            pass


class FileSource(_Source):
    """Replay an audio file through the microphone's path, paced by the wall clock.

    The file is decoded to 16 kHz mono (``load_audio``) when started; a thread then puts
    ``block_ms`` blocks on the queue, each at the moment a microphone would have delivered it:
    block n (ending at sample e) at ``t_started + e / 16000 / speed``. Deadlines are absolute, so
    a late wake-up does not delay the blocks after it. ``speed=1.0`` is real time, ``2.0`` twice
    as fast, ``0`` (or ``inf``) as fast as possible. Drops are counted exactly as for the
    microphone, so with ``speed=0`` give a ``queue_s`` at least as long as the file if the
    consumer must not lose audio. At the end of the file ``finished`` is set.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        speed: float = 1.0,
        block_ms: int = 20,
        queue_s: float = 10.0,
        max_seconds: float | None = None,
    ) -> None:
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed >= 0:
            raise ValueError(f"speed must be >= 0 (0 or inf: as fast as possible), got {speed!r}")
        super().__init__(block_ms=block_ms, queue_s=queue_s, max_seconds=max_seconds)
        self.path = path
        self.speed = float(speed)
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: np.ndarray | None = None

    def check(self) -> None:
        """Decode the file now (kept for ``start``): a bad file fails before a model loads."""
        if self._samples is None:
            try:
                self._samples = load_audio(self.path)
            except AudioError:
                self.finished.set()
                raise

    def start(self) -> None:
        self.check()
        samples = self._samples
        self._begin(SAMPLE_RATE)
        self._thread = threading.Thread(
            target=self._run, args=(samples,), name="voxcli-file-source", daemon=True
        )
        self.t_started = time.perf_counter()
        self._thread.start()

    def _run(self, samples: np.ndarray) -> None:
        paced = 0 < self.speed < math.inf
        step, t0 = self.block_frames, self.t_started
        try:
            for begin in range(0, len(samples), step):
                end = min(begin + step, len(samples))
                if paced:
                    deadline = t0 + end / self.sample_rate / self.speed
                    # Loop: Event.wait may return a hair early by perf_counter's reckoning.
                    while (delay := deadline - time.perf_counter()) > 0:
                        if self._stop_event.wait(delay):
                            return
                if self._stop_event.is_set():
                    return
                self._offer(time.perf_counter(), samples[begin:end].copy())
                if self.finished.is_set():  # max_seconds reached
                    return
        except BaseException as e:  # noqa: BLE001 - no thread dies silently
            self._fail(f"file replay failed: {type(e).__name__}: {e}")
        finally:
            self.finished.set()

    def stop(self) -> None:
        """Stop replaying; safe to call repeatedly, from any thread, before start()."""
        if not self._claim_stop():
            return
        self._stop_event.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.finished.set()


# --------------------------------------------------------------------------------------------
# Level meter


def level_db(block: np.ndarray) -> float:
    """RMS level of a block in dBFS (a full-scale sine is about -3); silence gives -200."""
    return rms_db(block)


