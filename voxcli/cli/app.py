"""The `voxcli` command: flags -> config -> engine/pipeline -> renderer. The only place that exits.

Heavy modules (torch, transformers, the engine) are imported inside the commands that need a
model, so `voxcli --help` and `voxcli config` start fast.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from voxcli import __version__
from voxcli.cli.loading import load_engine
from voxcli.cli.options import (
    MODEL_KEYS,
    TOKEN_KEYS,
    AlternativesOpt,
    ApiKeyOpt,
    CompileOpt,
    ConfigOpt,
    DebugOpt,
    DelayOpt,
    DeviceOpt,
    DtypeOpt,
    KeytermBiasOpt,
    KeytermOpt,
    KeytermsFileOpt,
    LanguageOpt,
    LowConfidenceOpt,
    ModelOpt,
    OfflineOpt,
    ServerOpt,
    StepOpt,
    ThreadsOpt,
)
from voxcli.config import OUTPUT_FORMATS, Config, dump_yaml, load_config
from voxcli.errors import ConfigError, VoxcliError

HELP = """Live, local speech-to-text with Mistral's Voxtral models.

Every token is drawn the moment the model produces it, and latency is measured honestly:
time to the first real token, with percentiles (see `voxcli bench`).

Configuration: defaults < ~/.config/voxcli/config.yaml (or --config FILE) < flags.
Set VOXCLI_DEBUG=1 (or pass --debug) to see full tracebacks.
"""

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, rich_markup_mode="markdown")
transcribe_app = typer.Typer(help="Transcribe audio you already have.", no_args_is_help=True)
app.add_typer(transcribe_app, name="transcribe")

def _debug_on(debug: bool) -> bool:
    return debug or os.environ.get("VOXCLI_DEBUG", "") not in ("", "0")


def _fail(message: str | VoxcliError, code: int = 1, ctx: typer.Context | None = None) -> typer.Exit:
    """One line on stderr. An error's settings are named by the flags of the running command."""
    if isinstance(message, VoxcliError):
        message = message.worded(ctx.meta.get(FLAG_NAMES, {}) if ctx is not None else {})
    typer.echo(f"voxcli: error: {message}", err=True)
    return typer.Exit(code)


FLAG_NAMES = "voxcli.flag_names"  # click context meta: configuration key -> the flag that sets it


def _resolve_config(ctx: typer.Context, config_path: Path | None, debug: bool = False,
                    keys: dict[str, str] | None = None) -> Config:
    """Defaults < file < flags; a bad key or value exits 2.

    ``keys`` maps a configuration key to the parameter of the running command that sets it. An
    unset switch (False) and an absent option (None) leave the key alone. The flags' spellings are
    kept, so that errors naming a key are worded with this command's flag (``--model-device`` in
    ``listen``, ``--device`` elsewhere).
    """
    options = {param.name: param for param in ctx.command.params}
    if "keyterm" in ctx.params:
        _gather_keyterms(ctx, debug)
    overrides, names = {}, {}
    for key, name in (keys or {}).items():
        value = ctx.params[name]
        if isinstance(value, bool) and options[name].secondary_opts:  # --x/--no-x: a choice, both ways
            value = "on" if value else "off"
        overrides[key] = str(value) if isinstance(value, Path) else (None if value is False else value)
        names[key] = max(options[name].opts, key=len)
    ctx.meta[FLAG_NAMES] = names
    try:
        return load_config(config_path, overrides)
    except ConfigError as exc:
        if debug:
            raise
        raise _fail(exc, 2, ctx) from None


def _gather_keyterms(ctx: typer.Context, debug: bool) -> None:
    """--keyterm and --keyterms-file together are the keyterms (None, neither given: the config
    file's); a file that cannot be read exits 2."""
    from voxcli.engine.keyterms import read_keyterms_file
    from voxcli.errors import first_line

    phrases = list(ctx.params.get("keyterm") or [])
    path = ctx.params.get("keyterms_file")
    if path is not None:
        try:
            phrases += read_keyterms_file(path)
        except (OSError, UnicodeDecodeError) as exc:
            if debug:
                raise
            raise _fail(f"--keyterms-file {path}: cannot read it: {first_line(exc)}", 2) from None
    ctx.params["keyterm"] = phrases if phrases or path is not None else None


