"""The static Realtime step (voxcli/static.py) against transformers' eager forward, the reference.

Token ids must be identical and logits close: on the tiny model, on a mid-size one, and on a
held-out model whose sliding windows (decoder 24 tokens, encoder 40 positions) wrap and re-anchor
many times inside the clip, so a ring-buffer bug that shows only on wrapping is caught. Through
the engine, through ``transcribe file`` and ``listen --input``, compiled and not.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from voxcli.audio.decode import load_audio
from voxcli.cli.app import app
from voxcli.engine.local import load_engine, wants_compile

HELLO = "examples/hello.wav"
HOURS_8 = 8 * 3600 * 1000 // 80  # tokens in 8 hours of audio


@pytest.fixture(scope="session")
def mid_dir(tmp_path_factory):
    from voxcli.testing.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("mid-realtime"), "realtime", hidden_size=256, num_layers=4, seed=3)


@pytest.fixture(scope="session")
def hello():
    return load_audio(HELLO)


def run_session(engine, audio, **session_kwargs):
    session = engine.session(keep_logits=True, **session_kwargs)
    events = []
    for i in range(0, len(audio), 1280):  # as live audio arrives: 80 ms at a time
        session.push(audio[i:i + 1280])
        events += session.steps()
    events += session.finish()
    session.events = events
    return session


def ids(session) -> list[int]:
    return [e.token_id for e in session.events if e.token_id >= 0]


def assert_same(a, b, *, rtol: float = 1e-4):
    assert ids(a) == ids(b)
    assert len(a.logits) == len(b.logits) > 0
    scale = max(float(x.abs().max()) for x in a.logits)
    worst = max(float((x - y).abs().max()) for x, y in zip(a.logits, b.logits))
    assert worst <= rtol * scale, f"logits differ by {worst:.3g} (largest logit {scale:.3g})"


@pytest.mark.parametrize("model, delays", [
    ("tiny", (80, 480, 2400)), ("mid", (80, 480, 2400)), ("wrap", (160, 480, 2400))])
@pytest.mark.slow
def test_static_step_gives_the_reference_token_ids(model, delays, realtime_dir, mid_dir, wrap_dir, hello):
    path = {"tiny": realtime_dir, "mid": mid_dir, "wrap": wrap_dir}[model]
    for delay in delays:
        ref = run_session(load_engine(str(path), device="cpu", delay_ms=delay, step="hf"), hello)
        fast_engine = load_engine(str(path), device="cpu", delay_ms=delay, step="static", compile="off")
        assert fast_engine.step_name == "static eager" and fast_engine.info.step == "static eager"
        fast = run_session(fast_engine, hello)
        assert_same(ref, fast)


def test_the_held_out_windows_wrap_and_re_anchor_inside_the_clip(wrap_dir, hello):
    engine = load_engine(str(wrap_dir), device="cpu", delay_ms=480, compile="off")
    session = run_session(engine, hello)
    state = session._state
    assert state.dec.host_written > 2 * state.dec.size and state.enc.host_written > 2 * state.enc.size
    assert state.dec.shifted > 0 and state.enc.shifted > 0
    # Bounded: positions stay below twice the window however long the session runs.
    assert state.dec.host_pos < 2 * state.dec.window and state.enc.host_pos < 2 * state.enc.window + 4


def _addresses(static) -> list[int]:
    b = static.batch
    tensors = [*b.enc.tensors(), *b.dec.tensors(), b.conv1_pad, b.conv2_pad, b.conv1_in, b.conv2_in, b.ada, b.token,
               b.bias, b.mel, b.active, b.prefill_rows]
    return [t.data_ptr() for t in tensors]


def test_rows_never_move_across_sessions_restarts_and_frees(eos_dir, hello):
    """Every row is allocated at load (two here) and keeps its addresses (a CUDA graph reads them
    in place) through sessions, end-of-sequence restarts inside them, sessions dropped unfinished,
    and a session refused because every row is taken."""
    from voxcli.errors import EngineFull

    engine = load_engine(str(eos_dir), device="cpu", compile="off", sessions=2)
    static = engine.static
    batch, before = static.batch, _addresses(static)
    assert static.free_rows() == 2
    restarted = run_session(engine, hello)
    assert any(e.restart_at_s is not None for e in restarted.events)  # restarts happened inside it
    first, second = engine.session(), engine.session()  # both rows taken
    assert {first._state.row, second._state.row} == {0, 1}
    with pytest.raises(EngineFull, match="all 2 streams of the loaded model are in use.*model.max_streams"):
        engine.session()
    first.push(hello[:16000])
    list(first.steps())
    del first, second
    gc.collect()  # dropped unfinished: both rows go back
    assert static.free_rows() == 2
    third = engine.session()
    assert int(third._state.dec.pos.item()) == 0 and int((third._state.dec.slot_pos > -(1 << 39)).sum()) == 0  # reset
    assert static.batch is batch and _addresses(static) == before


def test_hour_8_computes_like_minute_0(wrap_dir, realtime_dir, hello):
    for path in (realtime_dir, wrap_dir):
        engine = load_engine(str(path), device="cpu", delay_ms=480, compile="off")
        fresh = run_session(engine, hello)
        tokens_seen = fresh._state.dec.host_written  # (the next session reuses this state)
        late = run_session(engine, hello, position_offset=HOURS_8)
        assert late._state.dec.shifted + late._state.dec.host_pos == HOURS_8 + tokens_seen
        assert late._state.dec.host_pos < 2 * late._state.dec.window
        assert_same(fresh, late, rtol=1e-3)


def test_position_offset_needs_the_static_step(realtime_dir):
    engine = load_engine(str(realtime_dir), device="cpu", step="hf")
    with pytest.raises(ValueError, match="static"):
        engine.session(position_offset=10)


def test_compile_modes():
    assert wants_compile("auto", "cuda") and wants_compile("auto", "cuda:1")
    assert not wants_compile("auto", "cpu") and wants_compile("on", "cpu") and not wants_compile("off", "cuda")
    with pytest.raises(ValueError, match="auto, on, off"):
        wants_compile("maybe", "cpu")


def invoke(*args, result: dict | None = None) -> str:
    """stdout of a command that must succeed; ``result`` gets its stderr."""
    done = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    if result is not None:
        result["stderr"] = done.stderr
    return done.stdout


def listen_ids(path, *flags, result: dict | None = None) -> list[int]:
    out = invoke("listen", "--input", HELLO, "--speed", "0", "--model", path, "--format", "jsonl",
                 "--flush-after-ms", "0", "--plain", *flags, result=result)
    return [r["token_id"] for r in map(json.loads, out.splitlines()) if r.get("type") == "token"]


def file_ids(path, *flags, result: dict | None = None) -> list[int]:
    doc = json.loads(invoke("transcribe", "file", HELLO, "--model", path, "--format", "json", *flags, result=result))
    return [e["token_id"] for e in doc["events"]]


@pytest.mark.parametrize("delay", ["160", "480", "2400"])
def test_both_commands_give_the_reference_token_ids(delay, wrap_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for ids_of in (file_ids, listen_ids):
        ref = ids_of(wrap_dir, "--step", "hf", "--delay-ms", delay)
        assert len(ref) > 40
        assert ids_of(wrap_dir, "--no-compile", "--delay-ms", delay) == ref


@pytest.mark.parametrize("fails_at_call", [1, 2])  # 1: the compile itself; 2: torch 2.13 records the CUDA graph
def test_a_compile_that_fails_falls_back_to_eager_with_one_line(fails_at_call, realtime_dir, tmp_path, monkeypatch):
    """Triton that cannot lower a kernel, or a graph that cannot be captured: the run goes on
    with the eager static step and the same tokens, and the load line says why, once (--debug:
    with torch's traceback)."""
    import torch

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    eager = {ids_of: ids_of(realtime_dir, "--no-compile") for ids_of in (file_ids, listen_ids)}

    def failing_compile(fn, **kwargs):
        calls = [0]

        def compiled(*args):
            calls[0] += 1
            if calls[0] == fails_at_call:
                raise RuntimeError("simulated: Triton cannot lower this kernel\nsecond line")
            return fn(*args)
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    for ids_of, command in ((file_ids, "transcribe"), (listen_ids, "listen")):
        result = {}
        assert ids_of(realtime_dir, "--compile", result=result) == eager[ids_of]
        said = [line for line in result["stderr"].splitlines() if "compiling failed" in line]
        assert len(said) == 1, result["stderr"]
        assert "static eager step (compiling failed, so it runs eagerly: RuntimeError: simulated: Triton cannot " \
               "lower this kernel)" in said[0]
        assert "Traceback" not in result["stderr"]
    result = {}
    file_ids(realtime_dir, "--compile", "--debug", result=result)
    assert "Traceback" in result["stderr"] and "second line" in result["stderr"]


def test_compiled_counts_are_in_the_load_line_and_bench_json(realtime_dir, tmp_path, monkeypatch):
    """A compiled step (a stand-in for torch.compile that counts a graph per function and shape,
    as dynamo does) shows what warm-up made in the load line and in bench's JSON, and a graph made
    after warm-up is counted there and said once."""
    import torch
    from torch._dynamo.utils import counters

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))

    def counting_compile(fn, **kwargs):
        shapes = set()

        def compiled(*args):
            key = tuple(getattr(a, "shape", a) for a in args[2:])
            if key not in shapes:
                shapes.add(key)
                counters["stats"]["unique_graphs"] += 1
            return fn(*args)
        return compiled

    monkeypatch.setattr(torch, "compile", counting_compile)
    engine = load_engine(str(realtime_dir), device="cpu", compile="on")
    graphs = engine.info.graphs
    assert graphs["compiled"] >= len(engine.static.spans()) + 1 and graphs["recorded"] == 0
    from voxcli.output.tables import step_words

    words = step_words(engine.info.step, engine.info.compile_s, graphs=graphs)
    assert words.startswith("static compiled step (compiled in ") and f": {graphs['compiled']} graphs, 0 CUDA" in words
    env = engine.environment()
    assert env["graphs"] == graphs and env["graphs_after_warmup"] == {"compiled": 0, "recorded": 0, "skipped": 0}
    counters["stats"]["unique_graphs"] += 1  # as if a session had met a shape warm-up did not compile
    counters["inductor"]["cudagraph_skips"] += 1
    said = engine.static.compilation.graphs.check()
    assert said.startswith("after warm-up, the compiled step made more: 1 graphs compiled, 0 CUDA graphs recorded, "
                           "1 skipped")
    assert engine.static.compilation.graphs.check() is None  # said once
    assert engine.environment()["graphs_after_warmup"] == {"compiled": 1, "recorded": 0, "skipped": 1}


