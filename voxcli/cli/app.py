"""The `voxcli` command: flags -> config -> engine/pipeline -> renderer. The only place that exits.

Every option that sets a configuration key is made from that key's field (:mod:`voxcli.cli.options`):
its help, range and choices are written once, in :mod:`voxcli.config`. Heavy modules (torch,
transformers, the engine) are imported inside the commands that need a model, so `voxcli --help`
and `voxcli config` start fast.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from voxcli import __version__
from voxcli.cli.common import debug_on, exit_with, fail, resolve_config
from voxcli.cli.loading import load_engine
from voxcli.cli.options import MODEL, TOKENS, ConfigOpt, DebugOpt, params, takes
from voxcli.config import OUTPUT_FORMATS, dump_yaml
from voxcli.errors import VoxcliError

HELP = """Live, local speech-to-text with Mistral's Voxtral models.

Every token is drawn the moment the model produces it, and latency is measured honestly:
time to the first real token, with percentiles (see `voxcli bench`).

Configuration: defaults < ~/.config/voxcli/config.yaml (or --config FILE) < flags.
Set VOXCLI_DEBUG=1 (or pass --debug) to see full tracebacks.
"""

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, rich_markup_mode="markdown")
transcribe_app = typer.Typer(help="Transcribe audio you already have.", no_args_is_help=True)
app.add_typer(transcribe_app, name="transcribe")

InputOpt = Annotated[Path | None, typer.Option(
    "--input", "-i", show_default=False,
    help="Replay this audio file as if it were the microphone (reproducible live runs; dictate: from the first "
         "press on).")]
KeytermsFileOpt = Annotated[Path | None, typer.Option(
    "--keyterms-file", show_default=False, help="Keyterms from a file, one phrase a line (# comments).")]
OldDeviceOpt = Annotated[str | None, typer.Option("--device", hidden=True, show_default=False)]
TRANSCRIBE = (*MODEL, *TOKENS, "transcription.language", "output.format", "output.plain", "output.low_confidence")
LISTEN = (*MODEL, *TOKENS, "output.plain", "output.low_confidence", "listen.device", "listen.save_dir",
          "listen.vad", "listen.flush_after_ms", "transcription.final_delay_ms", "transcription.final_model")
DICTATE = (*MODEL, *TOKENS, "listen.device", "listen.save_dir", "listen.vad", "listen.flush_after_ms",
           "transcription.final_delay_ms", "dictate.hotkey", "dictate.toggle", "dictate.stop_hotkey",
           "dictate.live_correct", "dictate.type_with")
SERVE = (*[k for k in MODEL if k not in ("model.server", "model.api_key")], *TOKENS, "serve.host", "serve.port",
         "serve.api_key", "serve.ssl_certfile", "serve.ssl_keyfile", "serve.max_sessions", "serve.wyoming",
         "serve.allow_origins")


@app.callback(invoke_without_command=True)
def _main(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        typer.echo(f"voxcli {__version__}")
        raise typer.Exit()


@app.command("config")
def config_cmd(ctx: typer.Context, config: ConfigOpt = None, debug: DebugOpt = False) -> None:
    """Print the effective configuration as YAML (defaults < config file < flags)."""
    cfg = resolve_config(ctx, config, debug_on(debug))
    typer.echo(dump_yaml(cfg), nl=False)


@transcribe_app.command("file")
@takes(*TRANSCRIBE)
def transcribe_file(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Audio files: wav, flac, ogg, mp3 (any rate, any channels).",
                                                show_default=False)],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", show_default=False,
        help="Write here instead of stdout. With several inputs, a directory: one `NAME.FORMAT` per input.")] = None,
    keyterms_file: KeytermsFileOpt = None, old_device: OldDeviceOpt = None,
    config: ConfigOpt = None, debug: DebugOpt = False,
) -> None:
    """Transcribe audio files, streaming each token to the screen as the model makes it.

    Prints a one-line summary per file on stderr (ttft_ms, total_ms, real-time factor, tokens).
    A bad file gets one line on stderr and the others still run; the exit status is 1 if any failed.

    Example: `voxcli transcribe file talk.mp3 --format srt -o talk.srt`
    """
    debug = debug_on(debug)
    cfg = resolve_config(ctx, config, debug, params(*TRANSCRIBE))
    from voxcli.cli.transcribe import FileJob, run_files

    job = FileJob(paths=paths, cfg=cfg, output=output, debug=debug)
    exit_with(ctx, lambda: run_files(job, load_engine=partial(load_engine, debug=debug)), debug)


@app.command("listen")
@takes(*LISTEN)
def listen_cmd(
    ctx: typer.Context,
    input_path: InputOpt = None,
    speed: Annotated[float, typer.Option(
        "--speed", help="With --input: replay speed (1 = real time; 0 = as fast as possible).", min=0.0)] = 1.0,
    report: Annotated[Path | None, typer.Option(
        "--report", show_default=False, help="With --save: draw the session into this picture when it ends "
        "(.png or .svg; as `voxcli report` does).")] = None,
    max_seconds: Annotated[float | None, typer.Option(
        "--max-seconds", show_default=False, min=0.0, help="Stop after this many seconds of audio.")] = None,
    output_format: Annotated[str, typer.Option(
        "--format", "-f", help="text: the transcript (a live view on a terminal). jsonl: one JSON event per line "
                               "on stdout, as it happens (tokens with times and spans, endpoints, a closing "
                               "summary), e.g. `voxcli listen --format jsonl | jq`.")] = "text",
    keyterms_file: KeytermsFileOpt = None, config: ConfigOpt = None, debug: DebugOpt = False,
) -> None:
    """Transcribe the microphone live, drawing every token the moment the model makes it.

    The status line shows the input level, audio heard, emission latency (token drawn - its audio
    captured) p50/p95, the model step time against the 80 ms budget, ends of speech, dropped blocks,
    and once they happen input overflows, a falling-behind warning and notices (reconnects).
    When speech ends (Silero VAD), the Realtime model flushes its delay at once, so the last
    words appear without waiting; an offline model transcribes each utterance as it ends.
    Two-pass: --final-delay-ms (a second Realtime stream at a longer delay, e.g. --delay-ms 240
    --final-delay-ms 960) or --final-model (an offline model per utterance); their text replaces
    the provisional words (drawn dim until then) at word boundaries, aligned by audio position.
    Ctrl-C stops capture, transcribes what was captured, saves and exits 0; a second Ctrl-C quits at once.

    Example: `voxcli listen --save ~/voxcli-sessions`
    """
    debug = debug_on(debug)
    cfg = resolve_config(ctx, config, debug, params(*LISTEN))
    from voxcli.choices import LISTEN_FORMATS
    from voxcli.cli.listen import ListenJob, run_listen

    if output_format not in LISTEN_FORMATS:
        raise fail(f"--format must be one of {', '.join(LISTEN_FORMATS)} for listen; got {output_format!r}", 2)
    if report is not None and not cfg.listen.save_dir:
        raise fail("--report draws the saved session: add --save DIR", 2)
    job = ListenJob(cfg=cfg, input_path=input_path, speed=speed, max_seconds=max_seconds, format=output_format,
                    report_path=report)
    exit_with(ctx, lambda: run_listen(job, load_engine=partial(load_engine, debug=debug)), debug)


@app.command("dictate")
@takes(*DICTATE)
def dictate_cmd(
    ctx: typer.Context,
    input_path: InputOpt = None,
    speed: Annotated[float, typer.Option("--speed", help="With --input: replay speed (1 = real time).",
                                         min=0.01)] = 1.0,
    toggle_now: Annotated[bool, typer.Option(
        "--toggle-now", help="Tell the running `voxcli dictate` to start or stop listening, and exit: bind this "
                             "to a shortcut where no program may listen for a hotkey (Wayland).")] = False,
    keyterms_file: KeytermsFileOpt = None, config: ConfigOpt = None, debug: DebugOpt = False,
) -> None:
    """Type what you say into whatever window has focus: hold the hotkey, speak, let go.

    Words are typed as each is complete (its last piece followed by a space or punctuation, or the
    end of speech), never typed and taken back. Letting go flushes at once: the last words come
    within the flush, and nothing is typed after it. The model stays loaded between presses.
    Typing: X11 through XTest; Wayland through wtype, ydotool or the clipboard (auto picks;
    --type-with forces). The hotkey on Wayland: read from the keyboards (the input group), or bind
    --toggle-now to a shortcut. Nothing is ever typed into voxcli's own terminal (X11: it holds the
    text and says so). The stop key (Esc) ends a press at once, its words not yet typed dropped;
    Ctrl-C stops at once. At the end: hotkey down -> first character and release -> last
    character, as percentiles.

    Example: `voxcli dictate --hotkey ctrl+alt+space` (or `--toggle` to press once to start, once to stop)
    """
    debug = debug_on(debug)
    if toggle_now:
        from voxcli.dictate.control import toggle_now as signal_dictate

        exit_with(ctx, lambda: signal_dictate() or 0, debug)
        return
    cfg = resolve_config(ctx, config, debug, params(*DICTATE))
    from voxcli.cli.dictate import run_dictate

    exit_with(ctx, lambda: run_dictate(cfg, input_path=input_path, speed=speed,
                                       load_engine=partial(load_engine, debug=debug)), debug)


@app.command("bench")
@takes(*MODEL)
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
             "the revision rate and both step times. With --dictate: dictation typing the final stream's "
             "words.")] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", show_default=False, help="Also draw the figures into this picture (.png or .svg; "
        "as `voxcli report` does).")] = None,
    json_path: Annotated[Path | None, typer.Option(
        "--json", show_default=False, help="Write every raw sample, the summary and the environment here.")] = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", min=0, help="Run this many simultaneous sessions (one clip each) and report per-session "
                                     "and aggregate figures: on a --server, or on a local Realtime model, where "
                                     "they step together in one forward (the step's time per batch size).")] = 0,
    dictate: Annotated[bool, typer.Option(
        "--dictate", help="Measure dictation as a person meets it: in an X server of its own (Xvfb; xdotool), "
                          "each clip replayed as the microphone while the hotkey is held, typed into a window: "
                          "hotkey down -> first character, release -> last character.")] = False,
    live_correct: Annotated[bool, typer.Option(
        "--live-correct", help="With --dictate and --final-delay-ms: as `dictate --live-correct` (provisional "
                               "words typed, then corrected): also the characters taken back per press.")] = False,
    config: ConfigOpt = None, debug: DebugOpt = False,
) -> None:
    """Measure latency as percentiles (n, p50, p90, p95, p99, mean, min, max).

    ttft_ms: audio handed to the warm engine -> first real token id. total_ms: -> last token.
    display_lag_ms: token id -> drawn. first_chunk_ms: what a display batching --batch-words words
    shows first (the old system's "TTFT"). critical_path_ms: the model's own path to its first token,
    timed directly. step_ms against the 80 ms budget, and rtf. Warm-up runs are never counted.

    Example: `voxcli bench --runs 20 --paced --json bench.json`
    """
    debug = debug_on(debug)
    cfg = resolve_config(ctx, config, debug, params(*MODEL))
    from voxcli.cli.bench import run_bench_command

    exit_with(ctx, lambda: run_bench_command(cfg, audio or [], runs=runs, warmup=warmup, paced=paced,
                                        batch_words=batch_words, json_path=json_path,
                                        load_engine=partial(load_engine, debug=debug),
                                        concurrency=concurrency, plot_path=plot,
                                        final_delay_ms=final_delay_ms, dictate=dictate,
                                        live_correct=live_correct), debug)


@app.command("serve")
@takes(*SERVE)
def serve_cmd(ctx: typer.Context, keyterms_file: KeytermsFileOpt = None, config: ConfigOpt = None,
              debug: DebugOpt = False) -> None:
    """Serve the local model to apps and browsers in the protocols their clients speak, many sessions.

    - `POST /v1/audio/transcriptions`: OpenAI's (json, text, verbose_json, srt, vtt; `stream=true` as
      server-sent events) and Mistral's: the `openai` package or the `mistralai` SDK with only their
      base URL and key set.
    - `WS /v1/realtime`: vLLM's realtime protocol (what voxcli's own server client speaks), and OpenAI's
      Realtime transcription sessions (`?intent=transcription`, server VAD).
    - `WS /v1/audio/transcriptions/realtime`: Mistral's realtime transcription (the `mistralai` SDK).
    - `WS /v1/listen`: Deepgram's live API (`deepgram-sdk`, LiveKit's Deepgram plugin).
    - `--wyoming PORT`: Home Assistant's Wyoming protocol beside HTTP.
    - `GET /`: a live page (microphone to transcript, any WebSocket dialect); `/health` (liveness),
      `/ready` (503 when full, draining or down: a balancer's check), `/v1/models`, `/metrics`.

    Every realtime session is a row of the batched step: one scheduler thread steps them all in one
    forward. SIGTERM or Ctrl-C ends every open session with its last words, then stops. Replicas
    behind HAProxy: docs/deploy.md. The key
    (--api-key) can come from VOXCLI_API_KEY instead, out of the process list.

    Example: `voxcli serve --port 8000`, then `voxcli listen` with `model.server: http://127.0.0.1:8000`
    """
    debug = debug_on(debug)
    cfg = resolve_config(ctx, config, debug, params(*SERVE))
    from voxcli.cli.serve import run_serve

    exit_with(ctx, lambda: run_serve(cfg, load_engine=partial(load_engine, debug=debug)), debug)


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
        if debug_on(debug):
            raise
        raise fail(exc) from None
    typer.echo(f"voxcli: wrote {written}", err=True)


@app.command("devices")
def devices_cmd(debug: DebugOpt = False) -> None:
    """List audio input devices: index, name, host API, channels, default sample rate."""
    from voxcli.audio.capture import list_input_devices

    try:
        devices = list_input_devices()
    except VoxcliError as exc:
        if debug_on(debug):
            raise
        raise fail(exc) from None
    if not devices:
        raise fail("no audio input device found")
    for d in devices:
        mark = "*" if d.is_default else " "
        typer.echo(f"{mark} {d.index:>3}  {d.name}  ({d.hostapi}, {d.channels} ch, {d.default_rate:.0f} Hz)")


def main() -> None:
    app(prog_name="voxcli")


__all__ = ["app", "main", "OUTPUT_FORMATS"]