def _exit_with(ctx: typer.Context, job, debug: bool):
    """Run a command's job; a user-caused error becomes one line and exit 1, or 2 for a bad
    configuration value found while checking the job's inputs (--debug re-raises)."""
    try:
        code = job()
    except VoxcliError as exc:
        if debug:
            raise
        raise _fail(exc, 2 if isinstance(exc, ConfigError) else 1, ctx) from None
    raise typer.Exit(code)


@app.callback(invoke_without_command=True)
def _main(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        typer.echo(f"voxcli {__version__}")
        raise typer.Exit()


@app.command("config")
def config_cmd(ctx: typer.Context, config: ConfigOpt = None, debug: DebugOpt = False) -> None:
    """Print the effective configuration as YAML (defaults < config file < flags)."""
    cfg = _resolve_config(ctx, config, _debug_on(debug))
    typer.echo(dump_yaml(cfg), nl=False)


@transcribe_app.command("file")
def transcribe_file(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Audio files: wav, flac, ogg, mp3 (any rate, any channels).",
                                                show_default=False)],
    output_format: Annotated[str | None, typer.Option(
        "--format", "-f", show_default=False,
        help="text (default), json (text + per-token events + metrics), jsonl (one event per line), srt or vtt.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", show_default=False,
        help="Write here instead of stdout. With several inputs, a directory: one `NAME.FORMAT` per input.")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="No live view: plain text as it arrives.")] = False,
    model: ModelOpt = None, device: DeviceOpt = None, dtype: DtypeOpt = None, threads: ThreadsOpt = None,
    delay_ms: DelayOpt = None, language: LanguageOpt = None, offline: OfflineOpt = False,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, step: StepOpt = None, compile: CompileOpt = None,
    keyterm: KeytermOpt = None, keyterms_file: KeytermsFileOpt = None, keyterm_bias: KeytermBiasOpt = None,
    alternatives: AlternativesOpt = None, low_confidence: LowConfidenceOpt = None,
    config: ConfigOpt = None, debug: DebugOpt = False,
) -> None:
    """Transcribe audio files, streaming each token to the screen as the model makes it.

    Prints a one-line summary per file on stderr (ttft_ms, total_ms, real-time factor, tokens).
    A bad file gets one line on stderr and the others still run; the exit status is 1 if any failed.

    Example: `voxcli transcribe file talk.mp3 --format srt -o talk.srt`
    """
    debug = _debug_on(debug)
    cfg = _resolve_config(ctx, config, debug, {
        **MODEL_KEYS, **TOKEN_KEYS, "model.device": "device", "transcription.language": "language",
        "output.format": "output_format", "output.plain": "plain", "output.low_confidence": "low_confidence"})
    from voxcli.cli.transcribe import FileJob, run_files

    job = FileJob(paths=paths, cfg=cfg, output=output, debug=debug)
    _exit_with(ctx, lambda: run_files(job, load_engine=partial(load_engine, debug=debug)), debug)


