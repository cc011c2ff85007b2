"""The `voxcli` command, end to end: real processes, real audio, tiny random checkpoints.

Anything about stdout/stderr separation, exit codes or tracebacks runs `python -m voxcli` in a
subprocess; the format matrix runs the same Typer app in-process (CliRunner) so the tiny models
load in a fraction of a second. Random weights make meaningless text: these tests compare
structure, files, streams and exit codes, and compare one run's text only with another run of
the same deterministic (greedy) model on the same file, never with words.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from speech import (
    make_corrupt,
    make_empty,
    make_png,
    make_silence,
    make_speech,
    make_text,
    make_truncated,
    make_zero_frames,
    trim,
)
from typer.testing import CliRunner

from voxcli.cli.app import app
from voxcli.config import OUTPUT_FORMATS, load_config

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.wav"
EXT = {"text": "txt", "json": "json", "jsonl": "jsonl", "srt": "srt", "vtt": "vtt"}
ERROR = "voxcli: error:"
HEAVY = ("torch", "transformers")


# ---------------------------------------------------------------------------------------------
# Running the CLI
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict:
    env = dict(os.environ)
    for key in ("VOXCLI_DEBUG", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(key, None)
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        # An empty config home: the tester's own ~/.config/voxcli/config.yaml must not leak in.
        XDG_CONFIG_HOME=str(tmp_path_factory.mktemp("xdg-empty")),
        COLUMNS="200",  # help text on one line per option, so it can be searched
    )
    return env


class Run:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.code = proc.returncode
        # Bytes, decoded here: text mode would turn a "\r" inside a token into "\n".
        self.stdout = proc.stdout.decode("utf-8")
        self.stderr = proc.stderr.decode("utf-8")

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if not line.startswith("import time:")]

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}"


def voxcli(env: dict, *args, python_flags: tuple[str, ...] = (), timeout: float = 180) -> Run:
    cmd = [sys.executable, *python_flags, "-m", "voxcli", *map(str, args)]
    return Run(subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=timeout))


def imported_packages(importtime_stderr: str) -> set[str]:
    """Top-level package names from `python -X importtime` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                names.add(name.split(".")[0])
    return names


def assert_one_error_line(run: Run, *, code: int | None = None) -> str:
    """Exactly one line on stderr, `voxcli: error: ...`, a non-zero exit, no traceback."""
    assert "Traceback" not in run.stderr, run
    lines = run.err_lines
    assert len(lines) == 1 and lines[0].startswith(ERROR), run
    assert run.code != 0, run
    if code is not None:
        assert run.code == code, run
    return lines[0]


