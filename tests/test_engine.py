"""The engine on tiny random checkpoints: the real loading, streaming and timing code.

Random weights make meaningless text, so these tests assert structure, order, timing
invariants, flushing and equality with transformers' own reference path, never wording.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from speech import make_speech

from voxcli.audio.decode import load_audio
from voxcli.engine.local import RealtimeEngine, load_engine, resolve_device, resolve_dtype
from voxcli.errors import ModelError

SR = 16000


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    path = make_speech(tmp_path_factory.mktemp("speech") / "s.wav",
                       "hello world, this is a test of streaming transcription")
    return load_audio(path)


def _ids(events):
    # token_id -1 is no model token: the text tail the detokenizer releases at the end (a
    # multi-byte character left incomplete by the last token).
    return [e.token_id for e in events if e.token_id >= 0]


# ------------------------------------------------------------------------------------ realtime


def test_realtime_stream_equals_transformers_offline_generate(realtime_engine, speech):
    """Our chunked streaming path must produce exactly what transformers computes from the
    whole clip at once: proves the chunk windows, caches and prompt are right."""
    import torch

    engine = realtime_engine
    ours = _ids(engine.transcribe(speech))
    inputs = engine.processor(speech, return_tensors="pt")
    with torch.inference_mode():
        ref = engine.model.generate(**inputs, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    assert len(ref) > 20
    assert ours == ref


def test_block_size_does_not_change_tokens(realtime_engine, speech):
    whole = _ids(realtime_engine.transcribe(speech))
    for size in (333, 1280, 4000):
        blocks = [speech[i:i + size] for i in range(0, len(speech), size)]
        assert _ids(realtime_engine.stream(blocks)) == whole


def test_realtime_events_structure(realtime_engine, speech):
    events = list(realtime_engine.transcribe(speech))
    duration = len(speech) / SR
    assert [e.index for e in events] == list(range(len(events)))
    times = [e.t_emitted for e in events]
    assert times == sorted(times)
    for e in events:
        assert 0.0 <= e.audio_start_s <= e.audio_end_s <= duration + 1e-9
    # The 80 ms token grid, contiguous from 0 until clamped at the end of the audio.
    starts = [e.audio_start_s for e in events if e.audio_end_s < duration]
    assert starts == pytest.approx([0.08 * k for k in range(len(starts))])
    text = "".join(e.text for e in events)
    assert text == realtime_engine.processor.tokenizer.decode(_ids(events), skip_special_tokens=True)


def test_flush_transcribes_the_last_chunk(realtime_engine, speech):
    """Without the right padding, the last delay's worth of speech is never transcribed."""
    engine = realtime_engine
    session = engine.session()
    session.push(speech)
    before = list(session.steps())
    after = list(session.finish())
    assert len(after) >= engine.num_right_pad_tokens
    events = before + after
    # Every 80 ms of real audio has its token: the last one ends at or after the audio's end.
    assert events[-1].audio_end_s >= len(speech) / SR
    assert len([e for e in events if e.audio_start_s < len(speech) / SR]) == int(np.ceil(len(speech) / 1280))


def test_token_is_ready_before_the_next_chunk_exists(realtime_engine, speech):
    """The 80 ms trap: a token must come out as soon as its own chunk is in, not after the next."""
    engine = realtime_engine
    session = engine.session()
    first = engine.first_chunk_samples
    session.push(speech[:first - 1])
    assert list(session.steps()) == []
    session.push(speech[first - 1:first])
    assert len(list(session.steps())) == 1  # the prefill's token, with no further audio
    pos = first
    for _ in range(5):
        session.push(speech[pos:pos + 1279])
        assert list(session.steps()) == []
        session.push(speech[pos + 1279:pos + 1280])
        assert len(list(session.steps())) == 1
        pos += 1280


