"""Figures as people read them: a file's one-line summary, percentile tables (Rich), the step's name."""

from __future__ import annotations

import math

from rich.table import Table

from voxcli.events import Transcript, keyterm_counts

# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_summary(transcript: Transcript) -> str:
    """One status line for stderr, e.g. ``a.wav: 42 tokens, 3.10 s audio, ttft_ms 51.2, ...``."""
    m = transcript.metrics
    n_tokens = m.n_tokens or len(transcript.events)
    return (
        f"{transcript.source}: {n_tokens} tokens, {m.audio_s:.2f} s audio, "
        f"ttft_ms {_num(m.ttft_ms, '.1f')}, total_ms {_num(m.total_ms, '.1f')}, "
        f"rtf {_num(m.rtf, '.2f')}{keyterm_words(keyterm_counts(transcript.events))}"
    )


def keyterm_words(counts: dict) -> str:
    """``, keyterms Voxtral 3 (1 biased), ...`` for a summary line; empty without keyterms said."""
    if not counts:
        return ""
    return ", keyterms " + ", ".join(f"{phrase} {c['said']} ({c['biased']} biased)" for phrase, c in counts.items())


_STAT_COLUMNS = ("p50", "p90", "p95", "p99", "mean", "min", "max")


def sig3(value: float | None) -> str:
    """A figure to 3 significant figures, never in e-notation and never wider than it must be:
    1068.4 -> "1070", 20.94 -> "20.9", 1.264 -> "1.26", 0.1234 -> "0.123"."""
    if value is None or not math.isfinite(value):
        return "-"
    value = float(f"{value:.2e}")  # rounded to 3 significant figures first: 9.996 -> 10.0
    if value == 0:
        return "0"
    digits = math.floor(math.log10(abs(value))) + 1  # digits before the point
    if digits >= 3:
        return str(int(value))
    return f"{value:.{3 - digits}f}"


def metrics_table(title: str, rows: dict[str, dict]) -> Table:
    """A table of ``summarize()`` dicts, one row per metric name. Every figure stays whole at 80
    columns: 3 significant figures, and no borders (two spaces between columns)."""
    table = Table(title=title, box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    table.add_column("metric", no_wrap=True, min_width=max((len(m) for m in rows), default=6))
    table.add_column("n", justify="right", no_wrap=True)
    for name in _STAT_COLUMNS:
        table.add_column(name, justify="right", no_wrap=True)
    for metric, stats in rows.items():
        table.add_row(metric, str(stats.get("n", 0)), *(sig3(stats.get(k)) for k in _STAT_COLUMNS))
    return table


def step_words(step: str | None, compile_s: float | None, *, graphs: dict | None = None,
               fallback: str | None = None) -> str:
    """Which Realtime step ran, e.g. ``static compiled step (compiled in 7.0 s: 12 graphs, 12 CUDA
    graphs recorded, 0 skipped)``, or why it is not compiled; "" if none."""
    if not step:
        return ""
    if fallback:
        return f"{step} step (compiling failed, so it runs eagerly: {fallback})"
    if compile_s is None:
        return f"{step} step"
    made = (f": {graphs['compiled']} graphs, {graphs['recorded']} CUDA graphs recorded, {graphs['skipped']} skipped"
            if graphs else "")
    return f"{step} step (compiled in {compile_s:.1f} s{made})"
