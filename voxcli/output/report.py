"""`voxcli report`: a live session or benchmarks, drawn (matplotlib, Agg backend: no display).

Reading and drawing are apart: ``read_session`` / ``read_bench`` turn files into plain arrays
(what tests compare with the files), ``draw_session`` / ``draw_bench`` turn those into a Figure.
Every panel is readable in black and white: markers, line styles and hatches carry the meaning,
colour only helps. matplotlib is an optional extra (``pip install 'voxcli[report]'``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxcli.errors import VoxcliError
from voxcli.events import STEP_BUDGET_MS, StreamRole
from voxcli.units import SAMPLE_RATE

FORMATS = (".png", ".svg")
BENCH_METRICS = ("ttft_ms", "first_chunk_ms", "total_ms", "display_lag_ms")
INSTALL = "pip install 'voxcli[report]' (in a checkout: .venv/bin/pip install matplotlib)"


class ReportError(VoxcliError):
    """A file that cannot be drawn: missing, empty, or not a session or a benchmark."""


def check_output(path: Path) -> None:
    """Before any long work: the picture's format, and that matplotlib is there to draw it."""
    if path.suffix.lower() not in FORMATS:
        raise ReportError(f"report {path}: the picture must end in {' or '.join(FORMATS)}")
    _pyplot()


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ReportError(f"drawing a report needs matplotlib: {INSTALL}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------- reading


@dataclass
class SessionData:
    """A live session as arrays, all times in seconds of the session's audio unless named _ms."""

    source: Path
    title: str
    sample_rate: int
    audio: np.ndarray
    speech: list[tuple[float, float]]  # (start, end) found by Silero VAD on the WAV
    endpoints: list[tuple[float, float]]  # (speech_end_s, decided_s) from the endpoint rows
    token_audio_s: np.ndarray  # the end of each token's audio span (tokens with one)
    token_heard_s: np.ndarray  # audio heard when that token came out
    token_flushed: np.ndarray  # made by the flush at an end of speech
    token_stream: list[str]  # "provisional" / "final", or "" for a single stream
    latency_ms: np.ndarray  # emission latency of every token that has one
    step_heard_s: np.ndarray
    step_ms: np.ndarray
    budget_ms: float = STEP_BUDGET_MS
    reconnects: list[float] = field(default_factory=list)  # lost_at_s of each reconnect


def read_any(path: Path):
    """A session (directory or JSONL) or a bench JSON, told apart by content."""
    path = Path(path)
    if path.is_dir():
        return read_session(path)
    if not path.is_file():
        raise ReportError(f"report {path}: no such file or directory")
    if path.suffix == ".jsonl":
        return read_session(path)
    return read_bench(path)


def read_session(path: Path) -> SessionData:
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("voxcli-*.jsonl"))
        if not found:
            raise ReportError(f"report {path}: no session here (voxcli-*.jsonl from `listen --save`)")
        path = found[-1]  # the newest: names carry the start time
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise ReportError(f"report {path}: line {n} is not JSON; is it a voxcli session?") from None
    if not rows or rows[0].get("type") != "session":
        what = "is empty" if not rows else "does not start with a session row"
        raise ReportError(f"report {path} {what}; pass a session from `listen --save` or a `bench --json` file")
    meta = rows[0]
    wav = path.with_suffix(".wav")
    audio, rate = _read_wav(wav) if wav.is_file() else (np.zeros(0, np.float32), int(meta.get("sample_rate", SAMPLE_RATE)))
    tokens = [r for r in rows if r.get("type") == "token"]
    spans = [t for t in tokens if t.get("audio_end_s") is not None]
    steps = [t for t in tokens if t.get("step_ms") is not None]
    delay = meta.get("delay_ms")
    title = (f"{meta.get('model', '?')} | {meta.get('kind', '?')} on {meta.get('device', '?')}"
             + (f" | delay {delay} ms" if delay else "") + f" | {path.name}")
    return SessionData(
        source=path, title=title, sample_rate=rate, audio=audio,
        speech=_speech(audio, rate),
        endpoints=[(r["speech_end_s"], r["decided_s"]) for r in rows if r.get("type") == "endpoint"],
        token_audio_s=np.array([t["audio_end_s"] for t in spans], float),
        token_heard_s=np.array([t["audio_available_s"] for t in spans], float),
        token_flushed=np.array([bool(t.get("flushed")) for t in spans], bool),
        token_stream=[t.get("stream", "") for t in spans],
        latency_ms=np.array([t["emission_latency_ms"] for t in tokens
                             if t.get("emission_latency_ms") is not None], float),
        step_heard_s=np.array([t["audio_available_s"] for t in steps], float),
        step_ms=np.array([t["step_ms"] for t in steps], float),
        reconnects=[r["lost_at_s"] for r in rows if r.get("type") == "reconnect"],
    )


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return audio[:, 0], int(rate)


