"""Session files written while listening: audio (WAV), token events (JSONL), transcript (text).

Every write leaves valid files behind: the WAV header is patched after each block, and every
JSONL line and transcript delta is flushed, so even an abrupt exit (a second Ctrl-C) loses
nothing that was written.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np

from voxcli.events import TokenEvent


class FloatWavWriter:
    """Mono 32-bit float WAV whose header is correct after every ``write``.

    Float samples keep exactly what the engine heard (no requantisation to 16-bit).
    """

    _HEADER = 44

    def __init__(self, path: Path, sample_rate: int) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self.n_samples = 0
        self._f = open(path, "wb")
        self._f.write(self._header(0))
        self._f.flush()

    def _header(self, n: int) -> bytes:
        data = n * 4
        return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE"
                + b"fmt " + struct.pack("<IHHIIHH", 16, 3, 1, self.sample_rate, self.sample_rate * 4, 4, 32)
                + b"data" + struct.pack("<I", data))

    def write(self, samples: np.ndarray) -> None:
        if self._f.closed or not len(samples):
            return
        self._f.seek(0, 2)
        self._f.write(np.asarray(samples, dtype="<f4").tobytes())
        self.n_samples += len(samples)
        self._f.seek(4)
        self._f.write(struct.pack("<I", 36 + self.n_samples * 4))
        self._f.seek(40)
        self._f.write(struct.pack("<I", self.n_samples * 4))
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class SessionRecorder:
    """``DIR/voxcli-YYYYmmdd-HHMMSS.{wav,jsonl,txt}``: a new stem per session, never overwriting."""

    def __init__(self, directory: str | Path, sample_rate: int = 16000, *, meta: dict | None = None) -> None:
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        stem = time.strftime("voxcli-%Y%m%d-%H%M%S")
        n = 1
        while any((directory / f"{stem}{ext}").exists() for ext in (".wav", ".jsonl", ".txt")):
            n += 1
            stem = time.strftime("voxcli-%Y%m%d-%H%M%S") + f"-{n}"
        self.wav_path = directory / f"{stem}.wav"
        self.jsonl_path = directory / f"{stem}.jsonl"
        self.text_path = directory / f"{stem}.txt"
        self.wav = FloatWavWriter(self.wav_path, sample_rate)
        self._jsonl = open(self.jsonl_path, "w", encoding="utf-8")
        self._text = open(self.text_path, "w", encoding="utf-8")
        self._write_line({"type": "session", "sample_rate": sample_rate, **(meta or {})})

    @property
    def paths(self) -> list[Path]:
        return [self.wav_path, self.jsonl_path, self.text_path]

    def write_audio(self, samples: np.ndarray) -> None:
        self.wav.write(samples)

    def write_event(self, event: TokenEvent, **extra) -> None:
        self._write_line({"type": "token", **event.to_dict(), **extra})
        if event.text and not self._text.closed:
            self._text.write(event.text)
            self._text.flush()

    def write_summary(self, summary: dict) -> None:
        self._write_line({"type": "summary", **summary})

    def _write_line(self, obj: dict) -> None:
        if not self._jsonl.closed:
            self._jsonl.write(json.dumps(obj, ensure_ascii=False) + "\n")
            self._jsonl.flush()

    def close(self) -> None:
        if not self._text.closed:
            self._text.write("\n")
        for f in (self._jsonl, self._text):
            f.close()
        self.wav.close()
