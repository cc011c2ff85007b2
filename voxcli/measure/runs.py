"""`voxcli bench`: latency percentiles, with every raw sample kept so any figure can be recomputed.

Figures (names as in docs/design.md, "Latency, defined"; all from ``time.perf_counter()``; warm-up runs are
never counted; the model is loaded and warm before the first clock starts):

- ``ttft_ms``: complete audio handed to the engine -> first non-special token id on the host.
- ``total_ms``: same start -> last token. ``rtf``: total time / audio duration.
- ``display_lag_ms``: token id on the host -> drawn by the Rich live view (rendered into an
  in-memory terminal, so our whole pipeline is timed: engine thread, queue, main thread, Rich);
  in file mode, as ``transcribe file``, at most 60 redraws a second (``FILE_REDRAW_S``).
- ``first_chunk_ms``: what a display that batches ``batch_words`` words would show first, from the
  same token timeline (the old system's "TTFT").
- ``step_ms``: time between consecutive tokens when running flat out (one model step each).
- ``critical_path_ms``: the model's own path to the first token, timed directly (features +
  encoder + prefill + first decode step, no threads or queues); ``ttft_ms`` minus it is our overhead.
- with ``paced``, each clip is replayed at real speed through the live pipeline, adding
  ``emission_latency_ms`` (token drawn - its audio captured), ``emitted_after_ready_ms`` (token
  out - its chunk's audio captured), ``first_word_ms`` (speech onset -> first word drawn) and
  ``finalize_ms`` (end of speech -> last word drawn).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from voxcli.errors import first_line
from voxcli.events import STEP_BUDGET_MS, StreamRole, TokenEvent, TranscriptMetrics, pool, summarize
from voxcli.live.driver import StreamDriver, cycle
from voxcli.live.items import LiveOptions, LiveToken
from voxcli.live.twopass import TwoPassRecorder, word_latencies
from voxcli.measure.environment import environment
from voxcli.output.view import FILE_REDRAW_S, LiveTranscript
from voxcli.units import TOKEN_SAMPLES, seconds

FILE_METRICS = ("ttft_ms", "total_ms", "critical_path_ms", "display_lag_ms", "first_chunk_ms", "step_ms", "rtf")
PACED_METRICS = ("emission_latency_ms", "emitted_after_ready_ms", "first_word_ms", "finalize_ms", "live_step_ms")
# With a final stream (two-pass); the paced figures above are then the provisional stream's.
TWO_PASS_METRICS = ("provisional_word_latency_ms", "final_word_latency_ms", "revision_rate", "final_step_ms")


@dataclass
class Clip:
    name: str
    path: Path
    audio: np.ndarray


@dataclass
class BenchOptions:
    runs: int = 20
    warmup: int = 2
    paced: bool = False
    speed: float = 1.0
    batch_words: int = 6
    live: object = None  # live.LiveOptions for paced runs (the endpointer); None: its defaults
    final_delay_ms: int | None = None  # paced runs: two-pass, a final stream at this delay

    def validate(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.batch_words < 1:
            raise ValueError("runs and batch_words must be >= 1 and warmup >= 0")


@dataclass
class BenchReport:
    environment: dict
    options: dict
    runs: list[dict] = field(default_factory=list)  # one record per measured run, raw samples inside

    def samples(self, metric: str, clip: str | None = None) -> list[float]:
        return pool(run.get(metric) for run in self.runs if clip is None or run["clip"] == clip)

    def summary(self) -> dict:
        metrics = FILE_METRICS + (PACED_METRICS if self.options.get("paced") else ())
        metrics += TWO_PASS_METRICS if self.options.get("final_delay_ms") else ()
        clips = sorted({r["clip"] for r in self.runs})
        return {
            "all": {m: summarize(self.samples(m)) for m in metrics},
            "per_clip": {c: {m: summarize(self.samples(m, c)) for m in metrics} for c in clips},
        }

    def to_dict(self) -> dict:
        return {"environment": self.environment, "options": self.options, "summary": self.summary(),
                "runs": self.runs}


def first_batch_ms(events: list[TokenEvent], t_start: float, batch_words: int) -> float | None:
    """When a display that releases text ``batch_words`` words at a time would show anything.

    A word is complete when the next word starts (a token beginning with whitespace) or the
    stream ends; the first batch is released when ``batch_words`` words are complete.
    """
    words = 0
    in_word = False
    for event in events:
        if not event.text:
            continue
        if event.text[0].isspace() and in_word:
            words += 1
            if words == batch_words:
                return (event.t_emitted - t_start) * 1000.0
        if event.text.strip():
            in_word = True
    if in_word and events:
        return (events[-1].t_emitted - t_start) * 1000.0  # the end of the stream releases the rest
    return None


def _file_run(engine, clip: Clip, opts: BenchOptions) -> dict:
    from voxcli.live.runner import transcribe_audio

    console = Console(file=io.StringIO(), force_terminal=True, width=100, height=30)
    with LiveTranscript(console, title=clip.name, min_redraw_s=FILE_REDRAW_S) as view:  # as `transcribe file`
        transcript = transcribe_audio(engine, clip.audio, source=clip.name, on_event=view.add, on_idle=view.draw)
    m = transcript.metrics
    events = transcript.events
    t_start = transcript.t_start
    gaps = [(b.t_emitted - a.t_emitted) * 1000.0 for a, b in zip(events, events[1:])]
    return {
        "clip": clip.name, "mode": "file", "audio_s": round(m.audio_s, 4), "n_tokens": m.n_tokens,
        "ttft_ms": m.ttft_ms, "total_ms": m.total_ms, "rtf": m.rtf,
        "critical_path_ms": engine.critical_path_ms(clip.audio),
        "first_chunk_ms": first_batch_ms(events, t_start, opts.batch_words),
        "display_lag_ms": list(view.display_lag_ms), "step_ms": gaps,
    }


def _paced_run(engine, clip: Clip, opts: BenchOptions) -> dict:
    from voxcli.audio.capture import FileSource
    from voxcli.live.runner import run_live

    console = Console(file=io.StringIO(), force_terminal=True, width=100, height=30)
    drawn: list[tuple[TokenEvent, float]] = []
    emission: list[float] = []
    after_ready: list[float] = []
    source = FileSource(clip.path, speed=opts.speed, queue_s=max(10.0, seconds(len(clip.audio)) + 1))
    final_engine = engine.with_delay(opts.final_delay_ms) if opts.final_delay_ms else None
    with LiveTranscript(console, title=clip.name) as view:
        # Two-pass drawn and counted as listen does it (sealed at each end of speech).
        two = TwoPassRecorder(view) if final_engine is not None else None

        def on_token(event: TokenEvent, stream: str = "") -> None:
            if two is not None:
                two.token(event, stream)
            else:
                view.add(event)
            if stream != StreamRole.FINAL:  # the figures below are the first (provisional) stream's
                drawn.append((event, time.perf_counter()))

        def on_latency(token, emission_ms: float | None, after_ms: float | None) -> None:
            if token.stream:
                two.latency(token.stream, token.event, emission_ms)
            if token.stream == StreamRole.FINAL:
                return
            if emission_ms is not None:
                emission.append(emission_ms)
            if after_ms is not None:
                after_ready.append(after_ms)

        result = run_live(engine, source, on_token=on_token, stop=threading.Event(), options=opts.live,
                          on_latency=on_latency, final_engine=final_engine,
                          on_endpoint=(lambda endpoint: two.endpoint()) if two is not None else None)
    from voxcli.audio.decode import detect_speech

    # Speech onsets and ends by level, on the clean clips: a reference independent of the
    # endpointer being measured (Silero's ends lag the true end by 50-230 ms here).
    regions = detect_speech(clip.audio)
    words = [(e, t) for e, t in drawn if e.text.strip()]
    first_word = finalize = None
    if regions and words:
        first_word = (words[0][1] - result.capture_time(regions[0][0] + 1)) * 1000.0
        finalize = (words[-1][1] - result.capture_time(regions[-1][1])) * 1000.0
    return {
        "clip": clip.name, "mode": "paced", "audio_s": round(result.audio_s, 4), "n_tokens": len(result.events),
        "emission_latency_ms": emission, "emitted_after_ready_ms": after_ready,
        "first_word_ms": first_word, "finalize_ms": finalize, "live_step_ms": list(result.step_ms),
        "dropped_blocks": result.dropped_blocks, "flushes": result.flushes,
        **(_two_pass_record(two) if two is not None else {}),
    }


def _two_pass_record(two: TwoPassRecorder) -> dict:
    figures, tokens = two.figures(), two.tokens
    return {
        "provisional_word_latency_ms": word_latencies(tokens, StreamRole.PROVISIONAL),
        "final_word_latency_ms": word_latencies(tokens, StreamRole.FINAL),
        "revision_rate": figures["revision_rate"],
        "replacements": figures["replacements"],
        "final_step_ms": [t[3] for t in tokens if t[0] == StreamRole.FINAL and t[3] is not None],
    }


def run_bench(engine, clips: list[Clip], opts: BenchOptions, *,
              progress: Callable[[str], None] | None = None) -> BenchReport:
    """Warm-up runs (discarded) then ``runs`` measured runs of every clip, file mode and, with
    ``paced``, live mode."""
    opts.validate()
    env = environment(engine)
    report = BenchReport(environment=env, options={
        "runs": opts.runs, "warmup": opts.warmup, "paced": opts.paced, "speed": opts.speed,
        "batch_words": opts.batch_words, "endpointer": _endpointer(opts.live) if opts.paced else None,
        "final_delay_ms": opts.final_delay_ms,
        "clips": {c.name: round(seconds(len(c.audio)), 4) for c in clips}})
    for clip in clips:
        for i in range(opts.warmup + opts.runs):
            record = _file_run(engine, clip, opts)
            if i >= opts.warmup:
                report.runs.append({**record, "run": i - opts.warmup})
            if progress:
                progress(f"{clip.name} file run {i + 1}/{opts.warmup + opts.runs}")
    if opts.paced:
        paced_runs = max(1, opts.runs // 4) if opts.runs > 4 else opts.runs
        for clip in clips:
            for i in range(paced_runs):
                report.runs.append({**_paced_run(engine, clip, opts), "run": i})
                if progress:
                    progress(f"{clip.name} paced run {i + 1}/{paced_runs}")
        report.options["paced_runs"] = paced_runs
    return report


def _endpointer(live) -> dict:
    live = live or LiveOptions()
    return {"vad": live.vad, "flush_after_ms": live.flush_after_ms}


# ------------------------------------------------------------------------------------------ load

LOAD_TIMEOUT_S = 300.0
BEHIND_MS = 2000.0  # a paced session whose last text comes later than this after its audio fell behind


def _load_session(engine, clip: Clip, paced: bool) -> dict:
    """One client session against a server: stream the clip (paced at real speed or as fast as
    possible), time every delta. Never raises: a failure is recorded in the result."""
    record: dict = {"clip": clip.name, "audio_s": round(seconds(len(clip.audio)), 4), "error": None}
    after_ready: list[float] = []  # paced: each token's emission after the push that let it step
    t0 = time.perf_counter()
    t_audio_end = t0
    items: list = []
    # The session's cycle as listen and serve run it, with no endpointer: the client's end is the end.
    driver = StreamDriver(engine, items.append, LiveOptions(flush_after_ms=0, blank_run_s=0.0,
                                                            max_utterance_s=float("inf")))
    try:
        if engine.kind == "realtime":
            step = TOKEN_SAMPLES
            for i in range(0, len(clip.audio), step):
                if paced:
                    time.sleep(max(0.0, t0 + seconds(i + step) - time.perf_counter()))
                t_ready = time.perf_counter()
                seen = len(items)
                driver.hear(clip.audio[i:i + step], t_ready)
                cycle(engine, [driver])
                after_ready += [(item.event.t_emitted - t_ready) * 1000.0 for item in items[seen:]
                                if isinstance(item, LiveToken) and engine.info.step_times]
                if time.perf_counter() - t0 > LOAD_TIMEOUT_S:
                    raise TimeoutError(f"session exceeded {LOAD_TIMEOUT_S:.0f} s")
            t_audio_end = time.perf_counter()
        else:
            driver.hear(clip.audio, t0)
        driver.close()
    except Exception as exc:  # noqa: BLE001 - a failed session is a result of a load test
        record["error"] = first_line(exc)
        driver.drop()
    events = [item.event for item in items if isinstance(item, LiveToken)]
    end = time.perf_counter()
    # ttft as everywhere (TranscriptMetrics.measure), counted from the session's start: paced, that
    # is when its first audio went out, not when the clip was complete.
    ttft_ms = TranscriptMetrics.measure(events, t0, audio_s=seconds(len(clip.audio))).ttft_ms
    times = [e.t_emitted for e in events if e.text]
    record.update(
        n_deltas=len(times),
        ttft_ms=ttft_ms,
        total_ms=(end - t0) * 1000.0,
        finalize_ms=(times[-1] - t_audio_end) * 1000.0 if times and paced else None,
        delta_interval_ms=[(b - a) * 1000.0 for a, b in zip(times, times[1:])],
        deltas_per_s=len(times) / max(end - t0, 1e-9),
        emitted_after_ready_ms=after_ready if paced else [],
        steps=[(e.batch, e.step_ms) for e in events if e.batch and e.step_ms is not None],
    )
    record["behind"] = bool(paced and record["finalize_ms"] is not None and record["finalize_ms"] > BEHIND_MS)
    return record


def run_load(engine, clip: Clip, *, concurrency: int, paced: bool) -> dict:
    """``concurrency`` simultaneous sessions on a server, each streaming ``clip``; per-session and
    aggregate figures. Bounded: one round of sessions, each limited to LOAD_TIMEOUT_S."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    results: list[dict | None] = [None] * concurrency
    barrier = threading.Barrier(concurrency)

    def client(i: int) -> None:
        barrier.wait()  # start together: that is the load
        results[i] = {"session": i, **_load_session(engine, clip, paced)}

    threads = [threading.Thread(target=client, args=(i,), name=f"voxcli-load-{i}", daemon=True)
               for i in range(concurrency)]
    cycles_before = engine.environment().get("server_cycles")  # voxcli serve's own split, if it says it
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOAD_TIMEOUT_S + 30)
    wall_s = time.perf_counter() - t0
    sessions = [r if r is not None else {"session": i, "error": "did not finish"} for i, r in enumerate(results)]
    ok = [s for s in sessions if not s.get("error")]

    def pooled(metric: str) -> list[float]:
        return pool(s.get(metric) for s in ok)

    steps = [step for s in sessions for step in s.pop("steps", []) if not s.get("error")]  # raw: not in the JSON
    return {
        "server_split": server_split(cycles_before, engine.environment().get("server_cycles")),
        "concurrency": concurrency, "paced": paced, "clip": clip.name, "wall_s": wall_s,
        "sessions": sessions,
        "batched_steps": batched_steps(steps),
        "aggregate": {
            "ttft_ms": summarize(pooled("ttft_ms")), "total_ms": summarize(pooled("total_ms")),
            "finalize_ms": summarize(pooled("finalize_ms")),
            "delta_interval_ms": summarize(pooled("delta_interval_ms")),
            "emitted_after_ready_ms": summarize(pooled("emitted_after_ready_ms")),
            "deltas_per_s": sum(s["n_deltas"] for s in ok) / wall_s if wall_s > 0 else None,
            "failed": len(sessions) - len(ok), "behind": sum(1 for s in ok if s["behind"]),
        },
    }


