#!/usr/bin/env python
"""voxcli's engine against the usual ways of streaming Voxtral: same model, same clips, one run.

Every method gets the same model object (loaded once by ``voxcli.engine.load_engine``; WhisperLiveKit
the same checkpoint in the same dtype, in its own process), the same decoded audio and the same
machine; methods are interleaved run by run (warm-up runs first, never counted). Clocks are ``time.perf_counter()``; on CUDA the device is
synchronized before the start clock and where a token id is timed.

File mode (always): the complete clip is handed over at once.
  voxcli          engine.transcribe(audio); the first event with special == False
  hf-streamer     (a) processor(...) / apply_transcription_request, model.generate(streamer=
                  TextIteratorStreamer) in a thread, the consumer iterating the streamer
  hf-6words       (b) the same run, the consumer holding text until 6 words are complete
  hf-stream-gen   (c) Realtime only: generate(input_ids=prompt, input_features=<generator of
                  chunk features>, num_delay_tokens=...), consumer as in (a)
  wlk, wlk-vac    WhisperLiveKit's Voxtral backend, voice-activity controller off / on (its own
                  venv; bench/wlk_worker.py stays loaded and runs one request at a time), Realtime only

Paced mode (--paced, Realtime only): the clip is replayed at real speed; each token is timed from
the moment the audio its chunk needs was captured ("chunk ready") to the moment its id is on the
host ("token out") and to the moment a consumer could show its text ("shown").

Run ``python bench/compare.py --help``; see bench/README.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 16000
BATCH_WORDS = 6
DEFAULT_BUILD_DIR = Path(tempfile.gettempdir()) / "voxcli-bench-models"
DEFAULT_WLK_PYTHON = Path(tempfile.gettempdir()) / "wlk-venv" / "bin" / "python"
# Random models the script can build offline with voxcli.testing.tiny: name -> (kind, hidden size, layers)
BUILT_MODELS = {
    "tiny-realtime": ("realtime", 64, 2),
    "tiny-offline": ("offline", 64, 2),
    "mid-realtime": ("realtime", 512, 8),
    "mid-offline": ("offline", 512, 8),
}
ALIASES = {"tiny": ["tiny-realtime", "tiny-offline"], "mid": ["mid-realtime", "mid-offline"]}

# What each method's first figures mean; printed under the tables and stored in the JSON.
DEFINITIONS = {
    "ttft_ms": "audio handed over -> first generated non-special token id on the host (voxcli: the "
               "engine's event; hf-*: the streamer's put(); wlk: the put() of its streamer)",
    "first_text_ms": "audio handed over -> first text the consumer sees (voxcli: the same event; "
                     "hf-streamer/hf-stream-gen/wlk: decoded text only, TextIteratorStreamer releases "
                     "it at word boundaries; hf-6words: the first 6-word batch = first_chunk_ms; wlk: "
                     "its results_formatter state)",
    "total_ms": "audio handed over -> the last text the consumer sees",
    "first_chunk_ms": "audio handed over -> first batch of 6 complete words released",
    "ready_to_token_ms": "paced: chunk ready (its last needed sample captured) -> token id on the host",
    "ready_to_shown_ms": "paced: chunk ready -> the token's text available to the consumer",
    "first_text_paced_ms": "paced: stream start -> first text shown",
    "finalize_ms": "paced: end of the audio -> last text shown (right padding flushed)",
}


# ------------------------------------------------------------------------------------ small tools


def now(sync=None) -> float:
    if sync is not None:
        sync()
    return time.perf_counter()


def sleep_until(deadline: float) -> None:
    while (delay := deadline - time.perf_counter()) > 0:
        time.sleep(delay)


def summarize(values: list[float]) -> dict:
    from voxcli.events import summarize as _summarize

    return _summarize([float(v) for v in values if v is not None])


def ms(t: float | None, t0: float) -> float | None:
    return None if t is None else (t - t0) * 1000.0


def prefix_match(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def nonspace(text: str) -> int:
    return sum(1 for c in text if not c.isspace())


class WordBatcher:
    """The old display: text is held until ``size`` words are complete, then released together.

    A word is complete once whitespace follows it; the end of the stream releases the rest.
    """

    def __init__(self, size: int = BATCH_WORDS) -> None:
        self.size = size
        self.pending = ""
        self.released: list[tuple[float, str]] = []

    def feed(self, text: str, t: float) -> None:
        self.pending += text
        while True:
            words = self.pending.split()
            complete = len(words) if self.pending[-1:].isspace() else len(words) - 1
            if complete < self.size:
                return
            # Cut after the size-th word, keeping what follows for the next batch.
            cut, seen, i = 0, 0, 0
            while seen < self.size:
                while self.pending[i].isspace():
                    i += 1
                while i < len(self.pending) and not self.pending[i].isspace():
                    i += 1
                seen += 1
                cut = i
            self.released.append((t, self.pending[:cut]))
            self.pending = self.pending[cut:]

    def end(self, t: float) -> None:
        if self.pending.strip():
            self.released.append((t, self.pending))
        self.pending = ""


def timed_streamer_class():
    """TextIteratorStreamer that also timestamps every put() (token ids, before any decoding)."""
    from transformers import TextIteratorStreamer

    class TimedTextIteratorStreamer(TextIteratorStreamer):
        def __init__(self, *args, sync=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.puts: list[tuple[float, list[int]]] = []  # the first put carries the prompt
            self._sync = sync

        def put(self, value):
            # The ids are already on the host (generate() copied them); the sync only makes sure
            # no queued device work is counted after this moment.
            self.puts.append((now(self._sync), value.reshape(-1).tolist()))
            super().put(value)

    return TimedTextIteratorStreamer


# --------------------------------------------------------------------------------------- models


@dataclass
class ModelSpec:
    label: str
    path: str
    built: str | None = None  # "random, hidden 64, 2 layers" when built here


def resolve_models(entries: list[str], build_dir: Path) -> list[ModelSpec]:
    names: list[str] = []
    for entry in entries:
        for item in entry.split(","):
            item = item.strip()
            if item:
                names.extend(ALIASES.get(item, [item]))
    specs = []
    for name in dict.fromkeys(names):
        if name in BUILT_MODELS:
            kind, hidden, layers = BUILT_MODELS[name]
            path = build_dir / name
            if not (path / "config.json").is_file() or not (path / "tekken.json").is_file():
                from voxcli.testing.tiny import make_tiny_model

                print(f"building {name} (random {kind}, hidden {hidden}, {layers} layers) in {path}",
                      file=sys.stderr)
                make_tiny_model(path, kind, hidden_size=hidden, num_layers=layers)
            specs.append(ModelSpec(name, str(path), f"random weights, hidden {hidden}, {layers} layers"))
        else:
            specs.append(ModelSpec(Path(name).name if Path(name).exists() else name, name))
    return specs


def cuda_sync(engine):
    import torch

    if engine.model.device.type == "cuda":
        return torch.cuda.synchronize
    return None


# ------------------------------------------------------------------------------ file-mode methods


def run_voxcli(engine, audio: np.ndarray, opts) -> dict:
    sync = cuda_sync(engine)
    kwargs = {}
    if engine.kind == "offline":
        # Hand the model exactly what the other methods get: the whole clip, no silence trimming.
        kwargs = {"segments": [(0, len(audio))], "max_new_tokens": opts.max_new_tokens}
    t0 = now(sync)
    events = list(engine.transcribe(audio, **kwargs))
    first = next((e for e in events if not e.special and e.token_id >= 0), None)
    first_text = next((e for e in events if e.text), None)
    ids = [e.token_id for e in events if e.token_id >= 0]
    return {
        "ttft_ms": ms(first.t_emitted if first else None, t0),
        "first_text_ms": ms(first_text.t_emitted if first_text else None, t0),
        "total_ms": ms(events[-1].t_emitted if events else None, t0),
        "n_tokens": len(ids),
        "ids": ids,
        "text": "".join(e.text for e in events),
    }


def _hf_inputs(engine, audio: np.ndarray):
    proc = engine.processor
    if engine.kind == "realtime":
        inputs = proc(audio, return_tensors="pt")  # the documented offline call: whole clip, padded
    else:
        inputs = proc.apply_transcription_request(audio=audio, language=None, model_id=engine.info.model,
                                                  sampling_rate=SAMPLE_RATE, format="wav",
                                                  return_tensors="pt")
    inputs = inputs.to(engine.model.device)
    inputs["input_features"] = inputs["input_features"].to(engine.model.dtype)
    return inputs


def _consume(engine, streamer, generate_kwargs: dict, t0: float) -> dict:
    """generate() in a thread, this thread iterating the streamer (the usual way)."""
    failure: list[BaseException] = []

    def target():
        try:
            engine.model.generate(**generate_kwargs, streamer=streamer)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failure.append(exc)
            streamer.end()

    thread = threading.Thread(target=target, name="bench-generate", daemon=True)
    batcher = WordBatcher()
    texts: list[tuple[float, str]] = []
    thread.start()
    for text in streamer:
        t = time.perf_counter()  # text is host data; a device sync here would wait for the next step
        if text:
            texts.append((t, text))
            batcher.feed(text, t)
    t_end = time.perf_counter()
    batcher.end(texts[-1][0] if texts else t_end)
    thread.join()
    if failure:
        raise failure[0]
    return {"texts": texts, "batches": batcher.released}


def _generated_ids(streamer, engine) -> list[int]:
    ids = [i for _, chunk in streamer.puts[1:] for i in chunk]
    while ids and ids[-1] == engine.eos_id:  # voxcli does not emit the EOS token
        ids.pop()
    return ids


def _first_put(streamer, engine) -> float | None:
    is_special = engine.detokenizer().is_special
    for t, chunk in streamer.puts[1:]:
        if any(not is_special(i) for i in chunk):
            return t
    return None


def run_hf_streamer(engine, audio: np.ndarray, opts) -> tuple[dict, dict]:
    """(a) and (b) from one run: the 6-word batcher runs live in the same consumer loop."""
    sync = cuda_sync(engine)
    streamer_cls = timed_streamer_class()
    t0 = now(sync)
    inputs = _hf_inputs(engine, audio)
    streamer = streamer_cls(engine.processor.tokenizer, skip_prompt=True, skip_special_tokens=True,
                            timeout=600, sync=sync)
    kwargs = dict(inputs, do_sample=False)
    if engine.kind == "offline":
        kwargs["max_new_tokens"] = opts.max_new_tokens
    got = _consume(engine, streamer, kwargs, t0)
    ids = _generated_ids(streamer, engine)
    texts, batches = got["texts"], got["batches"]
    common = {"ttft_ms": ms(_first_put(streamer, engine), t0), "n_tokens": len(ids), "ids": ids}
    a = dict(common, first_text_ms=ms(texts[0][0] if texts else None, t0),
             total_ms=ms(texts[-1][0] if texts else None, t0), text="".join(t for _, t in texts))
    first_chunk = ms(batches[0][0] if batches else None, t0)
    b = dict(common, first_text_ms=first_chunk, first_chunk_ms=first_chunk,
             total_ms=ms(batches[-1][0] if batches else None, t0), text="".join(t for _, t in batches),
             first_batch_words=len(batches[0][1].split()) if batches else 0)
    return a, b


def stock_chunks(engine, audio: np.ndarray):
    """The documented streaming recipe: (first chunk, later chunks, samples each chunk needs).

    The audio is right-padded as mistral-common pads a whole clip (to a whole 80 ms token, then
    num_right_pad_tokens tokens of silence). Each later chunk is num_samples_per_audio_chunk (1680)
    samples advancing 1280; the feature extractor never uses the last hop (160 samples) of a chunk,
    so 160 more zeros let the last token's chunk exist (without them generate() makes one token
    fewer than the offline call and voxcli for the same audio).
    """
    proc = engine.processor
    fe = proc.feature_extractor
    hop = proc.raw_audio_length_per_tok
    n_right = engine.num_right_pad_tokens
    pad = (-len(audio)) % hop + n_right * hop + fe.hop_length
    padded = np.concatenate([audio, np.zeros(pad, dtype=np.float32)])
    first_need = proc.num_samples_first_audio_chunk
    chunk = proc.num_samples_per_audio_chunk
    starts = []
    start = proc.num_mel_frames_first_audio_chunk * fe.hop_length - fe.win_length // 2
    while start + chunk <= len(padded):
        starts.append(start)
        start += hop
    return padded, first_need, chunk, starts


def run_stock_stream(engine, audio: np.ndarray, opts, *, paced: bool = False) -> dict:
    """(c): stock streaming generate() with a generator of chunk features. Paced: the generator
    sleeps until each chunk's audio would have been captured at real speed."""
    sync = cuda_sync(engine)
    proc, model = engine.processor, engine.model
    streamer_cls = timed_streamer_class()
    padded, first_need, chunk, starts = stock_chunks(engine, audio)
    n_audio = len(audio)
    ready: list[float] = []
    flushed: list[bool] = []  # the chunk needs samples past the end of the audio (right padding)

    def feats(x, first):
        out = proc(x, is_streaming=True, is_first_audio_chunk=first, return_tensors="pt")
        return out, out["input_features"].to(model.device, model.dtype)

    t0 = now(sync)
    flushed.append(first_need > n_audio)
    if paced:
        ready.append(t0 + min(first_need, n_audio) / SAMPLE_RATE)
        sleep_until(ready[0])
    else:
        ready.append(t0)
    first_inputs, first_feats = feats(padded[:first_need], True)

    def generator():
        yield first_feats
        for start in starts:
            flushed.append(start + chunk > n_audio)
            if paced:
                t_ready = t0 + min(start + chunk, n_audio) / SAMPLE_RATE
                sleep_until(t_ready)
                ready.append(t_ready)
            else:
                ready.append(t0)
            yield feats(padded[start:start + chunk], False)[1]

    streamer = streamer_cls(proc.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600, sync=sync)
    kwargs = {"input_ids": first_inputs["input_ids"].to(model.device), "input_features": generator(),
              "num_delay_tokens": first_inputs["num_delay_tokens"], "do_sample": False}
    got = _consume(engine, streamer, kwargs, t0)
    ids = _generated_ids(streamer, engine)
    texts = got["texts"]
    result = {
        "ttft_ms": ms(_first_put(streamer, engine), t0),
        "first_text_ms": ms(texts[0][0] if texts else None, t0),
        "total_ms": ms(texts[-1][0] if texts else None, t0),
        "n_tokens": len(ids),
        "ids": ids,
        "text": "".join(t for _, t in texts),
    }
    if paced:
        t_end = t0 + n_audio / SAMPLE_RATE
        put_times = [t for t, _ in streamer.puts[1:]]
        shown = shown_times(engine, ids, texts)
        result.update(paced_figures(engine, ids, put_times, ready[:len(put_times)], shown, flushed, t0, t_end))
    return result


