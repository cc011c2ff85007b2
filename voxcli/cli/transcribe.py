"""`transcribe file`: decode each file, stream its tokens to a view, write the chosen format.

One bad file gets one line on stderr and the others still run. The model is loaded only when
the first file decodes, so a typo in a path costs nothing. Ctrl-C keeps what was transcribed:
finished files are written, the current one is written marked incomplete.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

from voxcli.config import Config
from voxcli.errors import AudioError, VoxcliError
from voxcli.events import FileStatus, Transcript
from voxcli.output.formats import render_transcript
from voxcli.output.tables import format_summary
from voxcli.output.view import FILE_REDRAW_S, LiveTranscript, NullView, PlainTranscript
from voxcli.units import seconds

EXTENSIONS = {"text": "txt", "json": "json", "jsonl": "jsonl", "srt": "srt", "vtt": "vtt"}
EXIT_INTERRUPTED = 130


@dataclass
class FileJob:
    paths: list[Path]
    cfg: Config
    output: Path | None = None
    debug: bool = False
    stdout: object = field(default_factory=lambda: sys.stdout)


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a transcript."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class _Outputs:
    """Where each transcript's document goes: stdout, one file, or one file per input in a directory."""

    def __init__(self, job: FileJob) -> None:
        self.fmt = job.cfg.output.format
        self.many = len(job.paths) > 1
        self.out = job.output
        self.stdout = job.stdout
        self.collected: list[Transcript] = []
        if self.out is not None and (self.many or self.out.is_dir()):
            if self.out.exists() and not self.out.is_dir():
                raise VoxcliError(f"-o {self.out} must be a directory when transcribing several files")
            self.out.mkdir(parents=True, exist_ok=True)
            self.to_dir = True
        else:
            self.to_dir = False
            if self.out is not None and not self.out.parent.exists():
                raise VoxcliError(f"-o {self.out}: directory {self.out.parent} does not exist")
        if self.out is None and self.many and self.fmt in ("srt", "vtt"):
            raise VoxcliError(f"{self.fmt} for several files needs -o DIR (one subtitle file per input)")

    @property
    def streams_text_to_stdout(self) -> bool:
        """Plain text to stdout is drawn token by token; nothing more is written at the end."""
        return self.out is None and self.fmt == "text"

    def emit(self, transcript: Transcript, path: Path) -> Path | None:
        doc = render_transcript(transcript, self.fmt)
        if self.to_dir:
            target = self.out / f"{path.stem}.{EXTENSIONS[self.fmt]}"
            _write_atomic(target, doc)
            return target
        if self.out is not None:
            _write_atomic(self.out, doc)
            return self.out
        if self.fmt == "json" and self.many:
            self.collected.append(transcript)  # one JSON array, written at the end
        elif not self.streams_text_to_stdout:
            self.stdout.write(doc)
            self.stdout.flush()
        return None

    def close(self) -> None:
        if self.collected:
            self.stdout.write(json.dumps([t.to_dict() for t in self.collected], ensure_ascii=False, indent=2) + "\n")
            self.stdout.flush()


def _view(outputs: _Outputs, cfg: Config, title: str, stdout, err: Console):
    plain = cfg.output.plain
    if outputs.streams_text_to_stdout:
        if not plain and stdout.isatty():
            return LiveTranscript(Console(file=stdout), title=title, min_redraw_s=FILE_REDRAW_S,
                                  low_confidence=cfg.output.low_confidence)
        return PlainTranscript(stdout)
    if not plain and err.is_terminal:
        return LiveTranscript(err, title=title, min_redraw_s=FILE_REDRAW_S, low_confidence=cfg.output.low_confidence)
    return NullView()


def run_files(job: FileJob, *, load_engine: Callable) -> int:
    """Transcribe every path in turn; returns the exit status (0 ok, 1 some failed, 130 Ctrl-C)."""
    from voxcli.audio.decode import load_audio
    from voxcli.live.runner import transcribe_audio

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    outputs = _Outputs(job)
    engine = None
    failed = 0
    language = None if job.cfg.transcription.language == "auto" else job.cfg.transcription.language
    try:
        for path in job.paths:
            try:
                audio = load_audio(path)
            except AudioError as exc:
                err.print(f"voxcli: error: {exc}", markup=False)
                failed += 1
                continue
            if engine is None:
                engine = load_engine(job.cfg, err)
            if outputs.many and outputs.streams_text_to_stdout:
                job.stdout.write(f"==> {path} <==\n")
            with _view(outputs, job.cfg, path.name, job.stdout, err) as view:
                status = FileStatus(path.name, audio_s=seconds(len(audio)))
                view.set_status(status)
                transcript = transcribe_audio(engine, audio, source=str(path), on_event=view.add,
                                              on_idle=view.draw, language=language, stop=threading.Event())
                m = transcript.metrics
                view.set_status(replace(status, tokens=m.n_tokens, ttft_ms=m.ttft_ms, total_ms=m.total_ms))
            written = outputs.emit(transcript, path)
            err.print(format_summary(transcript) + (f" -> {written}" if written else ""), markup=False)
            if not transcript.complete:
                err.print("voxcli: interrupted; what was transcribed so far is saved", markup=False)
                return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        err.print("voxcli: interrupted", markup=False)
        return EXIT_INTERRUPTED
    finally:
        outputs.close()
    return 1 if failed else 0