def _speech(audio: np.ndarray, rate: int) -> list[tuple[float, float]]:
    if len(audio) == 0 or rate != SAMPLE_RATE:
        return []
    from voxcli.audio.vad import speech_regions

    return [(a / rate, b / rate) for a, b in speech_regions(audio)]


def read_bench(path: Path) -> dict:
    """A ``bench --json`` file: its summary per clip and environment."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ReportError(f"report {path} is empty")
    try:
        data = json.loads(text)
    except ValueError:
        raise ReportError(f"report {path} is neither a session JSONL nor a `bench --json` file") from None
    if isinstance(data, dict) and "load" in data:
        raise ReportError(f"report {path} is a load test (`bench --concurrency`); report draws `bench --json` "
                          f"runs and `listen` sessions")
    if not (isinstance(data, dict) and isinstance(data.get("summary"), dict) and "per_clip" in data["summary"]):
        raise ReportError(f"report {path} is neither a session JSONL nor a `bench --json` file")
    return {"source": Path(path), **data}


# --------------------------------------------------------------------------------------- drawing


def draw_session(data: SessionData):
    plt = _pyplot()
    fig, (wave, timeline, cdf, steps) = plt.subplots(4, 1, figsize=(12, 12), layout="constrained")
    fig.suptitle(data.title, fontsize=11)

    # 1. The waveform, speech regions shaded, endpoints as lines.
    t = np.arange(len(data.audio)) / data.sample_rate
    if len(data.audio):
        env_t, low, high = _envelope(t, data.audio)
        wave.fill_between(env_t, low, high, color="0.25", linewidth=0, label="waveform", zorder=2)
    for i, (a, b) in enumerate(data.speech):
        wave.axvspan(a, b, facecolor="0.92", edgecolor="0.7", hatch="//", linewidth=0, zorder=0,
                     label="speech (Silero VAD)" if i == 0 else None)
    for i, (end, decided) in enumerate(data.endpoints):
        wave.axvline(end, color="black", linestyle="-", linewidth=1.2, label="end of speech" if i == 0 else None)
        wave.axvline(decided, color="black", linestyle=":", linewidth=1.2,
                     label="endpoint decided" if i == 0 else None)
    for i, at in enumerate(data.reconnects):
        wave.axvline(at, color="black", linestyle="-.", linewidth=1.2, label="server lost" if i == 0 else None)
    wave.set(xlabel="session audio (s)", ylabel="amplitude", title="Input")
    wave.legend(loc="upper right", fontsize=8)

    # 2. Every token on the audio timeline at the moment it came out: the model's delay is the
    # height above the diagonal.
    if len(data.token_audio_s):
        final = np.array([stream == StreamRole.FINAL for stream in data.token_stream], bool)
        plain = ~data.token_flushed & ~final
        timeline.scatter(data.token_audio_s[plain], data.token_heard_s[plain], s=12, marker="o",
                         facecolors="none", edgecolors="black", label="provisional token" if final.any() else "token")
        timeline.scatter(data.token_audio_s[data.token_flushed], data.token_heard_s[data.token_flushed], s=28,
                         marker="x", color="black", label="flushed at end of speech")
        if final.any():  # two-pass: the final stream apart
            keep = final & ~data.token_flushed
            timeline.scatter(data.token_audio_s[keep], data.token_heard_s[keep], s=14, marker="s",
                             color="0.4", label="final token")
        top = float(max(data.token_heard_s.max(), data.token_audio_s.max()))
        timeline.plot([0, top], [0, top], linestyle="--", color="0.5", label="no delay")
        timeline.legend(loc="upper left", fontsize=8)
    else:
        timeline.text(0.5, 0.5, "no audio spans (a server does not say which audio a delta covers)",
                      ha="center", va="center", transform=timeline.transAxes)
    timeline.set(xlabel="audio the token covers, up to (s)", ylabel="audio heard when it came out (s)",
                 title="Tokens against the audio")

    # 3. Emission latency as a CDF, p50 and p95 marked.
    if len(data.latency_ms):
        x = np.sort(data.latency_ms)
        cdf.step(x, np.arange(1, len(x) + 1) / len(x), where="post", color="black")
        for q, style in ((50, "--"), (95, ":")):
            v = float(np.percentile(x, q))
            cdf.axvline(v, color="black", linestyle=style, label=f"p{q} {v:.0f} ms")
        cdf.legend(loc="lower right", fontsize=8)
    else:
        cdf.text(0.5, 0.5, "no emission latency (no audio spans)", ha="center", va="center",
                 transform=cdf.transAxes)
    cdf.set(xlabel="emission latency: token drawn - its audio captured (ms)", ylabel="share of tokens",
            title="Emission latency", ylim=(0, 1.02))

    # 4. Step time over the session against the budget.
    if len(data.step_ms):
        steps.plot(data.step_heard_s, data.step_ms, linestyle="none", marker=".", markersize=3, color="black",
                   label="decode step")
    steps.axhline(data.budget_ms, color="black", linestyle="--", label=f"budget {data.budget_ms:.0f} ms")
    steps.set(xlabel="session audio (s)", ylabel="step (ms)", title="Step time", ylim=(0, None))
    steps.legend(loc="upper right", fontsize=8)
    return fig


def _envelope(t: np.ndarray, x: np.ndarray, width: int = 2000):
    """Min and max per column, so a long recording draws as what it looks like, not as noise."""
    n = max(1, len(x) // width)
    cut = len(x) // n * n
    cols = x[:cut].reshape(-1, n)
    return t[:cut:n], cols.min(axis=1), cols.max(axis=1)


HATCHES = ("", "//", "..", "xx", "\\\\", "--")


def bench_label(report: dict) -> str:
    env = report.get("environment", {})
    model = Path(str(env.get("model", "?"))).name
    return f"{report['source'].name}: {model} on {env.get('device_name') or env.get('device', '?')}"


def draw_bench(reports: list[dict]):
    """Per clip: p50 bars, p90 and p99 marks, for each metric; one group of bars per file."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 2, figsize=(12, 11), layout="constrained")
    title = "voxcli bench" if len(reports) == 1 else "voxcli bench, compared"
    fig.suptitle(f"{title}: " + "  vs  ".join(bench_label(r) for r in reports), fontsize=10)
    clips = sorted({c for r in reports for c in r["summary"]["per_clip"]})
    x = np.arange(len(clips))
    width = 0.8 / len(reports)
    paced = any(r.get("options", {}).get("paced") for r in reports)
    panels = [*BENCH_METRICS, "headroom", *(["emission_latency_ms"] if paced else [])]
    if not paced:
        axes.flat[-1].set_axis_off()
    for ax, metric in zip(axes.flat, panels):
        for i, report in enumerate(reports):
            per_clip = report["summary"]["per_clip"]
            if metric == "headroom":
                p50 = [STEP_BUDGET_MS / s["p50"] if (s := per_clip.get(c, {}).get("step_ms", {})).get("p50") else 0.0
                       for c in clips]
                marks = {}
            else:
                stats = [per_clip.get(c, {}).get(metric, {}) for c in clips]
                p50 = [s.get("p50", 0.0) for s in stats]
                marks = {"p90": [s.get("p90", np.nan) for s in stats], "p99": [s.get("p99", np.nan) for s in stats]}
            at = x - 0.4 + width * (i + 0.5)
            ax.bar(at, p50, width * 0.9, facecolor="white" if i else "0.75", edgecolor="black",
                   hatch=HATCHES[i % len(HATCHES)], label=f"{bench_label(report)} p50" if metric == panels[0] else None)
            for (name, values), marker in zip(marks.items(), ("_", "x")):
                ax.scatter(at, values, marker=marker, s=80, color="black",
                           label=name if (metric == panels[0] and i == 0) else None)
        if metric == "headroom":
            ax.axhline(1.0, color="black", linestyle="--", label="the 80 ms budget")
            ax.set(ylabel="80 ms / step_ms p50 (x)", title="Step headroom (above 1: faster than real time)")
            ax.legend(fontsize=8)
        else:
            paced_only = " (paced, live)" if metric == "emission_latency_ms" else ""
            ax.set(ylabel="ms", title=metric + paced_only)
        ax.set_xticks(x, clips)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    return fig


def write_report(paths: list[Path], output: Path) -> Path:
    """Draw ``paths`` (one session, or one or more bench files) into ``output``."""
    output = Path(output)
    check_output(output)
    if not paths:
        raise ReportError("report: give a session directory, a session JSONL or bench JSON files")
    read = [read_any(p) for p in paths]
    sessions = [r for r in read if isinstance(r, SessionData)]
    if sessions and len(read) > 1:
        raise ReportError("report: draw one session at a time (several bench files can be compared)")
    fig = draw_session(sessions[0]) if sessions else draw_bench(read)
    return save(fig, output)


def save(fig, output: Path) -> Path:
    plt = _pyplot()
    try:
        fig.savefig(output, dpi=100)
    except OSError as exc:
        raise ReportError(f"report {output}: cannot write it ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return output