@pytest.fixture(autouse=True)
def _in_process_isolation(tmp_path, monkeypatch):
    # For CliRunner runs: same empty config home, and no debug mode from the tester's shell.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-empty"))
    monkeypatch.delenv("VOXCLI_DEBUG", raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli-audio")
    (d / "a directory").mkdir()
    files = {
        "hello": HELLO,
        "clip": make_speech(d / "clip.wav", "Testing one two three. The cat sat on the mat."),
        "missing": d / "missing.wav",
        "directory": d / "a directory",
        "empty": make_empty(d / "empty.wav"),
        "zero_frames": make_zero_frames(d / "zero-frames.wav"),
        "truncated": make_truncated(HELLO, d / "truncated.wav"),
        # Only the RIFF/WAVE preamble survives: undecodable (a full header + noise is valid PCM).
        "corrupt": make_corrupt(HELLO, d / "corrupt.wav", keep_bytes=12),
        "text": make_text(d / "notes.wav"),
        "png": make_png(d / "picture.png"),
        "silence": make_silence(d / "silence.wav", 1.5),
        "short": trim(HELLO, d / "short.wav", 0.5, 0.1),
        "8bit": make_speech(d / "u8.wav", "Eight bit audio.", bits=8, encoding="unsigned-integer"),
        "24bit": make_speech(d / "s24.wav", "Twenty four bit audio.", bits=24),
        "stereo44k": make_speech(d / "stereo44k.wav", "Stereo at forty four kilohertz.", rate=44100,
                                 channels=2),
        "stereo48k": make_speech(d / "stereo48k.wav", "Stereo at forty eight kilohertz.", rate=48000,
                                 channels=2),
    }
    return files


MUST_FAIL = ("missing", "directory", "empty", "zero_frames", "corrupt", "text", "png")
MUST_TRANSCRIBE = ("hello", "silence", "short", "8bit", "24bit", "stereo44k", "stereo48k", "clip")
EITHER = ("truncated",)  # libsndfile salvages the first half; an error would be fine too


# ---------------------------------------------------------------------------------------------
# Checks on the documents
# ---------------------------------------------------------------------------------------------


def squash(text: str) -> str:
    return "".join(text.split())


def check_transcript(d: dict, *, source: str, model: str, complete: bool = True) -> None:
    assert d["source"] == source
    assert d["model"] == model
    assert d["complete"] is complete
    events, m = d["events"], d["metrics"]
    assert [e["index"] for e in events] == list(range(len(events)))
    prev_t = prev_start = float("-inf")
    for e in events:
        assert isinstance(e["token_id"], int) and not isinstance(e["token_id"], bool)
        assert isinstance(e["text"], str)
        assert isinstance(e["t_emitted"], float) and e["t_emitted"] >= prev_t
        prev_t = e["t_emitted"]
        start, end = e["audio_start_s"], e["audio_end_s"]
        if start is not None and end is not None:
            assert 0.0 <= start <= end <= m["audio_s"] + 1e-3, e
            assert start >= prev_start, "audio spans go back in time"
            prev_start = start
    assert d["text"] == "".join(e["text"] for e in events).strip()
    assert m["n_tokens"] == len(events)
    if any(not e["special"] for e in events):
        assert m["ttft_ms"] is not None and m["total_ms"] is not None
        assert 0.0 <= m["ttft_ms"] <= m["total_ms"]


_TS = r"(\d{2,}):([0-5]\d):([0-5]\d)SEP(\d{3})"


def parse_cues(doc: str, fmt: str) -> list[tuple[float, float, str]]:
    """A strict SRT/WebVTT reader: numbered (SRT) blocks, exact timestamps, blank-line separated,
    no empty cue text, and for VTT no raw markup."""
    sep = "," if fmt == "srt" else "."
    ts = _TS.replace("SEP", re.escape(sep))
    timing = re.compile(ts + " --> " + ts)
    if fmt == "vtt":
        assert doc.startswith("WEBVTT\n\n"), doc[:40]
        doc = doc[len("WEBVTT\n\n"):]
    assert doc.endswith("\n") and not doc.endswith("\n\n"), repr(doc[-40:])
    cues = []
    for number, block in enumerate(doc[:-1].split("\n\n"), 1):
        lines = block.split("\n")
        if fmt == "srt":
            assert lines.pop(0) == str(number), f"cue {number} misnumbered: {block!r}"
        m = timing.fullmatch(lines[0])
        assert m, f"bad timing line {lines[0]!r}"
        g = [int(x) for x in m.groups()]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        text_lines = lines[1:]
        assert text_lines and all(line.strip() for line in text_lines), f"empty cue text: {block!r}"
        text = "\n".join(text_lines)
        assert "-->" not in text
        if fmt == "vtt":
            assert "<" not in text and ">" not in text
            assert not re.search(r"&(?!amp;|lt;|gt;)", text), "unescaped & in VTT"
            text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        cues.append((start, end, text))
    return cues


def check_cues(cues, text: str, fmt: str) -> None:
    assert cues, "a transcript with text must give at least one cue"
    prev_end = 0.0
    for start, end, _ in cues:
        assert prev_end <= start < end, cues
        prev_end = end
    expected = text.replace("-->", "->") if fmt == "srt" else text
    assert squash(" ".join(c[2] for c in cues)) == squash(expected)


def check_document(doc: str, fmt: str, ref: dict) -> None:
    """``doc`` in ``fmt`` holds the same transcript as ``ref`` (the JSON of a run on the same file)."""
    if fmt == "text":
        assert doc == ref["text"] + "\n"
    elif fmt == "json":
        d = json.loads(doc)
        check_transcript(d, source=ref["source"], model=ref["model"])
        assert d["text"] == ref["text"]
        assert [e["token_id"] for e in d["events"]] == [e["token_id"] for e in ref["events"]]
    elif fmt == "jsonl":
        assert doc.endswith("\n")
        rows = [json.loads(line) for line in doc.splitlines()]
        *tokens, summary = rows
        assert all(r["type"] == "token" and r["source"] == ref["source"] for r in tokens)
        assert [r["index"] for r in tokens] == list(range(len(tokens)))
        assert [r["token_id"] for r in tokens] == [e["token_id"] for e in ref["events"]]
        assert summary["type"] == "summary" and summary["source"] == ref["source"]
        assert summary["text"] == ref["text"] == "".join(r["text"] for r in tokens).strip()
        assert summary["metrics"]["n_tokens"] == len(tokens)
    else:
        check_cues(parse_cues(doc, fmt), ref["text"], fmt)


# ---------------------------------------------------------------------------------------------
# Start-up: help and config stay light
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, must_mention", [
    (["--help"], ["transcribe", "config", "--config", "--debug"]),
    (["transcribe", "file", "--help"],
     [*OUTPUT_FORMATS, "--format", "--output", "--model", "--model-device", "--dtype", "--delay-ms",
      "--language", "--config", "--debug", "--plain", "ttft_ms"]),
    (["config"], ["model:", "transcription:", "output:"]),
])
def test_help_and_config_do_not_import_torch_or_transformers(cli_env, args, must_mention):
    run = voxcli(cli_env, *args, python_flags=("-X", "importtime"))
    assert run.code == 0, run
    imported = imported_packages(run.stderr)
    assert "voxcli" in imported, "importtime output not understood"
    assert not imported & set(HEAVY), f"{' '.join(args)} imported {sorted(imported & set(HEAVY))}"
    for word in must_mention:
        assert word in run.stdout, f"{word!r} not in the output of voxcli {' '.join(args)}"