@app.command("listen")
def listen_cmd(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option(
        "--device", "-d", show_default=False,
        help="Input device: a name (or part of one) or an index from `voxcli devices`. Default: the system input.")] = None,
    input_path: Annotated[Path | None, typer.Option(
        "--input", "-i", show_default=False,
        help="Replay this audio file as if it were the microphone (reproducible live runs).")] = None,
    speed: Annotated[float, typer.Option(
        "--speed", help="With --input: replay speed (1 = real time; 0 = as fast as possible).", min=0.0)] = 1.0,
    save: Annotated[Path | None, typer.Option(
        "--save", show_default=False,
        help="Directory for this session's files, written as you speak: the WAV the engine heard, "
             "per-token JSONL events, the transcript, and SRT/VTT subtitles (each cue as it closes). "
             "Created if needed; checked before the model loads.")] = None,
    final_delay_ms: Annotated[int | None, typer.Option(
        "--final-delay-ms", show_default=False,
        help="Two-pass: a second Realtime stream at this longer delay is fed the same audio; its final "
             "text replaces the provisional words (drawn dim until then) at word boundaries, aligned by "
             "audio position. E.g. --delay-ms 240 --final-delay-ms 960.")] = None,
    final_model: Annotated[str | None, typer.Option(
        "--final-model", show_default=False,
        help="Two-pass: an offline model (hub id or directory: Voxtral Mini 3B / Small 24B) loaded beside "
             "the Realtime one re-transcribes each utterance when it ends; its text replaces the provisional words.")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", show_default=False, help="With --save: draw the session into this picture when it ends "
        "(.png or .svg; as `voxcli report` does).")] = None,
    max_seconds: Annotated[float | None, typer.Option(
        "--max-seconds", show_default=False, min=0.0, help="Stop after this many seconds of audio.")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="No live view: plain text as it arrives.")] = False,
    output_format: Annotated[str, typer.Option(
        "--format", "-f", help="text: the transcript (a live view on a terminal). jsonl: one JSON event per line "
                               "on stdout, as it happens (tokens with times and spans, endpoints, a closing "
                               "summary), e.g. `voxcli listen --format jsonl | jq`.")] = "text",
    vad: Annotated[str | None, typer.Option(
        "--vad", show_default=False, help="What finds the end of speech: silero (default) or energy (a level "
                                          "threshold; fails in noise).")] = None,
    flush_after_ms: Annotated[int | None, typer.Option(
        "--flush-after-ms", show_default=False,
        help="This much non-speech ends speech (default 320; 0 never ends it).")] = None,
    model: ModelOpt = None,
    model_device: Annotated[str | None, typer.Option(
        "--model-device", show_default=False, help="Where the model runs: auto, cuda, cuda:N, mps or cpu.")] = None,
    dtype: DtypeOpt = None, threads: ThreadsOpt = None, delay_ms: DelayOpt = None,
    offline: OfflineOpt = False, server: ServerOpt = None, api_key: ApiKeyOpt = None, step: StepOpt = None,
    compile: CompileOpt = None, keyterm: KeytermOpt = None, keyterms_file: KeytermsFileOpt = None,
    keyterm_bias: KeytermBiasOpt = None, alternatives: AlternativesOpt = None,
    low_confidence: LowConfidenceOpt = None, config: ConfigOpt = None, debug: DebugOpt = False,
) -> None:
    """Transcribe the microphone live, drawing every token the moment the model makes it.

    The status line shows the input level, audio heard, emission latency (token drawn - its audio
    captured) p50/p95, the model step time against the 80 ms budget, ends of speech, dropped blocks,
    and once they happen input overflows, a falling-behind warning and notices (reconnects).
    When speech ends (Silero VAD), the Realtime model flushes its delay at once, so the last
    words appear without waiting; an offline model transcribes each utterance as it ends.
    Ctrl-C stops capture, transcribes what was captured, saves and exits 0; a second Ctrl-C quits at once.

    Example: `voxcli listen --save ~/voxcli-sessions`
    """
    debug = _debug_on(debug)
    cfg = _resolve_config(ctx, config, debug, {
        **MODEL_KEYS, **TOKEN_KEYS, "model.device": "model_device", "output.plain": "plain",
        "output.low_confidence": "low_confidence", "listen.device": "device",
        "listen.save_dir": "save", "listen.vad": "vad", "listen.flush_after_ms": "flush_after_ms",
        "transcription.final_delay_ms": "final_delay_ms", "transcription.final_model": "final_model"})
    from voxcli.choices import LISTEN_FORMATS
    from voxcli.cli.listen import ListenJob, run_listen

    if output_format not in LISTEN_FORMATS:
        raise _fail(f"--format must be one of {', '.join(LISTEN_FORMATS)} for listen; got {output_format!r}", 2)
    if report is not None and not cfg.listen.save_dir:
        raise _fail("--report draws the saved session: add --save DIR", 2)
    job = ListenJob(cfg=cfg, input_path=input_path, speed=speed, max_seconds=max_seconds, format=output_format,
                    report_path=report)
    _exit_with(ctx, lambda: run_listen(job, load_engine=partial(load_engine, debug=debug)), debug)