def test_short_clip_and_silence(realtime_engine):
    clip = np.random.default_rng(0).normal(0, 0.1, SR // 10).astype(np.float32)  # 0.1 s
    events = list(realtime_engine.transcribe(clip))
    assert events and all(e.audio_end_s <= 0.1 + 1e-9 for e in events)
    assert list(realtime_engine.transcribe(np.zeros(0, np.float32)))  # empty audio still flushes cleanly


def test_other_delay_changes_prompt_and_still_streams(realtime_dir, speech):
    engine = load_engine(str(realtime_dir), device="cpu", delay_ms=160, warmup=False)
    assert engine.num_delay_tokens == 2
    assert len(engine.prompt_ids) == 1 + 32 + 2
    events = list(engine.transcribe(speech[: SR * 2]))
    assert len(events) >= 2 * SR // 1280


@pytest.mark.parametrize("bad", [0, 100, 1280, 1600, 2320, 2480, -80])
def test_bad_delay_is_rejected(realtime_dir, bad):
    with pytest.raises(ValueError, match="multiple of 80 from 80 to 1200, or 2400"):
        load_engine(str(realtime_dir), device="cpu", delay_ms=bad, warmup=False)


@pytest.mark.parametrize("delay_ms", [80, 1200, 2400])
def test_model_card_delays_run(realtime_dir, speech, delay_ms):
    engine = load_engine(str(realtime_dir), device="cpu", delay_ms=delay_ms, warmup=False)
    assert engine.num_delay_tokens == delay_ms // 80
    assert len(engine.prompt_ids) == 1 + 32 + delay_ms // 80
    events = list(engine.transcribe(speech[: SR]))
    # One token per 80 ms of audio, plus what the right padding flushes.
    assert len(events) >= SR // 1280 + 1


def test_detokenizer_handles_split_multibyte_characters(realtime_engine):
    tok = realtime_engine.processor.tokenizer
    text = "héllo wörld — 東京 ok"
    ids = tok.encode(text, add_special_tokens=False)
    detok = realtime_engine.detokenizer()
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)  # a half character is held back, never mangled


# ------------------------------------------------------------------------------------- offline


def test_offline_equals_generate_for_one_segment(offline_engine, speech):
    import torch

    engine = offline_engine
    n = len(speech)
    ours = list(engine.transcribe(speech, language="en", segments=[(0, n)]))
    inputs = engine.processor.apply_transcription_request(
        audio=speech, language="en", model_id=engine.info.model, sampling_rate=SR, format="wav",
        return_tensors="pt")
    with torch.inference_mode():
        ref = engine.model.generate(**inputs, do_sample=False, max_new_tokens=engine.max_new_tokens)
    ref = ref[0, inputs["input_ids"].shape[1]:].tolist()
    ref = ref[: ref.index(engine.eos_id)] if engine.eos_id in ref else ref
    assert _ids(ours) == ref
    assert all(e.audio_start_s == 0.0 and e.audio_end_s == pytest.approx(n / SR) for e in ours)


def test_offline_splits_long_audio_at_silences(offline_engine, speech):
    gap = np.zeros(SR, np.float32)
    audio = np.concatenate([speech, gap, speech, gap, speech])
    engine = offline_engine
    old = engine.MAX_SEGMENT_S
    engine.MAX_SEGMENT_S = len(speech) / SR + 0.6  # forces one utterance per segment
    try:
        events = list(engine.transcribe(audio))
    finally:
        engine.MAX_SEGMENT_S = old
    segments = sorted({e.segment for e in events})
    assert segments == [0, 1, 2]
    spans = [(e.audio_start_s, e.audio_end_s) for e in events]
    for seg in segments:
        seg_spans = {s for e, s in zip(events, spans) if e.segment == seg}
        assert len(seg_spans) == 1  # one span per segment
        (start, end), = seg_spans
        assert end - start <= len(speech) / SR + 0.6  # the limit in force while it ran
    assert [e.index for e in events] == list(range(len(events)))


def test_offline_silence_gives_nothing(offline_engine):
    assert list(offline_engine.transcribe(np.zeros(SR * 3, np.float32))) == []


# ------------------------------------------------------------------------------------- loading


