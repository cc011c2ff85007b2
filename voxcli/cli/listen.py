"""`listen`: microphone (or a file replayed as one) -> engine thread -> tokens on screen.

Signals: the first Ctrl-C (or SIGTERM) stops capture; everything captured is still transcribed
and flushed, the files are closed and the summary printed, exit 0. A second Ctrl-C exits at once;
the session files are valid after every write, so they stay readable.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from voxcli.config import Config
from voxcli.errors import ConfigError, ModelError, StreamFailed, setting
from voxcli.output.tables import keyterm_words
from voxcli.output.view import LiveTranscript, NullView, PlainTranscript


@dataclass
class ListenJob:
    cfg: Config
    input_path: Path | None = None
    speed: float = 1.0
    max_seconds: float | None = None
    format: str = "text"  # text: the transcript (live view on a terminal); jsonl: one event per line
    report_path: Path | None = None  # draw the saved session here at the end (needs save_dir)


def _make_source(job: ListenJob):
    from voxcli.audio.capture import FileSource, MicSource

    # The queue holds 10 s of audio; a bounded run may keep all of it, since a source can deliver
    # faster than real time (a virtual device, --speed 0) and must not drop what it was asked for.
    queue_s = max(10.0, min(job.max_seconds or 0.0, 600.0) + 1.0)
    if job.input_path is not None:
        if job.speed in (0, float("inf")):
            queue_s = max(queue_s, _duration_s(job.input_path) + 1.0)
        source = FileSource(job.input_path, speed=job.speed, max_seconds=job.max_seconds, queue_s=queue_s)
    else:
        device = job.cfg.listen.device
        if isinstance(device, str) and device.isdigit():
            device = int(device)
        source = MicSource(device, max_seconds=job.max_seconds, queue_s=queue_s)
    source.check()
    return source


def _duration_s(path: Path) -> float:
    import soundfile

    try:
        return float(soundfile.info(str(path)).duration)
    except Exception:  # noqa: BLE001 - unreadable files get their one-line error from check()
        return 0.0


class _Signals:
    """First SIGINT/SIGTERM: ask for a graceful stop (``stop``). Second SIGINT: stop now
    (``quit_now``, and KeyboardInterrupt at once wherever Python can raise it)."""

    def __init__(self, stop: threading.Event, notify: Callable[[str], None], quit_now: threading.Event) -> None:
        self.stop = stop
        self.notify = notify
        self.quit_now = quit_now
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop.is_set() and signum == signal.SIGINT:
            self.quit_now.set()
            if _in_c_callback(frame):
                return  # raised there it would be dropped: the live loop raises it within 50 ms
            raise KeyboardInterrupt
        self.stop.set()
        self.notify("stopping: transcribing what was captured (Ctrl-C again to quit now)")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _in_c_callback(frame) -> bool:
    """Whether this Python code runs on behalf of a C library: soundfile's virtual I/O, called by
    libsndfile while the WAV is written. cffi prints an exception raised there and drops it (a
    second Ctrl-C was lost that way, and the session ran on to its end)."""
    while frame is not None:
        code = frame.f_code
        if code.co_name.startswith("vio_") and code.co_filename.endswith("soundfile.py"):
            return True
        frame = frame.f_back
    return False


def run_listen(job: ListenJob, *, load_engine: Callable, stdout=None) -> int:
    from voxcli.live.items import LiveOptions
    from voxcli.live.session import ListenSession
    from voxcli.output.recorder import check_directory

    stdout = stdout or sys.stdout
    cfg = job.cfg
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    # Everything that can be checked comes before the model loads: the input, the save directory.
    source = _make_source(job)
    if cfg.listen.save_dir:
        check_directory(cfg.listen.save_dir)
    if job.report_path is not None:
        from voxcli.output.report import check_output

        check_output(job.report_path)  # needs save_dir: the CLI sees to that
    engine = load_engine(cfg, err)
    if engine.kind != "realtime":
        err.print("[dim]offline model: each utterance is transcribed when it ends[/dim]")
    final_engine = _final_engine(engine, cfg, load_engine, err)
    jsonl = job.format == "jsonl"
    plain = jsonl or cfg.output.plain or not stdout.isatty()
    session = ListenSession(view=_view(jsonl, plain, stdout, cfg.output.low_confidence), out=stdout if jsonl else None,
                            say=(lambda line: err.print(line, markup=False)) if plain else None,
                            recorder=_recorder(cfg, job, engine, final_engine), two_pass=final_engine is not None)
    recorder = session.recorder
    stop, quit_now = threading.Event(), threading.Event()
    try:
        with _Signals(stop, session.notify, quit_now), session.view:
            session.run(engine, source, stop, LiveOptions.from_config(cfg), final_engine=final_engine,
                        quit_now=quit_now)
    except KeyboardInterrupt:
        err.print("voxcli: stopped at once; session files hold everything written so far", markup=False)
        return 130
    except StreamFailed as exc:
        saved = f"; what was captured and received is saved in {recorder.wav_path.parent}" if recorder else ""
        raise exc.extended(saved) from None
    finally:
        summary = session.close()
    if session.result.error:
        err.print(f"voxcli: warning: {session.result.error}; what was captured is kept", markup=False)
    _print_summary(err, summary, recorder)
    if job.report_path is not None and recorder and not recorder.failure:
        from voxcli.output.report import draw_session, read_session, save

        save(draw_session(read_session(recorder.jsonl_path)), job.report_path)
        err.print(f"picture -> {job.report_path}", markup=False)
    if recorder and recorder.failure:
        if not plain:  # plain output said it when it happened; the live view only in its status
            err.print(f"voxcli: error: {recorder.failure}", markup=False)
        return 1  # the transcript is whole, the files are not
    return 0


def _view(jsonl: bool, plain: bool, stdout, low_confidence: float = 0.0):
    if jsonl:
        return NullView()  # stdout carries the events themselves
    if plain:
        return PlainTranscript(stdout)
    return LiveTranscript(Console(file=stdout), title="listening", low_confidence=low_confidence)


def _recorder(cfg: Config, job: ListenJob, engine, final_engine):
    if not cfg.listen.save_dir:
        return None
    from voxcli.output.recorder import SessionRecorder

    return SessionRecorder(cfg.listen.save_dir, meta={
        "model": engine.info.model, "kind": engine.kind, "device": engine.info.device,
        "delay_ms": engine.info.delay_ms,
        **({"final_model": final_engine.info.model, "final_delay_ms": final_engine.info.delay_ms}
           if final_engine is not None else {}),
        "input": str(job.input_path) if job.input_path else (cfg.listen.device or "default"),
    })


def _print_summary(err: Console, s: dict, recorder) -> None:
    lat = s["emission_latency_ms"]
    err.print(
        f"{s['audio_s']:.2f} s heard, {s['n_tokens']} tokens, emission_latency_ms "
        f"p50 {_f(lat.get('p50'))} p95 {_f(lat.get('p95'))}, dropped blocks {s['dropped_blocks']}, "
        f"input overflows {s['input_overflows']}{keyterm_words(s.get('keyterms', {}))}"
        + (f" -> {', '.join(str(p) for p in recorder.paths)}" if recorder else ""), markup=False)


def _final_engine(engine, cfg: Config, load_engine: Callable, err):
    """Two-pass: the same weights at the longer delay, or an offline model loaded beside; None for
    one stream."""
    final_delay_ms, final_model = cfg.transcription.final_delay_ms, cfg.transcription.final_model
    if final_delay_ms is None and final_model is None:
        return None
    if final_delay_ms is not None and final_model is not None:
        raise ConfigError(f"two-pass takes {setting('transcription.final_delay_ms')} or "
                          f"{setting('transcription.final_model')}, not both")
    if not engine.info.audio_spans:
        raise ConfigError(f"two-pass needs a local Realtime model: it aligns the two streams by the audio each "
                          f"token covers, which {engine.info.device} does not say (and a vLLM server's delay is "
                          f"fixed per server)")
    if final_model is not None:
        if engine.kind != "realtime":
            raise ConfigError(f"{setting('transcription.final_model')} is a final pass for a Realtime model's "
                              f"live text; {engine.info.model} is already an offline model")
        model = dataclasses.replace(cfg.model, name=final_model, server=None)
        try:
            final = load_engine(dataclasses.replace(cfg, model=model), err)
        except ModelError as exc:
            if "needed_bytes" not in exc.data:
                raise
            # The memory check ran with the Realtime model (and its session buffers) already loaded.
            raise exc.extended(f"; the free memory counted is what is left beside {engine.info.model}, "
                               f"already loaded on {engine.info.device}") from None
        if final.kind != "offline":
            raise ConfigError(f"{setting('transcription.final_model')} {final_model} must be an offline model "
                              f"(Voxtral Mini 3B or Small 24B); for a second Realtime stream use "
                              f"{setting('transcription.final_delay_ms')}")
        return final
    if engine.kind != "realtime":
        raise ConfigError(f"{setting('transcription.final_delay_ms')} needs a Realtime model; {engine.info.model} "
                          f"is an offline one")
    if final_delay_ms <= engine.info.delay_ms:
        raise ConfigError(f"{setting('transcription.final_delay_ms')} {final_delay_ms} must be longer than the "
                          f"provisional stream's delay ({engine.info.delay_ms} ms, {setting('transcription.delay_ms')})")
    return engine.with_delay(final_delay_ms)


def _f(value) -> str:
    return "-" if value is None else f"{value:.1f}"