def server_split(before: dict | None, after: dict | None) -> dict | None:
    """A server's scheduler time over a load test, per row it stepped (one row: a stream's 80 ms
    of work): ``host_ms_per_row`` (everything outside the forwards), ``forward_ms_per_row``."""
    if not before or not after:
        return None
    d = {k: after[k] - before[k] for k in after}
    rows = d["rows"]
    return {"rows": int(rows), "cycles": int(d["cycles"]),
            "host_ms_per_row": 1000 * d["host_s"] / rows if rows else None,
            "forward_ms_per_row": 1000 * d["forward_s"] / rows if rows else None}


def batched_steps(steps: list[tuple[int, float]]) -> dict:
    """A local engine's batched step from its tokens' ``(batch, step_ms)``: the step time's
    percentiles per number of streams stepped together (every forward of B streams made B tokens,
    so each forward weighs the same within its B), and the largest B whose p99 fits the budget."""
    by: dict[int, list[float]] = {}
    for batch, ms in steps:
        by.setdefault(batch, []).append(ms)
    stats = {b: summarize(by[b]) for b in sorted(by)}
    fits = [b for b, v in stats.items() if v["p99"] is not None and v["p99"] < STEP_BUDGET_MS]
    return {"by_batch": {str(b): v for b, v in stats.items()}, "largest_within_budget": max(fits) if fits else None}