def shown_times(engine, ids: list[int], texts: list[tuple[float, str]]) -> list[float | None]:
    """When each token's text became visible to a consumer that only gets decoded text: the first
    moment the visible text holds as many non-space characters as the decode up to that token."""
    decode = engine.processor.tokenizer.decode
    counts = []
    for k in range(len(ids)):
        counts.append(nonspace(decode(ids[:k + 1], skip_special_tokens=True)))
    seen, cum = [], 0
    for t, text in texts:
        cum += nonspace(text)
        seen.append((t, cum))
    out: list[float | None] = []
    prev = 0
    for c in counts:
        if c <= prev:  # adds no visible text (special token, or a partial character)
            out.append(None)
            continue
        prev = c
        out.append(next((t for t, s in seen if s >= c), None))
    return out


def paced_figures(engine, ids, token_times, ready, shown, flushed, t0, t_end) -> dict:
    """Per-token latency lists and the first/last text figures of one paced run."""
    is_special = engine.detokenizer().is_special
    special = [is_special(i) for i in ids]
    speech = [k for k in range(len(token_times)) if not flushed[k]]
    ready_to_token = [(token_times[k] - ready[k]) * 1000.0 for k in speech]
    ready_to_shown = [(shown[k] - ready[k]) * 1000.0 for k in speech if shown[k] is not None]
    shown_any = [s for s in shown if s is not None]
    first_text = next((token_times[k] for k in range(len(token_times)) if not special[k]), None)
    return {
        "ready_to_token_ms": ready_to_token,
        "ready_to_shown_ms": ready_to_shown,
        "first_text_paced_ms": ms(min(shown_any) if shown_any else first_text, t0),
        "finalize_ms": ms(max(shown_any), t_end) if shown_any else None,
        "n_speech_tokens": len(speech),
        "n_flush_tokens": len(token_times) - len(speech),
    }