def test_bench_names_the_step_that_ran(realtime_dir):
    from voxcli.measure.environment import environment

    assert environment(load_engine(str(realtime_dir), device="cpu", step="hf"))["step"] == "hf eager"
    assert environment(load_engine(str(realtime_dir), device="cpu", compile="off"))["step"] == "static eager"


def test_device_log_mel_is_the_extractors(realtime_engine, hello):
    window = hello[:1520 + 1280 * 5 + 160]
    ref = realtime_engine.proc.log_mel(window, center=False)
    ours = realtime_engine.log_mel(window, center=False)
    assert ours.shape == ref.shape and np.array_equal(ours.cpu().numpy(), ref.numpy())


def _golden_log_mel(samples: np.ndarray, filters: np.ndarray, log_mel_max: float) -> np.ndarray:
    """Whisper's log-mel written out in float64 numpy, centred (reflect padding of n_fft / 2), the
    last frame dropped: (mel bins, frames). Independent of torch and of transformers' code."""
    n_fft, hop = 400, 160
    x = np.pad(samples.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = 1 + (len(x) - n_fft) // hop
    power = np.stack([np.abs(np.fft.rfft(x[i * hop:i * hop + n_fft] * window)) ** 2 for i in range(frames)], 1)
    log_spec = np.log10(np.maximum(filters.T @ power[:, :-1], 1e-10))
    return (np.maximum(log_spec, log_mel_max - 8.0) + 4.0) / 4.0


def test_mel_front_end_matches_a_centred_golden_frame_for_frame(realtime_engine, hello):
    """Every mel frame the model hears, against a centred (``center=True``) computation over the
    whole signal: the prefill's (centred on its window), every step's (windows without centring,
    starting where the session starts them), and the processor's (the hf and offline paths). A
    front end that centred differently would hear the audio shifted by 200 samples."""
    e = realtime_engine
    frontend = e.proc.frontend
    signal = np.concatenate([e.left_pad, hello[:3 * 16000]])  # what a session hands the model, from the left pad
    golden = _golden_log_mel(signal, np.asarray(frontend.mel_filters, np.float64), frontend.global_log_mel_max)
    tol = 2e-4  # float32 against float64, on values of order 1

    whole = e.log_mel(signal, center=True)[0].cpu().numpy()
    assert whole.shape == golden.shape and np.abs(whole - golden).max() < tol
    processor = e.proc.log_mel(signal, center=True)[0].numpy()
    assert processor.shape == golden.shape and np.abs(processor - golden).max() < tol
    prefill = e.log_mel(signal[:len(e.left_pad) + e.first_chunk_samples], center=True)[0].cpu().numpy()
    first = len(e.prompt_ids) * e.frames_per_token  # the prefill's frames, one per 10 ms of prompt
    assert prefill.shape[-1] == first and np.abs(prefill - golden[:, :first]).max() < tol
    steps = (len(signal) - e.next_window_start - e.window_samples) // e.hop_samples
    start = e.next_window_start  # a session's first step window, then one every 80 ms
    uncentred = e.log_mel(signal[start:start + steps * e.hop_samples + e.chunk_samples - e.hop_samples],
                          center=False)[0].cpu().numpy()
    assert uncentred.shape[-1] == steps * e.frames_per_token > 200
    assert np.abs(uncentred - golden[:, first:first + uncentred.shape[-1]]).max() < tol


def script(*args, timeout: float = 300) -> str:
    run = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


@pytest.mark.slow
def test_soak_offset_check_finds_hour_8_like_a_fresh_session(realtime_dir):
    out = script("bench/soak.py", "--model", realtime_dir, "--offset-hours", "8", "--minutes", "0.5")
    check = json.loads(out[: out.rindex("}") + 1])
    assert check["offset_tokens"] == HOURS_8
    assert check["reanchored"]["token_mismatches"] == 0 and check["reanchored"]["tokens"] > 300
    assert check["reanchored"]["positions_at_end"]["text_pos"] < 2 * 8192
    assert check["not_reanchored"]["positions_at_end"]["text_pos"] > 131072  # what re-anchoring avoids
    assert "SAME TOKENS" in out


@pytest.mark.slow
def test_gpu_bench_script_runs_on_a_tiny_model_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.jsonl"
    script("bench/gpu.py", "--tiny", "--device", "cpu", "--paths", "hf,static", "--runs", "1", "--clip-s", "2",
           "--max-sessions", "2", "--budget-s", "60", "--json", out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    phases = [line["phase"] for line in lines]
    assert phases[0] == "environment" and phases[-1] == "summary" and {"hf", "static"} <= set(phases)
    assert set(lines[0]["versions"]) >= {"torch", "transformers", "cuda", "driver"}
    result = lines[-1]
    assert set(result["paths"]) == {"hf", "static"}
    for entry in result["paths"].values():
        assert entry["step_ms"]["p50"] > 0 and entry["ttft_ms"]["p50"] > 0 and entry["critical_path_ms"]["p50"] > 0
    assert result["paths"]["static"]["step"] == "static eager" and result["sessions"]["keep_real_time"] >= 1
    assert result["speedup_vs_hf"]["hf"] == 1.0
    # Many streams, one forward: a phase line per batch size, then the whole phase.
    assert {"batched_setup", "batched_1", "batched_2", "batched"} <= set(phases)
    batched = result["batched"]
    assert batched["path"] == "static" and batched["rows"] == 2 and batched["row_gib"] > 0
    assert set(batched["by_batch"]) == {"1", "2"} and all(v["n"] > 0 for v in batched["by_batch"].values())


def test_gpu_bench_phases_stop_at_the_deadline():
    import importlib.util
    import time as _time

    spec = importlib.util.spec_from_file_location("bench_gpu", "bench/gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    Deadline, deadline_at = gpu.Deadline, gpu.deadline_at

    t0 = _time.perf_counter()
    with pytest.raises(Deadline):
        with deadline_at(_time.perf_counter() + 0.3):
            while True:
                sum(range(1000))
    assert _time.perf_counter() - t0 < 30  # it stopped (generously bounded: a shared machine)
    with pytest.raises(Deadline, match="no time left"):
        with deadline_at(_time.perf_counter() - 1):
            pass


@pytest.mark.compile
def test_both_commands_compiled_give_the_reference_token_ids(realtime_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for ids_of in (file_ids, listen_ids):
        ref = ids_of(realtime_dir, "--step", "hf", "--delay-ms", "240")
        assert len(ref) > 40
        assert ids_of(realtime_dir, "--compile", "--delay-ms", "240") == ref


def test_warm_up_records_every_graph_for_every_bucket_in_the_thread_that_steps(realtime_dir, hello):
    """A recording stand-in for the compiled functions: warm-up must call the prefill and every
    span's step WARM_CALLS times (torch 2.13: warm-up, record, replay) for every batch size a
    forward can run at (two-pass: 1 and 2 rows), all in the one thread where the graphs live;
    sessions, run from other threads, then only replay what warm-up made."""
    import threading
    from collections import Counter

    from voxcli.engine import compiling
    from voxcli.live.runner import transcribe_audio

    engine = load_engine(str(realtime_dir), device="cpu", compile="off", warmup=False)
    model = engine.static
    calls: Counter = Counter()
    threads: set = set()

    def recorder(name, fn):
        def call(m, rows, *args):
            key = (name, tuple(args[0].shape[1:]), args[-1]) if name == "prefill" else (name, *args)
            calls[(id(rows), key)] += 1
            threads.add(threading.current_thread().name)
            return fn(m, rows, *args)
        return call

    from voxcli.engine import batching, forward

    model.compilation.compiled = True
    model._batcher = model.call = batching.Stepper(model._run)
    model.compilation.prefill = recorder("prefill", forward.prefill)
    model.compilation.step = recorder("step", forward.decode_rows)
    final = engine.with_delay(960)  # two-pass: two rows, a second delay's prefill
    assert model.buckets() == [1, 2]
    batches = {rows for rows, _ in calls}
    assert len(batches) == 1 and threads == {"voxcli-stepper"}
    prefills = {k for _, k in calls if k[0] == "prefill"}
    assert prefills == {("prefill", (39,), n) for n in (1, 2)} | {("prefill", (45,), n) for n in (1, 2)}  # 480, 960 ms
    steps = {k for _, k in calls if k[0] == "step"}
    assert steps == {("step", span, n) for span in model.spans() for n in (1, 2)}
    assert all(n >= compiling.WARM_CALLS for n in calls.values())
    warm = dict(calls)
    # Two streams at once, each in an engine thread of its own, as listen and transcribe run them.
    for eng in (engine, final):
        transcribe_audio(eng, hello, source="hello", on_event=lambda e: None)
    a, b = engine.session(), final.session()
    for x in (hello[:32000],):
        a.push(x), b.push(x)
        list(engine.steps_together([a, b]))
    new = {key for key in calls if key not in warm}
    assert not new, f"a session met a graph warm-up had not made: {new}"
    assert threads == {"voxcli-stepper"}


def test_the_compiled_step_marks_state_addresses_without_guards(monkeypatch, realtime_dir):
    import torch

    from voxcli.engine import compiling

    seen = []
    monkeypatch.setattr(torch._dynamo, "mark_static_address", lambda t, guard=True: seen.append(guard))
    engine = load_engine(str(realtime_dir), device="cpu", compile="off", warmup=False)
    engine.session()
    assert seen and not any(seen)  # guard=False, said explicitly: older torch guards by default
    monkeypatch.setattr(torch._dynamo, "mark_static_address", lambda t: None)  # a torch without guard=
    from voxcli.errors import ModelError

    with pytest.raises(ModelError, match="needs torch 2.6 or later"):
        compiling.check_compilable()


def test_two_bf16_kernels_agree_within_the_measured_bound_and_a_real_difference_does_not(wrap_dir, hello):
    """The bound the GPU tests compare bf16 runs with (tests/bf16.py), on the CPU: the static step
    and transformers' forward, both bf16, the same weights (other kernels, another order of
    summation), hold to it over a clip; a run whose logits are off by 25% of the scale at one step
    does not."""
    from bf16 import assert_bf16_close

    runs = {}
    for step in ("static", "hf"):
        session = run_session(load_engine(str(wrap_dir), device="cpu", dtype="bfloat16", step=step, compile="off"),
                              hello)
        runs[step] = (ids(session), [x[0] for x in session.logits])
    figures = assert_bf16_close(*runs["static"], *runs["hf"])
    assert figures["worst"] > 0  # two kernels: not the same numbers, and that is fine
    off = [x.clone() for x in runs["static"][1]]
    off[1] += 0.25 * off[1].abs().max()
    off[1][0] -= 0.25 * off[1].abs().max()  # not a uniform shift: the scores move apart
    with pytest.raises(AssertionError, match="logits differ by"):
        assert_bf16_close(runs["static"][0], off, *runs["hf"])


def _bf16_ulp(x):
    import torch

    exp = torch.floor(torch.log2(x.abs().clamp_min(1e-30)))
    return torch.pow(2.0, exp - 7)  # bfloat16 keeps 8 significant bits


def test_re_anchoring_rotates_bf16_keys_in_float32_and_rounds_once(realtime_dir):
    """Re-anchoring rotates every cached key by the shift's angle. Done in bf16 (cos and sin
    rounded to 8 bits, a bf16 product and sum) a key came out up to a few bf16 steps off the
    exact rotation of what was stored; done in float32 and rounded once, it is within half a step."""
    import torch

    from voxcli.engine.static import Ring

    engine = load_engine(str(realtime_dir), device="cpu", dtype="bfloat16", compile="off", warmup=False)
    model = engine.static
    torch.manual_seed(0)
    ring = Ring.allocate(model.dec_layers, model.dec_kv_heads, model.dec_head_dim, 24, 24, 2, "cpu", torch.bfloat16)
    for k in ring.k:
        k.copy_(torch.randn_like(k, dtype=torch.float32) * 3)
    stored = [k.clone() for k in ring.k]
    shift = 123_456  # hours in: a large angle, reduced mod 2 pi in float64
    model.reanchor_row(ring, 1, False, shift)
    assert all(torch.equal(k[0], before[0]) for k, before in zip(ring.k, stored))  # the other row: untouched
    assert ring.shifted == [0, shift]
    inv_freq = model.lm.rotary_emb.inv_freq.double()
    angle = torch.cat([-shift * inv_freq] * 2)
    for before, after in zip((k[1].double() for k in stored), (k[1] for k in ring.k)):
        half = before.shape[-1] // 2
        exact = before * angle.cos() + torch.cat([-before[..., half:], before[..., :half]], -1) * angle.sin()
        err = (after.double() - exact).abs()
        assert bool((err <= 0.5 * _bf16_ulp(exact) + 1e-12).all()), float((err / _bf16_ulp(exact)).max())


def test_bf16_re_anchoring_costs_no_more_than_1_5x_the_error_of_none(wrap_dir):
    """The held-out model whose windows wrap (decoder 24, encoder 40: a re-anchor every few
    tokens), in bf16, with and without re-anchoring, against a float64 reference: the largest
    logit error while the token ids still agree with the reference stays within 1.5x."""
    import torch

    audio = load_audio("examples/long.wav")

    def logits(engine, **kw):
        session = run_session(engine, audio, **kw)
        return ids(session), torch.stack([x.double()[0] for x in session.logits])

    ref_engine = load_engine(str(wrap_dir), device="cpu", step="hf", compile="off")
    ref_engine.model.double()
    ref_ids, ref = logits(ref_engine)
    engine = load_engine(str(wrap_dir), device="cpu", dtype="bfloat16", compile="off")

    def error(run_ids, run) -> tuple[float, float]:
        assert len(run) == len(ref) > 150  # a re-anchor every 24 decoder tokens: many of them
        per_step = (run - ref).abs().amax(-1)
        return float(per_step.mean()), float(per_step.max())

    on = error(*logits(engine))
    engine.static.reanchor = False
    try:
        off = error(*logits(engine))
    finally:
        engine.static.reanchor = True
    assert on[0] <= 1.5 * off[0] and on[1] <= 1.5 * off[1], (on, off)


@pytest.mark.gpu
def test_no_cuda_graph_is_recorded_or_skipped_after_warm_up(realtime_dir, hello):
    """On a GPU: after warm-up, sessions (in new engine threads, two at once for two-pass)
    record no CUDA graph and skip none."""
    import torch
    from torch._dynamo.utils import counters

    from voxcli.live.runner import transcribe_audio

    engine = load_engine(str(realtime_dir), device="cuda", compile="on", sessions=2)
    final = engine.with_delay(960)
    recorded = []
    original = torch.cuda.CUDAGraph.capture_begin

    def capture_begin(self, *a, **kw):
        recorded.append(1)
        return original(self, *a, **kw)

    skips = counters["inductor"]["cudagraph_skips"]
    torch.cuda.CUDAGraph.capture_begin = capture_begin
    try:
        for eng in (engine, final, engine):
            transcribe_audio(eng, hello, source="hello", on_event=lambda e: None)
        a, b = engine.session(), final.session()
        a.push(hello), b.push(hello)
        list(engine.steps_together([a, b])), list(a.finish()), list(b.finish())  # both buckets: 2 rows, then 1
    finally:
        torch.cuda.CUDAGraph.capture_begin = original
    assert not recorded and counters["inductor"]["cudagraph_skips"] == skips
    # What the load line and bench's JSON say: graphs made at warm-up, none after it.
    assert engine.info.graphs["recorded"] > 0 and engine.info.graphs["skipped"] == 0
    assert not engine.static.compilation.graphs.after_warmup and engine.static.compilation.graphs.check() is None
