"""Many streams, one forward (voxcli/engine/static.py, rows.py, forward.py): every stream's token ids
are exactly those of the same audio alone.

On a held-out model whose windows wrap and re-anchor many times inside the clip, at mixed delays,
with streams that start and end at different ticks and stall (a row with nothing to do computes
along, unkept), for B in 1, 2, 3, 5 and 8; with a stream that restarts at an end of sequence while
the others go on; with sessions in threads of their own, which the stepper batches; and
compiled. "Alone" is the same engine stepping one stream at a time (B = 1 of the same code, which
tests/test_static.py holds to transformers' own forward).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from voxcli.audio.decode import load_audio
from voxcli.engine.local import load_engine

ROOT = Path(__file__).resolve().parent.parent
HELLO = "examples/hello.wav"
LONG = "examples/long.wav"
HOP = 1280
DELAYS = [480, 160, 2400, 480, 80, 960, 480, 240]  # per stream: two-pass rows run at different delays


@pytest.fixture(scope="module")
def hello():
    return load_audio(HELLO)


def alone(engine, audio, **kw) -> list:
    session = engine.session(**kw)
    events = []
    for i in range(0, len(audio), HOP):
        session.push(audio[i:i + HOP])
        events += session.steps()
    events += session.finish()
    return events


def clips(audio, n: int) -> list[np.ndarray]:
    """``n`` different clips: shifted, louder, and shorter one after another (they end at
    different ticks)."""
    return [(np.roll(audio, i * 3000) * (1 + 0.1 * i))[: len(audio) - i * 4000].astype(np.float32) for i in range(n)]


def together(base, streams: list[dict], *, stall_every: int = 0) -> None:
    """Run ``streams`` (each: engine, audio, start tick) tick by tick: each pushes 80 ms a tick
    from its start on, and every stream that can step does, in one forward (steps_together).
    ``stall_every``: stream i skips a push every ``stall_every + i`` ticks and catches up at the
    next, so its row sits out some forwards. Each stream's events land in ``events``; its ``kw``,
    if any, are the arguments of its ``engine.session()``."""
    tick = 0
    while any(not s.get("done") for s in streams):
        for s in streams:
            if not s.get("done") and "session" not in s and tick >= s["start"]:
                s.update(session=s["engine"].session(**s.get("kw", {})), pos=0, events=[], owed=0)
        running = [s for s in streams if "session" in s and not s.get("done")]
        for i, s in enumerate(running):
            s["owed"] += 1
            if stall_every and tick % (stall_every + i) == 0 and s["pos"] + HOP < len(s["audio"]):
                continue
            n = s["owed"] * HOP
            s["session"].push(s["audio"][s["pos"]:s["pos"] + n])
            s["pos"] += n
            s["owed"] = 0
        for i, event in base.steps_together([s["session"] for s in running]):
            running[i]["events"].append(event)
        for s in running:
            if s["pos"] >= len(s["audio"]):
                s["events"] += s["session"].finish()
                s["done"] = True
        tick += 1


def ids(events) -> list[int]:
    return [e.token_id for e in events]


@pytest.mark.parametrize("B", [1, 2, 3, 5, 8])
def test_each_stream_says_what_it_says_alone(B, wrap_dir, hello):
    base = load_engine(str(wrap_dir), device="cpu", delay_ms=480, compile="off", sessions=8)
    engines = {d: base if d == 480 else base.with_delay(d) for d in set(DELAYS[:B])}
    streams = [{"engine": engines[DELAYS[i]], "audio": a, "start": 3 * i} for i, a in enumerate(clips(hello, B))]
    refs = [alone(s["engine"], s["audio"]) for s in streams]
    together(base, streams, stall_every=7)
    for s, ref in zip(streams, refs):
        assert ids(s["events"]) == ids(ref)
        assert [e.text for e in s["events"]] == [e.text for e in ref]
        assert [e.audio_start_s for e in s["events"]] == [e.audio_start_s for e in ref]
    batches = [e.batch for s in streams for e in s["events"] if e.batch]
    assert max(batches) == B  # they did step together
    assert base.static.free_rows() == 8  # every row given back
    assert base.static.buckets() == [1, 2, 4, 8]


def test_the_logits_of_a_row_in_a_batch_match_the_row_alone(wrap_dir, hello):
    base = load_engine(str(wrap_dir), device="cpu", delay_ms=480, compile="off", sessions=4)
    audio = clips(hello, 3)
    ref = base.session(keep_logits=True)
    others = [base.session() for _ in range(2)]
    mine = base.session(keep_logits=True)
    for i in range(0, len(audio[2]), HOP):
        ref.push(audio[2][i:i + HOP])
        list(ref.steps())
    for i in range(0, len(audio[2]), HOP):
        for s, a in zip([*others, mine], audio):
            s.push(a[i:i + HOP])
        list(base.steps_together([*others, mine]))
    assert len(mine.logits) == len(ref.logits) > 40
    worst = max(float((x - y).abs().max()) for x, y in zip(mine.logits, ref.logits))
    scale = max(float(x.abs().max()) for x in ref.logits)
    assert worst <= 1e-4 * scale


def test_a_stream_restarts_at_its_end_of_sequence_while_the_others_go_on(eos_dir):
    long_audio = load_audio(LONG)
    base = load_engine(str(eos_dir), device="cpu", compile="off", sessions=4)
    streams = [{"engine": base, "audio": a, "start": 2 * i} for i, a in enumerate(clips(long_audio, 3))]
    refs = [alone(base, s["audio"]) for s in streams]
    restarts = [sum(e.restart_at_s is not None for e in ref) for ref in refs]
    assert restarts[0] >= 3, "the EOS model should restart several times in this clip"
    together(base, streams)
    for s, ref in zip(streams, refs):
        assert [(e.token_id, e.restart_at_s) for e in s["events"]] == [(e.token_id, e.restart_at_s) for e in ref]


def test_sessions_in_threads_of_their_own_are_batched_and_say_what_they_say_alone(wrap_dir, hello):
    base = load_engine(str(wrap_dir), device="cpu", delay_ms=480, compile="off", sessions=4)
    audio = clips(hello, 4)
    refs = [alone(base, a) for a in audio]
    got: list = [None] * 4
    barrier = threading.Barrier(4)

    def run(i: int) -> None:
        barrier.wait()
        got[i] = alone(base, audio[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [ids(g) for g in got] == [ids(r) for r in refs]
    assert max(b for b, _, _ in base.static.step_log) > 1  # the stepper put them in one forward


@pytest.mark.compile
def test_compiled_steps_give_the_eager_ids_alone_and_together_and_never_recompile_per_step(wrap_dir, hello):
    """One compiled model (its graphs made once, at warm-up), three delays over it: each stream
    alone gives the eager step's ids and logits, a second session compiles nothing, and two streams
    at two delays stepping together (staggered, one stalling: bucket 2 with a row out) give the
    eager ids too, and so do sessions with keyterms, whose change recompiles nothing. (Was two
    tests, one in test_static.py; one compile serves them all.)"""
    import torch._dynamo.utils
    from test_static import assert_same, run_session
    from test_static import ids as session_ids

    counters = torch._dynamo.utils.counters
    eager = load_engine(str(wrap_dir), device="cpu", delay_ms=480, compile="off", sessions=2)
    compiled = load_engine(str(wrap_dir), device="cpu", delay_ms=480, compile="on", sessions=2)
    assert compiled.step_name == "static compiled" and compiled.info.compile_s > 0
    pairs = {480: (eager, compiled)}
    for delay in (160, 2400):
        pairs[delay] = (eager.with_delay(delay), compiled.with_delay(delay))
    made = dict(counters["stats"])
    for delay, (slow, fast) in pairs.items():
        reference, once = run_session(slow, hello), run_session(fast, hello)
        assert_same(reference, once)
        assert session_ids(run_session(fast, hello)) == session_ids(once), delay
    runs = []
    for base, other in ((eager, pairs[160][0]), (compiled, pairs[160][1])):
        streams = [{"engine": e, "audio": a, "start": 2 * i} for i, (e, a) in enumerate(zip((base, other), clips(hello, 2)))]
        together(base, streams, stall_every=5)
        runs.append([ids(s["events"]) for s in streams])
    assert runs[0] == runs[1]
    # Keyterms are a buffer the graph reads: sessions with other phrases and biases give the eager
    # ids, and nothing compiles for them.
    from voxcli.engine.keyterms import Keyterms

    for kt in (Keyterms.of(["two", "class"], 3.0), Keyterms.of(["class"], 1.0)):
        assert ids(alone(compiled, hello, keyterms=kt)) == ids(alone(eager, hello, keyterms=kt))
    assert ids(alone(eager, hello, keyterms=Keyterms.of(["two", "class"], 3.0))) != ids(alone(eager, hello))
    assert dict(counters["stats"]).get("unique_graphs") == made.get("unique_graphs")  # nothing compiled in a session

def _voxcli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "voxcli", *map(str, args)], env={**os.environ, "NO_COLOR": "1"},
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_bench_concurrency_on_a_local_model_steps_the_sessions_together(realtime_dir, tmp_path):
    from voxcli.events import STEP_BUDGET_MS, summarize

    out = tmp_path / "load.json"
    run = _voxcli("bench", "--model", realtime_dir, "--concurrency", 3, "--paced", "--json", out,
                  ROOT / "examples" / "short.wav")
    assert run.returncode == 0, run.stderr
    assert "3 streams per forward" in run.stderr  # the load line: the rows, what one costs, how many fit
    load = json.loads(out.read_text())["load"]
    sessions = load["sessions"]
    assert len(sessions) == 3 and all(s["error"] is None and s["n_deltas"] > 0 for s in sessions)
    agg = load["aggregate"]
    after = [x for s in sessions for x in s["emitted_after_ready_ms"]]
    assert after and agg["emitted_after_ready_ms"] == summarize(after)
    steps = load["batched_steps"]
    by = {int(b): v for b, v in steps["by_batch"].items()}
    assert max(by) > 1 and set(by) <= {1, 2, 3}  # started together: they shared forwards
    fits = [b for b, v in by.items() if v["p99"] < STEP_BUDGET_MS]
    assert steps["largest_within_budget"] == (max(fits) if fits else None)
    assert "the batched step" in run.stdout and "largest batch with step p99 under" in run.stdout


def test_bench_concurrency_on_a_local_offline_model_is_one_line(offline_dir):
    run = _voxcli("bench", "--model", offline_dir, "--concurrency", 2, ROOT / "examples" / "short.wav")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("voxcli: error:")]
    assert len(errors) == 1 and "needs a Realtime model" in errors[0], run.stderr


def test_a_row_given_back_is_taken_again_while_the_others_go_on(wrap_dir, hello):
    base = load_engine(str(wrap_dir), device="cpu", delay_ms=480, compile="off", sessions=4)
    audio = clips(hello, 3)
    first = audio[0][: len(audio[0]) // 3]  # ends early: its row comes free mid-run
    streams = [{"engine": base, "audio": first, "start": 0}, {"engine": base, "audio": audio[1], "start": 1},
               {"engine": base, "audio": audio[2], "start": 30}]
    refs = [alone(base, s["audio"]) for s in streams]
    together(base, streams, stall_every=4)
    assert streams[0]["session"]._state.row == streams[2]["session"]._state.row == 0  # the same row, reused
    for s, ref in zip(streams, refs):
        assert ids(s["events"]) == ids(ref)


@pytest.mark.gpu
def test_on_a_gpu_in_bf16_compiled_each_stream_says_what_it_says_alone(wrap_dir, hello):
    """CUDA graphs, bfloat16: three streams at two delays, staggered and stalling, against each
    alone. cuBLAS may pick another kernel (another order of summation) for another batch shape,
    and in bf16 that can turn a near tie: the logits are compared within bf16's measured noise
    (tests/bf16.py), with the ids' agreement rate, not the ids."""
    from bf16 import assert_bf16_close

    base = load_engine(str(wrap_dir), device="cuda", dtype="bfloat16", delay_ms=480, compile="on", sessions=4)
    other = base.with_delay(160)
    streams = [{"engine": e, "audio": a, "start": 2 * i, "kw": {"keep_logits": True}}
               for i, (e, a) in enumerate(zip((base, other, base), clips(hello, 3)))]
    refs = []
    for s in streams:
        session = s["engine"].session(keep_logits=True)
        events = []
        for i in range(0, len(s["audio"]), HOP):
            session.push(s["audio"][i:i + HOP])
            events += session.steps()
        events += session.finish()
        refs.append((ids(events), session.logits))
    together(base, streams, stall_every=5)
    for s, (ref_ids, ref_logits) in zip(streams, refs):
        assert_bf16_close(ids(s["events"]), s["session"].logits, ref_ids, ref_logits)