def run_voxcli_paced(engine, audio: np.ndarray) -> dict:
    """voxcli's stream driver (the session cycle listen and serve run) fed at real speed: at the
    moment each chunk's last needed sample would have been captured, exactly the audio up to it
    is heard and the driver's streams stepped; the end of the clip flushes them."""
    from voxcli.live.driver import StreamDriver, cycle
    from voxcli.live.items import LiveOptions, LiveToken

    sync = cuda_sync(engine)
    items: list = []
    driver = StreamDriver(engine, items.append, LiveOptions(flush_after_ms=0, blank_run_s=0.0))
    n_audio = len(audio)
    first_need = engine.first_chunk_samples
    proc = engine.processor
    fe = proc.feature_extractor
    # Where the first window after the prefill starts in the audio (the same place the stock
    # recipe's second chunk starts; voxcli's windows need 1520 of its 1680 samples).
    offset = proc.num_mel_frames_first_audio_chunk * fe.hop_length - fe.win_length // 2
    t0 = now(sync)
    pushed = 0
    while True:
        k = driver.n_tokens
        need = first_need if k == 0 else offset + (k - 1) * engine.hop_samples + engine.window_samples
        if need > n_audio:
            break
        t_ready = t0 + need / SAMPLE_RATE
        sleep_until(t_ready)
        driver.hear(audio[pushed:need], t_ready)
        pushed = need
        cycle(engine, [driver])
    paced = len(items)
    t_end = t0 + n_audio / SAMPLE_RATE
    sleep_until(t_end)
    driver.hear(audio[pushed:], t_end)
    cycle(engine, [driver])
    driver.close()
    tokens = [(n >= paced, item) for n, item in enumerate(items)
              if isinstance(item, LiveToken) and item.event.token_id >= 0]
    events = [item.event for _, item in tokens]
    ready = [t_end if after else item.t_ready for after, item in tokens]
    flushed = [after for after, _ in tokens]
    ids = [e.token_id for e in events]
    times = [e.t_emitted for e in events]
    shown = shown_times(engine, ids, [(e.t_emitted, e.text) for e in events if e.text])  # same rule as the others
    result = {"n_tokens": len(ids), "ids": ids, "text": "".join(e.text for e in events)}
    result.update(paced_figures(engine, ids, times, ready, shown, flushed, t0, t_end))
    return result


