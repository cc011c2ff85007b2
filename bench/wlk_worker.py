"""WhisperLiveKit's Voxtral backend, timed the way bench/compare.py times everything else.

Runs inside a venv that has ``whisperlivekit[voxtral-hf]`` (see bench/setup_wlk.sh), never in
voxcli's: compare.py starts it as a subprocess. It drives
WhisperLiveKit's own in-process pipeline (``TranscriptionEngine`` + ``AudioProcessor``, exactly
what its server runs per WebSocket connection, with raw PCM input) and records:

- every ``put()`` into the backend's ``TextIteratorStreamer`` (token ids, on the host), and
- every state the pipeline's ``results_formatter`` publishes (what a client would draw).

It stays loaded and answers one run per command (JSON lines on stdin/stdout), so compare.py can
interleave its runs with the other methods'. File mode sends the clip in blocks back to back, then
end-of-stream; paced mode sends block n at ``t0 + end_sample / 16000``. Only numpy, torch,
transformers and whisperlivekit are imported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time

import numpy as np

SAMPLE_RATE = 16000
PUTS: list[tuple[float, list[int]]] = []


def nonspace(text: str) -> int:
    return sum(1 for c in text if not c.isspace())


def ms(t, t0):
    return None if t is None else (t - t0) * 1000.0


def patch_streamer() -> None:
    """Timestamp every put() of the streamer WhisperLiveKit's backend creates."""
    from transformers import TextIteratorStreamer

    original = TextIteratorStreamer.put

    def put(self, value):
        PUTS.append((time.perf_counter(), value.reshape(-1).tolist()))
        original(self, value)

    TextIteratorStreamer.put = put


def load_in_dtype(dtype) -> str:
    """WhisperLiveKit always loads the model in bfloat16. The other methods run the engine's dtype
    (float32 on CPU, where bf16 matmuls are slow and rounding would change the weights), so its
    from_pretrained call is given that dtype instead: same weights, and a comparison of pipelines,
    not of dtypes. Nothing else about its loading changes."""
    from transformers import VoxtralRealtimeForConditionalGeneration as cls

    original = cls.from_pretrained.__func__

    def from_pretrained(klass, *args, **kwargs):
        asked = kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None)
        kwargs["dtype"] = dtype
        from_pretrained.asked = asked
        return original(klass, *args, **kwargs)

    cls.from_pretrained = classmethod(from_pretrained)
    return f"its from_pretrained(torch_dtype=bfloat16) is given dtype={str(dtype).removeprefix('torch.')} like the other methods"


async def one_run(engine, tokenizer, audio: np.ndarray, *, paced: bool, block: int, vac: bool,
                  first_need: int, chunk: int, hop: int) -> dict:
    from whisperlivekit.audio_processor import AudioProcessor
    from whisperlivekit.test_harness import TestState

    processor = AudioProcessor(transcription_engine=engine)
    results = await processor.create_tasks()
    states: list[tuple[float, str]] = []

    async def collect():
        async for front in results:
            states.append((time.perf_counter(), TestState.from_front_data(front).text))

    collector = asyncio.create_task(collect())
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    n = len(audio)
    sent: list[tuple[int, float]] = []  # (samples handed over so far, when)
    PUTS.clear()
    t0 = time.perf_counter()
    for start in range(0, n, block):
        end = min(start + block, n)
        if paced:
            delay = t0 + end / SAMPLE_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await processor.process_audio(pcm[start * 2:end * 2])
        sent.append((end, time.perf_counter()))
    t_end = sent[-1][1] if paced else t0
    await processor.process_audio(b"")  # end of stream: WhisperLiveKit flushes (right padding)
    await asyncio.wait_for(collector, timeout=600)
    await processor.cleanup()

    # Token ids, with the prompt puts (more than one id) left out.
    tokens = [(t, ids[0]) for t, ids in PUTS if len(ids) == 1]
    special = set(tokenizer.all_special_ids) if hasattr(tokenizer, "all_special_ids") else set()
    first_id = next((t for t, i in tokens if i not in special), None)
    texts = [(t, s) for t, s in states if s.strip()]
    row = {
        "ttft_ms": ms(first_id, t0),
        "first_text_ms": ms(texts[0][0] if texts else None, t0),
        "total_ms": ms(texts[-1][0] if texts else None, t0),
        "n_tokens": len(tokens),
        "ids": [i for _, i in tokens],
        "text": texts[-1][1] if texts else "",
    }
    if not paced:
        return row

    row.update(_paced_figures(tokenizer, tokens, states, texts, sent, t0, t_end, n, vac=vac, first_need=first_need,
                              chunk=chunk, hop=hop))
    return row