def test_output_help_names_the_per_input_file_pattern(cli_env):
    """`-o DIR` writes `<name>.<format>` per input: the help must show that pattern, not eat it."""
    run = voxcli(cli_env, "transcribe", "file", "--help")
    assert run.code == 0, run
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", run.stdout).split())
    option = flat[flat.index("--output"):flat.index("--plain")]
    assert re.search(r"one \S*name\S*\.\S*format\S* per input", option, re.IGNORECASE), option


def test_version(cli_env):
    from voxcli import __version__

    run = voxcli(cli_env, "--version")
    assert run.code == 0 and run.stdout == f"voxcli {__version__}\n", run


# ---------------------------------------------------------------------------------------------
# One file, Realtime model: JSON on stdout, summary on stderr; plain text when piped
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rt_json_run(cli_env, realtime_dir) -> Run:
    return voxcli(cli_env, "transcribe", "file", HELLO, "--model", realtime_dir, "--format", "json")


def test_json_on_stdout_and_summary_on_stderr(rt_json_run, realtime_dir):
    run = rt_json_run
    assert run.code == 0, run
    assert "Traceback" not in run.stderr
    d = json.loads(run.stdout)  # stdout is the JSON document and nothing else
    assert run.stdout.endswith("}\n")
    check_transcript(d, source=str(HELLO), model=str(realtime_dir))
    assert d["events"], "the Realtime model on speech must emit tokens"
    assert abs(d["metrics"]["audio_s"] - sf.info(HELLO).duration) < 1e-3
    assert set(d["events"][0]) >= {"index", "token_id", "text", "t_emitted", "audio_start_s", "audio_end_s"}
    # The Realtime model knows where every token is in the audio.
    assert all(e["audio_start_s"] is not None and e["audio_end_s"] is not None for e in d["events"])
    summary = [line for line in run.err_lines if "ttft_ms" in line]
    assert len(summary) == 1, run
    assert str(HELLO) in summary[0] and f"{d['metrics']['n_tokens']} tokens" in summary[0]
    assert sum("loaded in" in line for line in run.err_lines) == 1
    assert not any(line.lstrip().startswith(("{", "}", '"')) for line in run.err_lines), "JSON leaked to stderr"


def test_plain_text_when_stdout_is_not_a_terminal(cli_env, realtime_dir, rt_json_run):
    reference = json.loads(rt_json_run.stdout)
    run = voxcli(cli_env, "transcribe", "file", HELLO, "--model", realtime_dir)
    assert run.code == 0, run
    assert run.stdout == reference["text"] + "\n"
    assert "\x1b[" not in run.stdout and "\x1b[" not in run.stderr, "escape codes when nothing is a terminal"
    assert any("ttft_ms" in line and str(HELLO) in line for line in run.err_lines), run
    assert reference["text"] not in run.stderr


