"""Session files written while listening: audio (WAV), token events (JSONL), transcript (text),
and subtitles (SRT and WebVTT), each cue written as it closes (:class:`voxcli.output.cues.LiveCues`:
at an end of speech, or once the next cue has begun), so both files are whole after every write.

Every write leaves valid files behind: the WAV is written by libsndfile (soundfile), which
rewrites its header after each block and turns it into RF64 once the data passes 4 GiB (about
18.6 h of float32; plain WAV below that); every JSONL line and transcript delta goes straight to
the file, so even an abrupt exit (a second Ctrl-C) loses nothing that was written. A write that fails (a full disk, a vanished drive) cuts
each file back to its last whole record, so they stay valid up to that point; the recorder then
stops saving and says so once (``failure``), and the session goes on without it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile

from voxcli.errors import ConfigError, setting
from voxcli.events import TokenEvent
from voxcli.output.cues import LiveCues
from voxcli.output.formats import VTT_HEADER, srt_block, vtt_block
from voxcli.units import SAMPLE_RATE

# libsndfile commands (sndfile.h) soundfile has no method for:
SFC_SET_UPDATE_HEADER_AUTO = 0x1061  # rewrite the header after every write: valid after each block
SFC_RF64_AUTO_DOWNGRADE = 0x1210  # an RF64 file that stays plain WAV until it passes 4 GiB


def check_directory(directory: str | Path) -> Path:
    """Create ``directory`` if needed and prove a file can be written there, before any model
    loads. A directory that cannot be used is a bad ``listen.save_dir``: ConfigError, one line."""
    path = Path(directory).expanduser()
    probe = path / f".voxcli-write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"session directory {directory} ({setting('listen.save_dir')}) cannot be written: "
                          f"{reason}", path=str(directory)) from None
    return path


class _File:
    """An unbuffered file that knows the length of its last whole record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "wb", buffering=0)
        self.good = 0  # bytes known to be whole records

    def append(self, data: bytes) -> None:
        self._f.seek(self.good)
        try:
            view = memoryview(data)
            while view:  # a raw write may be partial; ENOSPC raises on the next one
                view = view[self._f.write(view):]
        except OSError:
            self._f.truncate(self.good)  # needs no space: the file is valid again
            raise
        self.good += len(data)

    def close(self) -> None:
        self._f.close()