# ------------------------------------------------------------------------------- WhisperLiveKit


class WLK:
    """Where WhisperLiveKit's venv is, and which of its variants to run (or why none can run)."""

    def __init__(self, python: str | None, vac: str) -> None:
        self.python = python
        # method name -> its voice-activity controller setting
        self.variants = {"off": {"wlk": "off"}, "on": {"wlk-vac": "on"},
                         "both": {"wlk": "off", "wlk-vac": "on"}}[vac]
        self.reason: str | None = None
        if not python or not Path(python).exists():
            self.reason = (f"no WhisperLiveKit venv at {python} (create it with bench/setup_wlk.sh, or "
                           f"pass --wlk-python)")
        else:
            probe = subprocess.run([python, "-c", "import whisperlivekit.voxtral_hf_streaming"],
                                   capture_output=True, text=True, env=_offline_env())
            if probe.returncode != 0:
                tail = (probe.stderr.strip().splitlines() or ["?"])[-1]
                self.reason = f"{python} cannot import whisperlivekit's Voxtral backend: {tail}"

    @property
    def available(self) -> bool:
        return self.reason is None


class WLKWorker:
    """bench/wlk_worker.py in WhisperLiveKit's venv, loaded once, one run per request, so its runs
    interleave with the other methods' (a shared machine's load then hits every method alike)."""

    def __init__(self, wlk: WLK, engine, model_path: str, clips: list, opts, vac: str, tmp: Path) -> None:
        clip_args = []
        for clip in clips:
            path = tmp / f"{clip.name}.npy"
            if not path.exists():
                np.save(path, clip.audio)
            clip_args += ["--clip", f"{clip.name}={path}"]
        self.log = tmp / f"wlk-{vac}.log"
        cmd = [wlk.python, str(Path(__file__).with_name("wlk_worker.py")), "--model", model_path,
               "--dtype", engine.info.dtype, "--threads", str(opts.threads), "--vac", vac,
               "--block-ms", str(opts.block_ms), *clip_args]
        self._stderr = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, env=_offline_env())
        hello = self._read()
        self.notes = hello.get("notes", [])

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            tail = "\n".join(self.log.read_text().strip().splitlines()[-12:])
            raise RuntimeError(f"wlk_worker exited ({self.proc.returncode}):\n{tail}")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"wlk_worker: {msg['error']}")
        return msg

    def run(self, clip_name: str, paced: bool) -> dict:
        self.proc.stdin.write(json.dumps({"clip": clip_name, "paced": paced}) + "\n")
        self.proc.stdin.flush()
        return self._read()["row"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


def _offline_env() -> dict:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


# ---------------------------------------------------------------------------------------- runner


@dataclass
class Clip:
    name: str
    path: str
    audio: np.ndarray
    audio_s: float


@dataclass
class Results:
    file: list[dict] = field(default_factory=list)  # one row per (model, method, clip, run)
    paced: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            print(f"   note: {text}", file=sys.stderr)


def bench_model(spec: ModelSpec, clips: list[Clip], opts, wlk: WLK | None, results: Results) -> dict:
    from voxcli.engine.local import load_engine

    engine = load_engine(spec.path, device=opts.device, dtype=opts.dtype, threads=opts.threads,
                         warmup=True, max_new_tokens=opts.max_new_tokens)
    info = engine.info
    desc = {"label": spec.label, "path": spec.path, "kind": engine.kind, "n_params": info.n_params,
            "device": info.device, "dtype": info.dtype, "built": spec.built,
            "hidden_size": engine.model.config.text_config.hidden_size,
            "layers": engine.model.config.text_config.num_hidden_layers}
    print(f"\n== {spec.label}: {engine.kind}, {info.n_params / 1e6:.2f} M params, {info.device}/{info.dtype}"
          + (f" ({spec.built})" if spec.built else ""), file=sys.stderr)
    # One callable per runner: clip -> {method name: row}. hf-6words rides on the hf-streamer run.
    file_runners = {
        "voxcli": lambda c: {"voxcli": run_voxcli(engine, c.audio, opts)},
        "hf-streamer": lambda c: dict(zip(("hf-streamer", "hf-6words"), run_hf_streamer(engine, c.audio, opts))),
    }
    paced_runners = {}
    if engine.kind == "realtime":
        file_runners["hf-stream-gen"] = lambda c: {"hf-stream-gen": run_stock_stream(engine, c.audio, opts)}
        paced_runners = {"voxcli": lambda c: {"voxcli": run_voxcli_paced(engine, c.audio)},
                         "hf-stream-gen": lambda c: {"hf-stream-gen": run_stock_stream(engine, c.audio, opts,
                                                                                        paced=True)}}
    workers: list[WLKWorker] = []
    with tempfile.TemporaryDirectory(prefix="voxcli-compare-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # generate()'s max_length advice, once per call
        try:
            if wlk is not None and wlk.available and engine.kind == "realtime":
                for method, vac in wlk.variants.items():
                    try:
                        worker = WLKWorker(wlk, engine, spec.path, clips, opts, vac, Path(tmp))
                    except RuntimeError as exc:
                        results.note(f"{spec.label}: {method} could not start: {exc}")
                        continue
                    workers.append(worker)
                    for note in worker.notes:
                        results.note(f"{spec.label}: {method}: {note}")
                    file_runners[method] = lambda c, w=worker, m=method: {m: w.run(c.name, False)}
                    paced_runners[method] = lambda c, w=worker, m=method: {m: w.run(c.name, True)}
            for clip in clips:
                _interleaved(file_runners, clip, opts.warmup, opts.runs, spec, results.file)
                print(f"   file {clip.name}: {opts.runs} runs x {len(file_runners)} methods", file=sys.stderr)
            if opts.paced and paced_runners:
                shortest = min(clips, key=lambda c: len(c.audio))
                _interleaved(paced_runners, shortest, 1, 0, spec, [])  # warm the paced paths, not counted
                for clip in clips:
                    _interleaved(paced_runners, clip, 0, opts.paced_runs, spec, results.paced)
                    print(f"   paced {clip.name}: {opts.paced_runs} runs x {len(paced_runners)} methods",
                          file=sys.stderr)
        finally:
            for worker in workers:
                worker.close()
    return desc  # the engine goes with this frame: one model in memory at a time


def _interleaved(runners: dict, clip: Clip, warmup: int, runs: int, spec: ModelSpec, out: list) -> None:
    """Warm-up rounds, then measured rounds; each round runs every method once, the order
    rotated from round to round so that no method always runs first (or right after another)."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name](clip)
    for run in range(runs):
        k = run % len(names)
        for name in names[k:] + names[:k]:
            for method, row in runners[name](clip).items():
                out.append(dict(row, model=spec.label, method=method, clip=clip.name, run=run))


# --------------------------------------------------------------------------------------- report


def _values(rows, model, method, clip, metric):
    from voxcli.events import pool

    return pool(r.get(metric) for r in rows
                if r["model"] == model and r["method"] == method and (clip is None or r["clip"] == clip))


def token_match(rows: list[dict], model: str, clip: str, method: str) -> dict | None:
    ref = [r["ids"] for r in rows if r["model"] == model and r["clip"] == clip and r["method"] == "voxcli"]
    other = [r["ids"] for r in rows if r["model"] == model and r["clip"] == clip and r["method"] == method]
    if not ref or not other or any(r is None for r in other):
        return None
    base = ref[0]
    runs_identical = all(r == base for r in ref) and all(o == base for o in other)
    worst = min((prefix_match(base, o) for o in other), default=0)
    return {"identical": runs_identical, "n_voxcli": len(base), "n_other": len(other[0]),
            "common_prefix": worst}


def summaries(results: Results, models: list[dict], clips: list[Clip]) -> dict:
    out = {"file": {}, "paced": {}}
    for kind, rows, metrics in (("file", results.file, ("ttft_ms", "first_text_ms", "total_ms", "first_chunk_ms")),
                                ("paced", results.paced, ("ready_to_token_ms", "ready_to_shown_ms",
                                                          "first_text_paced_ms", "finalize_ms"))):
        for m in models:
            label = m["label"]
            methods = list(dict.fromkeys(r["method"] for r in rows if r["model"] == label))
            for method in methods:
                for clip in [c.name for c in clips] + [None]:
                    key = f"{label}|{method}|{clip or 'all'}"
                    entry = {metric: summarize(_values(rows, label, method, clip, metric)) for metric in metrics}
                    if clip is not None and method != "voxcli":
                        entry["token_ids_vs_voxcli"] = token_match(rows, label, clip, method)
                    out[kind][key] = entry
    return out


def ratios(summary: dict) -> dict:
    """baseline p50 / voxcli p50, per model, method and clip."""
    out = {}
    for kind, metrics in (("file", ("ttft_ms", "first_text_ms", "total_ms")),
                          ("paced", ("ready_to_token_ms", "ready_to_shown_ms", "first_text_paced_ms"))):
        for key, entry in summary[kind].items():
            label, method, clip = key.split("|")
            if method == "voxcli":
                continue
            ref = summary[kind].get(f"{label}|voxcli|{clip}")
            if not ref:
                continue
            for metric in metrics:
                a, b = entry.get(metric, {}), ref.get(metric, {})
                if a.get("n") and b.get("n") and b["p50"] > 0:
                    out[f"{kind}|{key}|{metric}"] = a["p50"] / b["p50"]
    return out


def fmt(v, width=8, digits=1) -> str:
    if v is None:
        return "-".rjust(width)
    return f"{v:{width}.{digits}f}"


def print_tables(models: list[dict], clips: list[Clip], summary: dict, ratio: dict, opts) -> None:
    p = print
    for m in models:
        label = m["label"]
        p(f"\n### {label}: Voxtral {'Realtime' if m['kind'] == 'realtime' else 'offline (3B-style)'}, "
          f"{m['n_params'] / 1e6:.2f} M params"
          + (f", {m['built']}" if m["built"] else "") + f", {m['device']} {m['dtype']}, "
          f"torch threads {opts.threads or 'default'}")
        keys = [k for k in summary["file"] if k.startswith(label + "|")]
        if keys:
            p(f"file mode ({opts.runs} runs per clip after {opts.warmup} warm-up; ms; x = p50 / voxcli p50)")
            head = (f"{'method':<14}{'clip':<7}{'n':>4}{'ttft p50':>10}{'p90':>8}{'p99':>8}{'max':>8}{'x':>7}"
                    f"{'text p50':>10}{'x':>7}{'total p50':>11}{'x':>7}{'6w-batch p50':>14}  ids==voxcli")
            p(head)
            p("-" * len(head))
            for key in keys:
                _, method, clip = key.split("|")
                e = summary["file"][key]
                t, tx, tot, fc = e["ttft_ms"], e["first_text_ms"], e["total_ms"], e["first_chunk_ms"]
                match = e.get("token_ids_vs_voxcli")
                mtxt = "" if method == "voxcli" or match is None else (
                    "yes" if match["identical"] else f"no ({match['common_prefix']}/{match['n_voxcli']} equal)")
                p(f"{method:<14}{clip:<7}{t.get('n', 0):>4}{fmt(t.get('p50'), 10)}{fmt(t.get('p90'))}"
                  f"{fmt(t.get('p99'))}{fmt(t.get('max'))}{fmt(ratio.get(f'file|{key}|ttft_ms'), 7, 2)}"
                  f"{fmt(tx.get('p50'), 10)}{fmt(ratio.get(f'file|{key}|first_text_ms'), 7, 2)}"
                  f"{fmt(tot.get('p50'), 11)}{fmt(ratio.get(f'file|{key}|total_ms'), 7, 2)}"
                  f"{fmt(fc.get('p50'), 14)}  {mtxt}")
        keys = [k for k in summary["paced"] if k.startswith(label + "|")]
        if keys:
            p(f"paced at real speed ({opts.paced_runs} runs per clip; per-token figures over speech tokens; ms)")
            head = (f"{'method':<14}{'clip':<7}{'n':>5}{'ready->token p50':>18}{'p90':>8}{'p99':>8}{'mean':>8}"
                    f"{'x':>7}{'ready->shown p50':>18}{'x':>7}{'first text':>12}{'finalize':>10}  ids==voxcli")
            p(head)
            p("-" * len(head))
            for key in keys:
                _, method, clip = key.split("|")
                e = summary["paced"][key]
                rt, rs = e["ready_to_token_ms"], e["ready_to_shown_ms"]
                match = e.get("token_ids_vs_voxcli")
                mtxt = "" if method == "voxcli" or match is None else (
                    "yes" if match["identical"] else f"no ({match['common_prefix']}/{match['n_voxcli']} equal)")
                p(f"{method:<14}{clip:<7}{rt.get('n', 0):>5}{fmt(rt.get('p50'), 18)}{fmt(rt.get('p90'))}"
                  f"{fmt(rt.get('p99'))}{fmt(rt.get('mean'))}{fmt(ratio.get(f'paced|{key}|ready_to_token_ms'), 7, 2)}"
                  f"{fmt(rs.get('p50'), 18)}{fmt(ratio.get(f'paced|{key}|ready_to_shown_ms'), 7, 2)}"
                  f"{fmt(e['first_text_paced_ms'].get('p50'), 12)}{fmt(e['finalize_ms'].get('p50'), 10)}  {mtxt}")
    p("\nHeadline: p50 over all clips, baseline / voxcli (above 1: voxcli is faster)")
    for m in models:
        label = m["label"]
        for kind, metrics in (("file", (("ttft_ms", "ttft"), ("first_text_ms", "first text"), ("total_ms", "total"))),
                              ("paced", (("ready_to_token_ms", "ready->token"), ("ready_to_shown_ms", "ready->shown"),
                                         ("first_text_paced_ms", "first text")))):
            methods = dict.fromkeys(k.split("|")[1] for k in summary[kind] if k.startswith(label + "|"))
            for method in methods:
                if method == "voxcli":
                    continue
                parts = []
                for metric, name in metrics:
                    r = ratio.get(f"{kind}|{label}|{method}|all|{metric}")
                    parts.append(f"{name} {'-' if r is None else f'{r:.2f}x'}")
                p(f"  {label:<15}{kind:<6}{method:<14}" + "   ".join(parts))
    p("\nDefinitions:")
    for name, text in DEFINITIONS.items():
        p(f"  {name}: {text}")


def machine() -> dict:
    from voxcli.measure.environment import host

    return host()


def load_clips(patterns: list[str]) -> list[Clip]:
    from voxcli.audio.decode import load_audio

    paths: list[str] = []
    for pattern in patterns:
        for item in pattern.split(","):
            found = sorted(glob.glob(item)) if any(c in item for c in "*?[") else [item]
            if not found:
                raise SystemExit(f"--clips {item!r}: no such file")
            paths.extend(found)
    clips = []
    for path in dict.fromkeys(paths):
        audio = load_audio(path)
        clips.append(Clip(Path(path).stem, path, audio, len(audio) / SAMPLE_RATE))
    return clips


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Model names tiny, mid, tiny-realtime, tiny-offline, mid-realtime, "
                                        "mid-offline are random checkpoints built with voxcli.testing.tiny into "
                                        "--build-dir (tiny: hidden 64, 2 layers; mid: hidden 512, 8 layers).")
    ap.add_argument("--model", action="append", default=None,
                    help="checkpoint dir, hub id or built name; repeatable or a comma list (default: tiny)")
    ap.add_argument("--clips", action="append", default=None,
                    help="audio files or globs; repeatable or a comma list (default: examples/*.wav)")
    ap.add_argument("--runs", type=int, default=10, help="measured runs per method and clip (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="uncounted runs per method and clip first (default 2)")
    ap.add_argument("--paced", action="store_true",
                    help="also replay each clip at real speed for the live comparison (Realtime models)")
    ap.add_argument("--paced-runs", type=int, default=2, help="paced runs per method and clip (default 2)")
    ap.add_argument("--json", metavar="OUT", help="write every raw sample and the summaries here")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: steadier on a shared 2-core CPU; 0 = torch's default)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default auto)")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU, fp32 on CPU), bfloat16, float16, float32")
    ap.add_argument("--max-new-tokens", type=int, default=64,
                    help="offline models: cap for every method (random weights rarely stop; default 64)")
    ap.add_argument("--build-dir", default=str(DEFAULT_BUILD_DIR), help="where built random models live")
    ap.add_argument("--wlk-python", default=str(DEFAULT_WLK_PYTHON),
                    help="python of a venv with whisperlivekit[voxtral-hf] (bench/setup_wlk.sh); '' to skip")
    ap.add_argument("--wlk-vac", choices=("off", "on", "both"), default="off",
                    help="WhisperLiveKit's voice-activity controller: off (method 'wlk', default), on "
                         "(method 'wlk-vac', its server's default), or both")
    ap.add_argument("--block-ms", type=int, default=20,
                    help="paced WhisperLiveKit: audio block size sent to it (default 20, like voxcli's mic)")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.paced_runs < 1:
        ap.error("--runs and --paced-runs must be >= 1, --warmup >= 0")
    args.model = args.model or ["tiny"]
    args.clips = args.clips or [str(ROOT / "examples" / "*.wav")]
    return args


def main(argv=None) -> int:
    opts = parse_args(argv)
    names = [n.strip() for entry in opts.model for n in entry.split(",")]
    if all(n in BUILT_MODELS or n in ALIASES or Path(n).exists() for n in names):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing to fetch: never touch the network
    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)
    t_start = time.perf_counter()
    clips = load_clips(opts.clips)
    specs = resolve_models(opts.model, Path(opts.build_dir))
    wlk = WLK(opts.wlk_python, opts.wlk_vac) if opts.wlk_python else None
    results = Results()
    if wlk is not None and not wlk.available:
        results.note(f"WhisperLiveKit skipped: {wlk.reason}")
    models = [bench_model(spec, clips, opts, wlk, results) for spec in specs]
    summary = summaries(results, models, clips)
    ratio = ratios(summary)
    print_tables(models, clips, summary, ratio, opts)
    for note in results.notes:
        print(f"note: {note}")
    wall_s = time.perf_counter() - t_start
    env = machine()
    print(f"\nmachine: {env['cpu']}, {env['cpu_count']} cores, {env['cuda'] or 'no GPU'}; torch {env['torch']}, "
          f"transformers {env['transformers']}; clips: "
          + ", ".join(f"{c.name} {c.audio_s:.1f} s" for c in clips) + f"; wall time {wall_s:.0f} s")
    if opts.json:
        report = {"args": vars(opts), "machine": env, "models": models,
                  "clips": [{"name": c.name, "path": c.path, "audio_s": c.audio_s} for c in clips],
                  "definitions": DEFINITIONS, "samples": {"file": results.file, "paced": results.paced},
                  "summary": summary, "ratios_p50_vs_voxcli": ratio, "notes": results.notes,
                  "wall_s": wall_s}
        Path(opts.json).write_text(json.dumps(report, indent=1))
        print(f"raw samples and summaries: {opts.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