# ---------------------------------------------------------------------------------------------
# Every format, both model kinds (in-process: the tiny models load in well under a second)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_args(realtime_dir, offline_dir, tmp_path_factory) -> dict[str, list]:
    # The offline model would generate 500 random tokens per file; 48 are plenty here.
    short = tmp_path_factory.mktemp("cfg") / "offline.yaml"
    short.write_text("model:\n  max_new_tokens: 48\n")
    return {
        "realtime": ["--model", realtime_dir],
        "offline": ["--model", offline_dir, "--language", "en", "--config", short],
    }


@pytest.fixture(scope="module")
def references(model_args, media) -> dict:
    """Per model kind, the JSON transcripts of hello and clip from one in-process run."""
    cache: dict[str, dict[str, dict]] = {}

    def get(kind: str) -> dict[str, dict]:
        if kind not in cache:
            result = invoke("transcribe", "file", media["hello"], media["clip"], *model_args[kind],
                            "--format", "json")
            assert result.exit_code == 0, result.output
            docs = json.loads(result.stdout)  # several files, no -o: one JSON array
            assert [d["source"] for d in docs] == [str(media["hello"]), str(media["clip"])]
            cache[kind] = {"hello": docs[0], "clip": docs[1]}
        return cache[kind]

    return get


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
@pytest.mark.parametrize("kind", ["realtime", "offline"])
def test_every_format_to_a_file_and_to_a_directory(kind, fmt, model_args, references, media, tmp_path):
    refs = references(kind)
    ext = EXT[fmt]

    # One input, -o FILE: the file holds the document, stdout stays empty.
    target = tmp_path / f"single.{ext}"
    result = invoke("transcribe", "file", media["hello"], *model_args[kind], "--format", fmt, "-o", target)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "ttft_ms" in result.stderr and str(target) in result.stderr
    check_document(target.read_text(encoding="utf-8"), fmt, refs["hello"])

    # Several inputs, -o DIR (not there yet): one <name>.<ext> per input, nothing else.
    out_dir = tmp_path / "out"
    result = invoke("transcribe", "file", media["hello"], media["clip"], *model_args[kind],
                    "--format", fmt, "-o", out_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([f"hello.{ext}", f"clip.{ext}"])
    for name in ("hello", "clip"):
        check_document((out_dir / f"{name}.{ext}").read_text(encoding="utf-8"), fmt, refs[name])


def test_offline_subtitle_cues_are_not_squeezed_to_a_millisecond(offline_dir, media, tmp_path):
    """The offline model gives every token its segment's span; cues must still be readable."""
    target = tmp_path / "hello.srt"
    result = invoke("transcribe", "file", media["hello"], "--model", offline_dir, "--language", "en",
                    "--format", "srt", "-o", target)
    assert result.exit_code == 0, result.output
    cues = parse_cues(target.read_text(encoding="utf-8"), "srt")
    assert len(cues) > 1, "500 random tokens should need several cues"
    durations_ms = [round((end - start) * 1000) for start, end, _ in cues]
    # Before the fix all cues but the first were squeezed to 1-16 ms. The tiny model packs
    # hundreds of random tokens into 4.3 s, so a short cue is legitimately a few tens of ms.
    assert min(durations_ms) >= 20, f"cue durations in ms: {durations_ms}"
    assert sum(durations_ms) >= 0.9 * 1000 * (cues[-1][1] - cues[0][0])  # the segment is shared out


def test_several_inputs_to_a_path_that_is_a_file_is_an_error(realtime_dir, media, tmp_path):
    existing = tmp_path / "taken.txt"
    existing.write_text("keep me\n")
    result = invoke("transcribe", "file", media["hello"], media["clip"], "--model", realtime_dir,
                    "-o", existing)
    assert result.exit_code != 0
    assert result.stderr.startswith(ERROR) and result.stderr.count("\n") == 1, result.stderr
    assert "loaded in" not in result.stderr
    assert existing.read_text() == "keep me\n"


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_several_inputs_as_subtitles_without_o_is_one_line(cli_env, realtime_dir, media, fmt):
    run = voxcli(cli_env, "transcribe", "file", media["hello"], media["clip"], "--model", realtime_dir,
                 "--format", fmt)
    line = assert_one_error_line(run)
    assert fmt in line and "-o" in line
    assert run.stdout == ""


# ---------------------------------------------------------------------------------------------
# Bad input: one line per bad file, the others still run
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_files_get_one_line_each_and_the_good_ones_are_transcribed(cli_env, realtime_dir, media):
    order = ["missing", "hello", "directory", "empty", "silence", "zero_frames", "truncated", "short",
             "corrupt", "8bit", "text", "24bit", "png", "stereo44k", "stereo48k", "clip"]
    assert set(order) == set(MUST_FAIL) | set(MUST_TRANSCRIBE) | set(EITHER)
    paths = {name: str(media[name]) for name in order}
    run = voxcli(cli_env, "transcribe", "file", *[paths[n] for n in order], "--model", realtime_dir,
                 "--format", "json")
    assert "Traceback" not in run.stderr, run
    assert run.code == 1, run

    docs = json.loads(run.stdout)
    sources = [d["source"] for d in docs]
    errors = [line for line in run.err_lines if line.startswith(ERROR)]
    for name in order:
        n_errors = sum(line.startswith(f"{ERROR} {paths[name]}:") for line in errors)
        transcribed = sources.count(paths[name])
        assert n_errors + transcribed == 1, f"{name}: {n_errors} error lines, {transcribed} transcripts\n{run}"
        if name in MUST_FAIL:
            assert n_errors == 1, f"{name} should be an error\n{run}"
        if name in MUST_TRANSCRIBE:
            assert transcribed == 1, f"{name} should be transcribed\n{run}"
    for line in errors:
        assert any(line.startswith(f"{ERROR} {paths[n]}:") for n in order), f"error naming no input: {line}"
    assert sources == [paths[n] for n in order if paths[n] in sources], "transcripts out of order"

    for d in docs:
        check_transcript(d, source=d["source"], model=str(realtime_dir))
        path = Path(d["source"])
        if path != media["truncated"]:
            assert abs(d["metrics"]["audio_s"] - sf.info(path).duration) < 1e-3, d["source"]
        # one summary line per transcript
        assert sum(line.startswith(f"{d['source']}:") and "ttft_ms" in line for line in run.err_lines) == 1
    assert sum("loaded in" in line for line in run.err_lines) == 1, "the model is loaded once"


@pytest.fixture(scope="module")
def only_bad_paths(media) -> list[str]:
    return [str(media[name]) for name in ("missing", "empty", "png", "directory", "zero_frames")]


def test_only_bad_files_never_load_the_model(cli_env, realtime_dir, only_bad_paths):
    run = voxcli(cli_env, "transcribe", "file", *only_bad_paths, "--model", realtime_dir)
    assert run.code == 1, run
    assert "Traceback" not in run.stderr
    assert run.stdout == ""
    for path, line in zip(only_bad_paths, run.err_lines, strict=True):
        assert line.startswith(f"{ERROR} {path}:"), line
    assert "loaded in" not in run.stderr


def test_only_bad_files_do_not_import_torch_or_transformers(cli_env, realtime_dir, only_bad_paths):
    """docs/design.md, "Data flow": heavy imports stay out of the start-up path until a model is needed."""
    run = voxcli(cli_env, "transcribe", "file", *only_bad_paths, "--model", realtime_dir,
                 python_flags=("-X", "importtime"))
    assert run.code == 1, run
    imported = imported_packages(run.stderr)
    assert "voxcli" in imported
    assert not imported & set(HEAVY), f"imported {sorted(imported & set(HEAVY))} without needing a model"


# ---------------------------------------------------------------------------------------------
# A bad model
# ---------------------------------------------------------------------------------------------


def test_missing_model_path_is_one_line(cli_env):
    run = voxcli(cli_env, "transcribe", "file", HELLO, "--model", "/nonexistent")
    line = assert_one_error_line(run)
    assert "--model" in line and "/nonexistent" in line
    assert run.stdout == ""


def test_model_directory_without_a_checkpoint_is_one_line(cli_env, tmp_path):
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    (empty / "README.md").write_text("nothing here\n")
    run = voxcli(cli_env, "transcribe", "file", HELLO, "--model", empty)
    line = assert_one_error_line(run)
    assert str(empty) in line
    assert "--model" in line, f"the line should say which option was wrong: {line!r}"
    assert run.stdout == ""


def test_debug_shows_the_traceback(cli_env):
    run = voxcli(cli_env, "transcribe", "file", HELLO, "--model", "/nonexistent", "--debug")
    assert run.code != 0
    assert "Traceback" in run.stderr
    assert "ModelError" in run.stderr


# ---------------------------------------------------------------------------------------------
# Bad configuration, and `voxcli config`
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad-config") / "bad.yaml"
    path.write_text("model:\n  device: cpu\n  devise: cuda\n")
    return path


@pytest.mark.parametrize("case", ["unknown key", "unknown key (config)", "delay", "delay 1280", "delay listen",
                                  "format"])
def test_bad_configuration_is_one_line_and_exit_2(cli_env, realtime_dir, bad_yaml, case):
    args = {
        "unknown key": ["transcribe", "file", HELLO, "--model", realtime_dir, "--config", bad_yaml],
        "unknown key (config)": ["config", "--config", bad_yaml],
        "delay": ["transcribe", "file", HELLO, "--model", realtime_dir, "--delay-ms", "100"],
        "delay 1280": ["transcribe", "file", HELLO, "--model", realtime_dir, "--delay-ms", "1280"],
        "delay listen": ["listen", "--input", HELLO, "--model", realtime_dir, "--delay-ms", "2320"],
        "format": ["transcribe", "file", HELLO, "--model", realtime_dir, "--format", "xml"],
    }[case]
    run = voxcli(cli_env, *args)
    line = assert_one_error_line(run, code=2)
    assert run.stdout == ""
    if case.startswith("unknown key"):
        assert "model.devise" in line and str(bad_yaml) in line and "model.device" in line
    elif case.startswith("delay"):
        assert "delay_ms" in line and "80 to 1200, or 2400" in line and args[-1] in line
    else:
        assert "xml" in line and all(fmt in line for fmt in OUTPUT_FORMATS)


def test_config_prints_the_files_values(cli_env, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  device: cpu\n  dtype: float32\n  threads: 3\n"
                    "transcription:\n  delay_ms: 960\n  language: fr\noutput:\n  format: vtt\n")
    run = voxcli(cli_env, "config", "--config", path)
    assert run.code == 0, run
    printed = yaml.safe_load(run.stdout)
    assert printed == load_config(path).to_dict()
    assert printed["model"]["device"] == "cpu" and printed["model"]["threads"] == 3
    assert printed["transcription"] == {"delay_ms": 960, "final_delay_ms": None, "final_model": None, "language": "fr",
                                        "keyterms": [], "keyterm_bias": 2.0, "alternatives": 0, "on_eos": "restart"}
    assert printed["output"]["format"] == "vtt"


def test_config_uses_the_user_file_and_config_flag_wins(cli_env, tmp_path):
    xdg = tmp_path / "xdg"
    (xdg / "voxcli").mkdir(parents=True)
    (xdg / "voxcli" / "config.yaml").write_text("model:\n  dtype: float16\noutput:\n  format: srt\n")
    env = {**cli_env, "XDG_CONFIG_HOME": str(xdg)}
    printed = yaml.safe_load(voxcli(env, "config").stdout)
    assert printed["model"]["dtype"] == "float16" and printed["output"]["format"] == "srt"
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("output:\n  format: jsonl\n")
    printed = yaml.safe_load(voxcli(env, "config", "--config", explicit).stdout)
    assert printed["output"]["format"] == "jsonl"
    assert printed["model"]["dtype"] == "auto"


# ---------------------------------------------------------------------------------------------
# Ctrl-C keeps what was transcribed
# ---------------------------------------------------------------------------------------------


def test_ctrl_c_writes_what_was_transcribed_and_exits_130(cli_env, realtime_dir, tmp_path):
    clip, rate = sf.read(HELLO, dtype="int16")
    long_wav = tmp_path / "long.wav"
    repeats = int(np.ceil(120 / (len(clip) / rate)))  # about two minutes of speech
    sf.write(long_wav, np.tile(clip, repeats), rate, subtype="PCM_16")
    out = tmp_path / "out.json"

    proc = subprocess.Popen(
        [sys.executable, "-m", "voxcli", "transcribe", "file", str(long_wav), "--model", str(realtime_dir),
         "--format", "json", "-o", str(out)],
        env=cli_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # A shell's background job starts with SIGINT ignored, and Python then keeps it so (as a
        # program run under nohup should): give the child the terminal's default, as a user has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    stderr_lines: list[str] = []
    loaded = threading.Event()

    def read_stderr() -> None:
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace")
            stderr_lines.append(line)
            if "loaded in" in line:
                loaded.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert loaded.wait(120), "the model never loaded:\n" + "".join(stderr_lines)
        time.sleep(1.0)  # let it stream for a while; the tiny model would need several seconds for it all
        assert proc.poll() is None, "finished before Ctrl-C; make the input longer"
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    stderr = "".join(stderr_lines)

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert stdout == b""
    d = json.loads(out.read_text(encoding="utf-8"))
    check_transcript(d, source=str(long_wav), model=str(realtime_dir), complete=False)
    assert d["events"], "at least one token was made before Ctrl-C"
    assert d["events"][-1]["audio_end_s"] < d["metrics"]["audio_s"] - 1.0, "it did not stop early"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "temporary file left"


# ---------------------------------------------------------------------------------------------
# Errors carry data; only the CLI names flags
# ---------------------------------------------------------------------------------------------


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(torch_cuda_available(), reason="needs a machine without CUDA")
def test_an_engine_error_names_the_setting_and_each_command_its_own_flag(cli_env, realtime_dir):
    from voxcli.engine.local import load_engine
    from voxcli.errors import ModelError

    with pytest.raises(ModelError) as caught:
        load_engine(str(realtime_dir), device="cuda")
    assert caught.value.data == {"device": "cuda"}
    assert str(caught.value).endswith("use model.device=cpu") and "--" not in str(caught.value)
    # The same setting is --model-device in every command (listen's --device is the microphone);
    # transcribe's old --device still works, with a one-line notice.
    hello = HELLO
    run = voxcli(cli_env, "transcribe", "file", hello, "--model", realtime_dir, "--model-device", "cuda")
    assert run.code == 1 and run.stderr.strip().endswith("use --model-device=cpu"), run
    run = voxcli(cli_env, "transcribe", "file", hello, "--model", realtime_dir, "--device", "cuda")
    notice, error = run.stderr.strip().splitlines()
    assert notice == "voxcli: --device is now --model-device (the old name will go)"
    assert run.code == 1 and error.endswith("use --model-device=cpu"), run
    run = voxcli(cli_env, "listen", "--input", hello, "--model", realtime_dir, "--model-device", "cuda")
    assert run.code == 1 and run.stderr.strip().endswith("use --model-device=cpu"), run


def test_a_missing_model_is_named_by_its_flag_and_in_python_by_its_key(cli_env, tmp_path):
    from voxcli.engine.hub import resolve_checkpoint
    from voxcli.errors import ModelError

    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError) as caught:
        resolve_checkpoint(str(missing))
    assert str(caught.value).startswith(f"model.name {missing}: no such directory")
    assert caught.value.data == {"model": str(missing)}
    run = voxcli(cli_env, "transcribe", "file", HELLO, "--model", missing)
    assert run.stderr.strip() == f"voxcli: error: --model {missing}: no such directory, and not a hub id (owner/name)"


@pytest.mark.parametrize("command, heading", [("transcribe file", "### `voxcli transcribe file"),
                                              ("serve", "### `voxcli serve`"),
                                              ("listen", "### `voxcli listen`"),
                                              ("dictate", "### `voxcli dictate`")])
def test_the_readme_option_tables_list_every_option_help_shows(command, heading):
    """README's option table for a command and its --help name the same options, no more, no fewer."""
    import re

    from typer.testing import CliRunner

    section = (ROOT / "README.md").read_text().split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    rows = [line.replace("\\|", "/").split("|")[1] for line in section.splitlines() if line.startswith("| `-")]
    in_readme = {opt for row in rows for opt in re.findall(r"--[a-z][a-z0-9-]*", row)}
    shown = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"}).output
    in_help = set(re.findall(r"--[a-z][a-z0-9-]*", shown)) - {"--help"}
    assert in_readme and in_readme == in_help