@app.command("bench")
def bench_cmd(
    ctx: typer.Context,
    audio: Annotated[list[Path] | None, typer.Argument(
        help="Clips to run (default: the speech clips in examples/).", show_default=False)] = None,
    runs: Annotated[int, typer.Option("--runs", "-n", min=1, help="Measured runs per clip.")] = 20,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Discarded runs per clip before measuring.")] = 2,
    paced: Annotated[bool, typer.Option(
        "--paced", help="Also replay each clip at real speed through the live pipeline: emission latency, "
                        "first word, finalize.")] = False,
    batch_words: Annotated[int, typer.Option(
        "--batch-words", min=1, help="Word batch size for first_chunk_ms (6 reproduces the old word-batching display).")] = 6,
    final_delay_ms: Annotated[int | None, typer.Option(
        "--final-delay-ms", show_default=False,
        help="With --paced: two-pass, as `listen --final-delay-ms`: provisional and final word latency, "
             "the revision rate and both step times.")] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", show_default=False, help="Also draw the figures into this picture (.png or .svg; "
        "as `voxcli report` does).")] = None,
    json_path: Annotated[Path | None, typer.Option(
        "--json", show_default=False, help="Write every raw sample, the summary and the environment here.")] = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", min=0, help="Run this many simultaneous sessions (one clip each) and report per-session "
                                     "and aggregate figures: on a --server, or on a local Realtime model, where "
                                     "they step together in one forward (the step's time per batch size).")] = 0,
    model: ModelOpt = None,
    model_device: Annotated[str | None, typer.Option(
        "--model-device", show_default=False, help="Where the model runs: auto, cuda, cuda:N, mps or cpu.")] = None,
    dtype: DtypeOpt = None, threads: ThreadsOpt = None, delay_ms: DelayOpt = None,
    offline: OfflineOpt = False, server: ServerOpt = None, api_key: ApiKeyOpt = None, step: StepOpt = None,
    compile: CompileOpt = None, config: ConfigOpt = None, debug: DebugOpt = False,
) -> None:
    """Measure latency as percentiles (n, p50, p90, p95, p99, mean, min, max).

    ttft_ms: audio handed to the warm engine -> first real token id. total_ms: -> last token.
    display_lag_ms: token id -> drawn. first_chunk_ms: what a display batching --batch-words words
    shows first (the old system's "TTFT"). critical_path_ms: the model's own path to its first token,
    timed directly. step_ms against the 80 ms budget, and rtf. Warm-up runs are never counted.

    Example: `voxcli bench --runs 20 --paced --json bench.json`
    """
    debug = _debug_on(debug)
    cfg = _resolve_config(ctx, config, debug, {**MODEL_KEYS, "model.device": "model_device"})
    from voxcli.cli.bench import run_bench_command

    _exit_with(ctx, lambda: run_bench_command(cfg, audio or [], runs=runs, warmup=warmup, paced=paced,
                                         batch_words=batch_words, json_path=json_path,
                                         load_engine=partial(load_engine, debug=debug),
                                         concurrency=concurrency, plot_path=plot,
                                         final_delay_ms=final_delay_ms), debug)


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(
        "--host", show_default=False, help="Address to bind. Default 127.0.0.1 (this machine only); another "
                                           "address without --api-key gets a warning.")] = None,
    port: Annotated[int | None, typer.Option("--port", "-p", show_default=False, help="TCP port. Default 8000.")] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", show_default=False,
        help="Clients must send it as Authorization: Bearer. VOXCLI_API_KEY does the same and keeps the key "
             "out of the process list.")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(
        "--ssl-certfile", show_default=False, help="Certificate (PEM): serve https:// and wss://.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(
        "--ssl-keyfile", show_default=False, help="The certificate's private key (PEM).")] = None,
    max_sessions: Annotated[int | None, typer.Option(
        "--max-sessions", show_default=False, min=1, max=64,
        help="Realtime sessions at once, each a row of one batched step (default 8); one more is refused.")] = None,
    model: ModelOpt = None,
    model_device: Annotated[str | None, typer.Option(
        "--model-device", show_default=False, help="Where the model runs: auto, cuda, cuda:N, mps or cpu.")] = None,
    dtype: DtypeOpt = None, threads: ThreadsOpt = None, delay_ms: DelayOpt = None,
    offline: OfflineOpt = False, step: StepOpt = None, compile: CompileOpt = None,
    keyterm: KeytermOpt = None, keyterms_file: KeytermsFileOpt = None, keyterm_bias: KeytermBiasOpt = None,
    alternatives: AlternativesOpt = None, config: ConfigOpt = None, debug: DebugOpt = False,
) -> None:
    """Serve the local model to apps and browsers: OpenAI- and vLLM-compatible APIs, many sessions.

    - `POST /v1/audio/transcriptions`: OpenAI's (json, text, verbose_json, srt, vtt; `stream=true` as
      server-sent events): the `openai` package works with only `base_url` and `api_key` set.
    - `WS /v1/realtime`: vLLM's realtime protocol (what voxcli's own server client speaks), and OpenAI's
      Realtime transcription sessions (`?intent=transcription`, server VAD).
    - `GET /`: a live page (microphone to transcript); `/health`, `/v1/models`, `/metrics` (Prometheus).

    Every realtime session is a row of the batched step: one scheduler thread steps them all in one
    forward. SIGTERM or Ctrl-C ends every open session with its last words, then stops.

    Example: `voxcli serve --port 8000`, then `voxcli listen` with `model.server: http://127.0.0.1:8000`
    """
    debug = _debug_on(debug)
    cfg = _resolve_config(ctx, config, debug, {
        **{k: v for k, v in MODEL_KEYS.items() if k not in ("model.server", "model.api_key")}, **TOKEN_KEYS,
        "model.device": "model_device", "serve.host": "host", "serve.port": "port", "serve.api_key": "api_key",
        "serve.ssl_certfile": "ssl_certfile", "serve.ssl_keyfile": "ssl_keyfile",
        "serve.max_sessions": "max_sessions"})
    from voxcli.cli.serve import run_serve

    _exit_with(ctx, lambda: run_serve(cfg, load_engine=partial(load_engine, debug=debug)), debug)