def test_device_and_dtype_resolution(monkeypatch):
    import torch

    has_cuda = torch.cuda.is_available()
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    assert resolve_device("auto") == ("cuda" if has_cuda else "mps" if has_mps else "cpu")
    assert resolve_device("cpu") == "cpu"
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16 and resolve_dtype("auto", "mps") == torch.bfloat16
    # A GPU without bfloat16 (V100, T4): float16, not an emulated or refused bfloat16.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_dtype("auto", "cuda") == torch.float16 and resolve_dtype("auto", "cuda:1") == torch.float16
    assert resolve_dtype("bfloat16", "cuda") == torch.bfloat16  # asked for: given
    monkeypatch.undo()
    with pytest.raises(ValueError, match="auto, cuda, mps, cpu"):
        resolve_device("tpu")
    if has_cuda:
        assert resolve_device("cuda:0") == "cuda:0"
    else:
        with pytest.raises(ModelError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.gpu
def test_engine_on_cuda_matches_the_cpu_tokens(realtime_dir, speech):
    """Features, ids and caches follow the model's device: the same greedy tokens on a GPU
    (float32 on both, so the arithmetic is close enough for argmax to agree on a tiny model)."""
    cpu = _ids(load_engine(str(realtime_dir), device="cpu", warmup=False).transcribe(speech))
    gpu_engine = load_engine(str(realtime_dir), device="cuda", dtype="float32")
    assert gpu_engine.model.device.type == "cuda"
    assert _ids(gpu_engine.transcribe(speech)) == cpu


def test_engine_info(realtime_engine, offline_engine):
    """What info says is what was loaded: counted from the model itself, not assumed."""
    assert isinstance(realtime_engine, RealtimeEngine)
    for engine in (realtime_engine, offline_engine):
        info, model = engine.info, engine.model
        assert info.kind == engine.kind and info.n_params == sum(p.numel() for p in model.parameters())
        assert info.device == str(model.device) and info.dtype == str(model.dtype).removeprefix("torch.")
    checkpoint_delay = int(realtime_engine.proc.audio_config.transcription_delay_ms)
    assert realtime_engine.info.delay_ms == realtime_engine.delay_ms == checkpoint_delay
    assert offline_engine.info.delay_ms is None


def test_unreachable_hub_id_gives_one_actionable_line():
    with pytest.raises(ModelError) as err:
        load_engine("mistralai/no-such-model-voxcli-test", device="cpu", warmup=False)
    message = str(err.value)
    assert "model.name=PATH" in message and "\n" not in message
    assert "--" not in message  # the engine names settings; only the CLI words them as flags


def test_directory_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="no checkpoint in this directory"):
        load_engine(str(tmp_path), device="cpu", warmup=False)


def test_non_voxtral_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="not a Voxtral model"):
        load_engine(str(tmp_path), device="cpu", warmup=False)


