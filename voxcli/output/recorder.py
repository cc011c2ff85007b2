"""Session files written while listening: audio (WAV), token events (JSONL), transcript (text).

Every write leaves valid files behind: the WAV header is patched after each block, and every
JSONL line and transcript delta goes straight to the file, so even an abrupt exit (a second
Ctrl-C) loses nothing that was written. A write that fails (a full disk, a vanished drive) cuts
each file back to its last whole record, so they stay valid up to that point; the recorder then
stops saving and says so once (``failure``), and the session goes on without it.
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import numpy as np

from voxcli.errors import ConfigError, setting
from voxcli.events import TokenEvent

SAMPLE_RATE = 16000


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

    def overwrite(self, offset: int, data: bytes) -> None:
        """Rewrite bytes already on disk (a header field): no new space is needed."""
        self._f.seek(offset)
        self._f.write(data)

    def close(self) -> None:
        self._f.close()


class SessionRecorder:
    """``DIR/voxcli-YYYYmmdd-HHMMSS.{wav,jsonl,txt}``: a new stem per session, never overwriting.

    The WAV is mono 32-bit float, exactly what the engine heard (no requantisation).
    """

    _WAV_HEADER = 44

    def __init__(self, directory: str | Path, sample_rate: int = SAMPLE_RATE, *, meta: dict | None = None) -> None:
        directory = check_directory(directory)
        stem = time.strftime("voxcli-%Y%m%d-%H%M%S")
        n = 1
        while any((directory / f"{stem}{ext}").exists() for ext in (".wav", ".jsonl", ".txt")):
            n += 1
            stem = time.strftime("voxcli-%Y%m%d-%H%M%S") + f"-{n}"
        self.sample_rate = sample_rate
        self.wav_path = directory / f"{stem}.wav"
        self.jsonl_path = directory / f"{stem}.jsonl"
        self.text_path = directory / f"{stem}.txt"
        self.n_samples = 0
        self.failure: str | None = None  # one line, once a write has failed
        self._wav = _File(self.wav_path)
        self._jsonl = _File(self.jsonl_path)
        self._text = _File(self.text_path)
        self._guard(self._wav, self._wav.append, self._wav_header(0))
        self._write_line({"type": "session", "sample_rate": sample_rate, **(meta or {})})

    @property
    def paths(self) -> list[Path]:
        return [self.wav_path, self.jsonl_path, self.text_path]

    @property
    def saved_s(self) -> float:
        return self.n_samples / self.sample_rate

    def _wav_header(self, n: int) -> bytes:
        data = n * 4
        return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE"
                + b"fmt " + struct.pack("<IHHIIHH", 16, 3, 1, self.sample_rate, self.sample_rate * 4, 4, 32)
                + b"data" + struct.pack("<I", data))

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
        if not len(samples) or not self._guard(
                self._wav, self._wav.append, np.asarray(samples, dtype="<f4").tobytes()):
            return
        self.n_samples += len(samples)
        self._guard(self._wav, self._patch_wav_header)

    def _patch_wav_header(self) -> None:
        self._wav.overwrite(4, struct.pack("<I", 36 + self.n_samples * 4))
        self._wav.overwrite(40, struct.pack("<I", self.n_samples * 4))

    def write_event(self, event: TokenEvent, *, transcript: bool = True, **extra) -> None:
        """A token row; its text also goes to the transcript unless ``transcript`` is False (the
        provisional stream of two-pass transcription: the transcript holds the final text)."""
        self._write_line({"type": "token", **event.to_dict(), **extra})
        if event.text and transcript:
            self._guard(self._text, self._text.append, event.text.encode("utf-8"))

    def write_summary(self, summary: dict) -> None:
        self._write_line({"type": "summary", **summary})

    def write_row(self, row: dict) -> None:
        """Any other JSONL row (an endpoint)."""
        self._write_line(row)

    def _write_line(self, obj: dict) -> None:
        self._guard(self._jsonl, self._jsonl.append, (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))

    def close(self) -> None:
        self._guard(self._text, self._text.append, b"\n")
        for f in (self._wav, self._jsonl, self._text):
            f.close()