@app.command("report")
def report_cmd(
    paths: Annotated[list[Path], typer.Argument(
        help="A session directory or JSONL (`listen --save`), or `bench --json` files (several: compared).",
        show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The picture: FILE.png or FILE.svg.",
                                         show_default=False)],
    debug: DebugOpt = False,
) -> None:
    """Draw a live session or benchmarks as one picture.

    A session: the waveform with speech and endpoints, every token on the audio timeline at the
    moment it came out (the model's delay is its height above the diagonal; flushed tokens marked),
    the emission-latency CDF with p50/p95, and the step time against the 80 ms budget. Bench
    files: ttft_ms, first_chunk_ms, total_ms and display_lag_ms per clip (p50 bars, p90 and p99
    marks), and step headroom; several files side by side. Needs matplotlib (`pip install 'voxcli[report]'`).

    Example: `voxcli report ~/voxcli-sessions -o session.png`
    """
    from voxcli.output.report import write_report

    try:
        written = write_report(paths, output)
    except VoxcliError as exc:
        if _debug_on(debug):
            raise
        raise _fail(exc) from None
    typer.echo(f"voxcli: wrote {written}", err=True)


@app.command("devices")
def devices_cmd(debug: DebugOpt = False) -> None:
    """List audio input devices: index, name, host API, channels, default sample rate."""
    from voxcli.audio.capture import list_input_devices

    try:
        devices = list_input_devices()
    except VoxcliError as exc:
        if _debug_on(debug):
            raise
        raise _fail(exc) from None
    if not devices:
        raise _fail("no audio input device found")
    for d in devices:
        mark = "*" if d.is_default else " "
        typer.echo(f"{mark} {d.index:>3}  {d.name}  ({d.hostapi}, {d.channels} ch, {d.default_rate:.0f} Hz)")


def main() -> None:
    app(prog_name="voxcli")


__all__ = ["app", "main", "OUTPUT_FORMATS"]