def _paced_figures(tokenizer, tokens, states, texts, sent, t0: float, t_end: float, n: int, *, vac: bool,
                   first_need: int, chunk: int, hop: int) -> dict:
    """A paced run's per-token figures: each token's chunk ready -> its id, -> its text shown."""
    # When each token's text was first visible: the first published state holding as many
    # non-space characters as the decode of the ids up to that token.
    ids = [i for _, i in tokens]
    counts = [nonspace(tokenizer.decode(ids[:k + 1], skip_special_tokens=True)) for k in range(len(ids))]
    seen = [(t, nonspace(s)) for t, s in states]
    shown, prev = [], 0
    for c in counts:
        if c <= prev:
            shown.append(None)
            continue
        prev = c
        shown.append(next((t for t, s in seen if s >= c), None))
    # Chunk k needs this many samples on WhisperLiveKit's own grid (its later chunks start at
    # first_need, not at the processor's mel-frame position); ready = when the block holding the
    # last of them was handed over. Without VAC the stream is one generate() session, so token k
    # belongs to chunk k; with VAC, silence is cut out and sessions restart, so no per-token figure.
    ready_to_token, ready_to_shown = [], []
    n_speech = 0
    if not vac:
        for k, (t_tok, _) in enumerate(tokens):
            need = first_need if k == 0 else first_need + (k - 1) * hop + chunk
            if need > n:
                continue
            t_ready = next(t for s, t in sent if s >= need)
            n_speech += 1
            ready_to_token.append((t_tok - t_ready) * 1000.0)
            if shown[k] is not None:
                ready_to_shown.append((shown[k] - t_ready) * 1000.0)
    shown_any = [s for s in shown if s is not None]
    return {
        "ready_to_token_ms": ready_to_token,
        "ready_to_shown_ms": ready_to_shown,
        "shown_after_token_ms": [(s - t) * 1000.0 for (t, _), s in zip(tokens, shown) if s is not None],
        "first_text_paced_ms": ms(texts[0][0] if texts else None, t0),
        "finalize_ms": ms(max(shown_any), t_end) if shown_any else None,
        "n_speech_tokens": n_speech,
        "n_flush_tokens": len(tokens) - n_speech if not vac else None,
        "text_consistent": bool(counts) and bool(seen) and counts[-1] == max(s for _, s in seen),
    }


def serve(args) -> int:
    """Load once, then answer one line per command on stdin:
    ``{"clip": NAME, "paced": BOOL}`` -> ``{"row": {...}}`` (or ``{"error": "..."}``); ``{"quit": true}`` ends.
    The first line out is ``{"ready": true, "notes": [...]}``. Protocol lines go to the real
    stdout only; everything else anyone prints goes to stderr."""
    import torch

    out = sys.stdout
    sys.stdout = sys.stderr
    if args.threads:
        torch.set_num_threads(args.threads)
    patch_streamer()
    from whisperlivekit.core import TranscriptionEngine

    vac = args.vac == "on"
    want = getattr(torch, args.dtype)
    notes = [load_in_dtype(want)]
    engine = TranscriptionEngine(backend="voxtral", model_dir=args.model, lan="auto", pcm_input=True, vac=vac)
    if engine.asr.model.dtype != want:
        raise SystemExit(f"model loaded as {engine.asr.model.dtype}, wanted {want}")
    processor = engine.asr.processor
    tokenizer = processor.tokenizer
    kwargs = dict(block=max(1, args.block_ms * SAMPLE_RATE // 1000), vac=vac,
                  first_need=processor.num_samples_first_audio_chunk,
                  chunk=processor.num_samples_per_audio_chunk, hop=processor.raw_audio_length_per_tok)
    clips = {}
    for item in args.clip:
        name, path = item.split("=", 1)
        clips[name] = np.load(path)
    notes.append(f"VAC {args.vac}, {args.block_ms} ms blocks, min_chunk_size {engine.args.min_chunk_size} s")

    def say(obj) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    say({"ready": True, "notes": notes})
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        try:
            row = asyncio.run(one_run(engine, tokenizer, clips[command["clip"]], paced=bool(command["paced"]),
                                      **kwargs))
            say({"row": row})
        except Exception as exc:  # noqa: BLE001 - reported to compare.py, which stops
            say({"error": f"{type(exc).__name__}: {exc}"})
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vac", choices=("on", "off"), default="off")
    ap.add_argument("--block-ms", type=int, default=20)
    ap.add_argument("--clip", action="append", required=True, help="name=path.npy (float32 16 kHz mono)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in ("whisperlivekit", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.simplefilter("ignore")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