class _WavIO:
    """The file under libsndfile (its virtual I/O: seek, tell, read, write): a write that fails
    keeps its OSError for the caller and writes nothing, so the file never holds half a block."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "w+b", buffering=0)
        self.error: OSError | None = None

    def write(self, data) -> int:
        if self.error is not None:
            return 0
        start = self._f.tell()
        try:
            view = memoryview(data)
            while view:
                view = view[self._f.write(view):]
        except OSError as exc:
            self.error = exc
            self._f.truncate(start)  # needs no space
            self._f.seek(start)
            return 0
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def truncate(self, size: int) -> None:
        self._f.truncate(size)

    def close(self) -> None:
        self._f.close()


class _Wav:
    """Mono float32 WAV through soundfile (see the module's docstring)."""

    def __init__(self, path: Path, sample_rate: int, io_class=_WavIO) -> None:
        self.path = path
        self.io = io_class(path)
        self.file = soundfile.SoundFile(self.io, "w", sample_rate, 1, subtype="FLOAT", format="RF64")
        for command in (SFC_RF64_AUTO_DOWNGRADE, SFC_SET_UPDATE_HEADER_AUTO):
            soundfile._snd.sf_command(self.file._file, command, soundfile._ffi.NULL, soundfile._snd.SF_TRUE)
        self.data_start = self.io.tell()
        self.frames = 0

    def append(self, samples: np.ndarray) -> None:
        try:
            self.file.write(samples)
        except (RuntimeError, AssertionError):
            pass  # a short write: the reason is the I/O error below
        if self.io.error is not None:
            # Back to the last whole block; closing rewrites the header from the file's length.
            self.io.truncate(self.data_start + self.frames * 4)
            self.io.seek(0, os.SEEK_END)
            error, self.io.error = self.io.error, None
            self.close()
            raise error
        self.frames += len(samples)

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
            self.io.close()


EXTENSIONS = (".wav", ".jsonl", ".txt", ".srt", ".vtt")


class SessionRecorder:
    """``DIR/voxcli-YYYYmmdd-HHMMSS.{wav,jsonl,txt,srt,vtt}``: a new stem per session, never overwriting.

    The WAV is mono 32-bit float, exactly what the engine heard (no requantisation).
    """

    def __init__(self, directory: str | Path, sample_rate: int = SAMPLE_RATE, *, meta: dict | None = None) -> None:
        directory = check_directory(directory)
        stem = time.strftime("voxcli-%Y%m%d-%H%M%S")
        n = 1
        while any((directory / f"{stem}{ext}").exists() for ext in EXTENSIONS):
            n += 1
            stem = time.strftime("voxcli-%Y%m%d-%H%M%S") + f"-{n}"
        self.sample_rate = sample_rate
        self.wav_path = directory / f"{stem}.wav"
        self.jsonl_path = directory / f"{stem}.jsonl"
        self.text_path = directory / f"{stem}.txt"
        self.srt_path = directory / f"{stem}.srt"
        self.vtt_path = directory / f"{stem}.vtt"
        self.n_samples = 0
        self.failure: str | None = None  # one line, once a write has failed
        self._wav = _Wav(self.wav_path, sample_rate)
        self._jsonl = _File(self.jsonl_path)
        self._text = _File(self.text_path)
        self._srt = _File(self.srt_path)
        self._vtt = _File(self.vtt_path)
        self._cues = LiveCues()
        self._n_cues = 0
        self._write_line({"type": "session", "sample_rate": sample_rate, **(meta or {})})
        self._guard(self._vtt, self._vtt.append, VTT_HEADER.encode())

    @property
    def paths(self) -> list[Path]:
        return [self.wav_path, self.jsonl_path, self.text_path, self.srt_path, self.vtt_path]

    @property
    def saved_s(self) -> float:
        return self.n_samples / self.sample_rate

    def _guard(self, file: _File, write, *args) -> bool:
        if self.failure is not None:
            return False
        try:
            write(*args)
            return True
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            self.failure = (f"cannot write {file.path} ({reason}); saving stopped with {self.saved_s:.1f} s "
                            f"of audio saved, the files are valid up to there")
            return False

    def write_audio(self, samples: np.ndarray) -> None:
        if len(samples) and self._guard(self._wav, self._wav.append, np.asarray(samples, dtype=np.float32)):
            self.n_samples += len(samples)

    def write_event(self, event: TokenEvent, *, transcript: bool = True, **extra) -> None:
        """A token row; its text also goes to the transcript unless ``transcript`` is False (the
        provisional stream of two-pass transcription: the transcript holds the final text)."""
        self._write_line({"type": "token", **event.to_dict(), **extra})
        if event.text and transcript:
            self._guard(self._text, self._text.append, event.text.encode("utf-8"))
        if transcript:  # an utterance is a segment of the subtitles: an end of speech ends a cue
            self._write_cues(self._cues.add(replace(event, segment=extra.get("utterance", event.segment))))

    def write_summary(self, summary: dict) -> None:
        self._write_line({"type": "summary", **summary})

    def write_row(self, row: dict) -> None:
        """Any other JSONL row (an endpoint: the cues so far close)."""
        self._write_line(row)
        if row.get("type") == "endpoint":
            self._write_cues(self._cues.end())

    def _write_cues(self, cues) -> None:
        for cue in cues:
            self._n_cues += 1
            gap = b"\n" if self._n_cues > 1 else b""
            self._guard(self._srt, self._srt.append, gap + srt_block(self._n_cues, cue).encode("utf-8"))
            self._guard(self._vtt, self._vtt.append, b"\n" + vtt_block(cue).encode("utf-8"))

    def _write_line(self, obj: dict) -> None:
        self._guard(self._jsonl, self._jsonl.append, (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))

    def close(self) -> None:
        self._write_cues(self._cues.finish(self.saved_s))
        self._guard(self._text, self._text.append, b"\n")
        for f in (self._wav, self._jsonl, self._text, self._srt, self._vtt):
            f.close()