def test_mistral_format_directory_points_to_vllm(tmp_path):
    for name in ("params.json", "consolidated.safetensors", "tekken.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(ModelError, match="Mistral's own format.*model.server=URL"):
        load_engine(str(tmp_path), device="cpu", warmup=False)


def test_a_model_too_big_for_free_memory_is_refused_before_its_weights_are_read(realtime_dir, monkeypatch):
    from transformers import VoxtralRealtimeForConditionalGeneration

    import voxcli.engine.memory

    def never(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr(voxcli.engine.memory, "available_bytes", lambda device: (1000, "of system memory available"))
    monkeypatch.setattr(VoxtralRealtimeForConditionalGeneration, "from_pretrained", never)
    with pytest.raises(ModelError) as err:
        load_engine(str(realtime_dir), device="cpu", warmup=False)
    line = str(err.value)
    assert "\n" not in line and "GiB" in line and "0.0 GiB is of system memory available" in line
    assert "model.dtype=bfloat16" in line and "model.device=cuda" in line and "--" not in line
    assert err.value.data["needed_bytes"] > err.value.data["free_bytes"] == 1000
    monkeypatch.setenv("VOXCLI_SKIP_MEMORY_CHECK", "1")
    with pytest.raises(AssertionError, match="weights were read"):  # the check is skipped
        load_engine(str(realtime_dir), device="cpu", warmup=False)


@pytest.mark.parametrize("kind", ["realtime", "offline"])
def test_json_metrics_carry_step_times_and_no_empty_figure(realtime_engine, offline_engine, speech, kind):
    from voxcli.live.runner import transcribe_audio

    engine = realtime_engine if kind == "realtime" else offline_engine
    transcript = transcribe_audio(engine, speech, source="s.wav", on_event=lambda e: None)
    tokens = [e for e in transcript.events if e.token_id >= 0]
    # Every decode step is timed; the first token of each stream or segment comes from the prefill.
    firsts = len({e.segment for e in tokens})
    assert sum(e.step_ms is not None for e in tokens) == len(tokens) - firsts
    assert all(e.step_ms > 0 for e in tokens if e.step_ms is not None)
    metrics = transcript.metrics.to_dict()
    assert metrics["step_ms"]["n"] == len(tokens) - firsts
    assert all(v is not None and v != {"n": 0} for v in metrics.values())
    silent = transcribe_audio(engine, np.zeros(SR, np.float32), source="q.wav", on_event=lambda e: None)
    assert all(v is not None and v != {"n": 0} for v in silent.metrics.to_dict().values())


def test_the_memory_check_counts_two_pass_states_graphs_and_host_ram(monkeypatch):
    """Full size, bf16, on the meta device: the items ``--debug`` prints, and the one line when
    the weights would not pass through system memory on their way to the GPU."""
    from voxcli.engine import memory
    from voxcli.errors import ModelError
    from voxcli.testing.tiny import realtime_config

    config = realtime_config()
    one = memory.estimate(config, "realtime", 2)
    two = memory.estimate(config, "realtime", 2, sessions=2, graphs=True)
    assert two.cache_bytes == 2 * one.cache_bytes and two.graph_bytes > 0 == one.graph_bytes
    # decoder ring 8192 slots (~0.81 GiB) + encoder ring 753 slots (~0.18 GiB) per session
    assert one.cache_bytes / memory.GIB == pytest.approx(0.81 + 0.18, abs=0.02)
    # One more stream is one more row of both rings (1.0 GiB): beside the weights in 139 GiB, 131 of them.
    many = memory.estimate(config, "realtime", 2, sessions=64)
    assert many.row_bytes == one.row_bytes == one.cache_bytes
    assert many.streams_fit(139 * memory.GIB) == int((139 * memory.GIB - one.weights_bytes) // one.row_bytes) == 131
    names = [name for name, _, _ in two.items("cuda")]
    assert names == ["weights", "session states", "graph pool", "CUDA context", "host RAM while loading"]
    monkeypatch.setattr(memory, "available_bytes",
                        lambda device: (64 * memory.GIB, "free on a GPU") if device.startswith("cuda")
                        else (4 * memory.GIB, "of system memory available"))
    import torch

    with pytest.raises(ModelError, match="passes its 8.3 GiB of weights through system memory while loading, "
                                         "but only 4.0 GiB of system memory available"):
        memory.check_fits(config, "realtime", torch.bfloat16, "cuda", "full")


@pytest.mark.parametrize("step", ["static", "hf"])
def test_a_long_session_holds_a_bounded_window_of_audio(realtime_dir, step):
    """A session keeps only the audio a restart may replay (its first chunk and a token behind
    what the model has taken) and what the model has not taken yet: over 24 s pushed 80 ms at a
    time (a leak would hold all of it: 384,000 samples), that stays under a second."""
    engine = load_engine(str(realtime_dir), device="cpu", step=step, compile="off", warmup=False)
    session = engine.session()
    block = np.zeros(1280, np.float32)
    held = []
    for _ in range(300):  # 24 s
        session.push(block)
        list(session.steps())
        held.append(session.window.held)
    bound = engine.first_chunk_samples + engine.hop_samples + engine.window_samples + 2 * 1280
    assert max(held[-100:]) <= bound < 16000
    assert session.pushed_samples == 300 * 1280