def test_sessions_stepped_together_get_their_features_in_one_call_each_row_its_own(wrap_dir, hello):
    """steps_together computes every session's next log-mel in one call (a row per session), not
    one call per session; each row is what the session computes alone, to float32 rounding (the
    filter bank is one matrix product for all rows)."""
    base = load_engine(str(wrap_dir), device="cpu", delay_ms=480, compile="off", sessions=6)
    audio = clips(hello, 5)
    batch = np.stack([a[:8000] for a in audio])
    together = base.log_mel(batch, center=False)
    alone = torch.cat([base.log_mel(a[:8000], center=False) for a in audio])
    assert together.shape == alone.shape and float((together - alone).abs().max()) <= 1e-6
    sessions = [base.session() for _ in audio]
    calls = []
    log_mel = base.log_mel
    base.log_mel = lambda x, **kw: calls.append(np.shape(x)) or log_mel(x, **kw)
    for s, a in zip(sessions, audio):
        s.push(a[:base.first_chunk_samples + len(base.left_pad)])
    list(base.steps_together(sessions))  # the prefills: features of their own
    calls.clear()
    for k in range(3):
        for s, a in zip(sessions, audio):
            s.push(a[base.first_chunk_samples + k * HOP:base.first_chunk_samples + (k + 1) * HOP])
        assert len(list(base.steps_together(sessions))) == len(sessions)
    assert calls and all(shape[0] == len(sessions) for shape in calls)  # (5, width): every session in one call
    for s in sessions:
        s.close()
