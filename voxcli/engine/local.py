"""Voxtral on the local device: loading, warm-up, streaming generation and token timing.

Usable without the CLI::

    from voxcli.engine.local import load_engine
    engine = load_engine("mistralai/Voxtral-Mini-4B-Realtime-2602")
    for event in engine.transcribe(samples):          # float32 mono 16 kHz
        print(event.text, end="", flush=True)

Two model kinds, told apart by their config:

- ``realtime`` (Voxtral Mini 4B Realtime): a causal encoder, one text token per 80 ms of audio,
  a fixed delay. Everything, files included, goes through :class:`RealtimeSession`, the same
  chunked path live audio takes, so what ``bench`` measures on files is what ``listen`` runs.
- ``offline`` (Voxtral Mini 3B / Small 24B): hears whole windows of up to 30 s; long audio is
  split at silences and each segment transcribed in turn.

Both decode with a hand-written greedy loop (prefill, then one step per token) instead of
``generate()``: stock streaming ``generate()`` asks for the NEXT audio chunk before it hands the
current token over, which makes every live token one chunk (80 ms) late. Here a token is yielded
the moment its id is on the host, before the next chunk is even requested.

A Realtime step runs through :mod:`voxcli.engine.static` (``step="static"``, the default: buffers
allocated once, compilable) or through transformers' forward (``step="hf"``, the reference it
is tested against); the session around it (buffering, features, timing, text) is the same.

This module knows nothing about YAML, flags or the terminal; errors a user can cause are raised
as :class:`voxcli.errors.ModelError` / ``ValueError``.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import logging
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from voxcli.choices import COMPILE_MODES, DEFAULT_MODEL, DEVICES, DTYPES, EOS_POLICIES, STEPS
from voxcli.delays import TOKEN_MS, check_delay_ms
from voxcli.engine.compat import ProcessorAdapter, cache_kwarg_names
from voxcli.engine.contract import EngineInfo
from voxcli.engine.pick import unpack
from voxcli.errors import ModelError, first_line, setting
from voxcli.events import TokenEvent, clamp_span
from voxcli.units import SAMPLE_RATE

log = logging.getLogger(__name__)

DEVICE = setting("model.device")
DEFAULT = object()  # "the engine's own keyterms"
STEP_MS_KEEP = 4096  # step times a session remembers (about 5.5 minutes of audio)
FEATURE_BATCH_STEPS = 64  # most steps whose features are computed in one call (5.1 s of audio)
TRIES_KEPT = 32  # keyterm tries an engine keeps made (each session's phrases; the engine's own among them)


def resolve_device(device: str) -> str:
    """``auto`` picks cuda, then mps, then cpu. Explicit ``cuda:N`` is accepted."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    base = device.split(":", 1)[0]
    if base not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")
    if base == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for but CUDA is not available here; use {DEVICE}=cpu",
                         device=device)
    if base == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device 'mps' was asked for but MPS is not available here; use {DEVICE}=cpu", device=device)
    return device


def resolve_dtype(dtype: str, device: str):
    """``auto`` is bfloat16 on a GPU that has it, float16 on a CUDA GPU that does not (V100, T4:
    bfloat16 there is emulated, or refused), and float32 on the CPU (bf16 matmuls are slow on
    most CPUs)."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        if device == "cpu":
            return torch.float32
        if device.startswith("cuda") and not torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.float16
        return torch.bfloat16
    return getattr(torch, dtype)


class _Detokenizer:
    """Turns token ids into text deltas one at a time.

    Tekken tokens are byte pieces: a multi-byte character can be split across tokens, so bytes go
    through an incremental UTF-8 decoder that holds back an incomplete character until it is whole.
    Special tokens add no text.
    """

    def __init__(self, tekkenizer) -> None:
        self._tok = tekkenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def is_special(self, token_id: int) -> bool:
        return self._tok.is_special(token_id)

    def push(self, token_id: int) -> str:
        if self._tok.is_special(token_id):
            return ""
        return self._utf8.decode(self._tok.id_to_byte_piece(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)

    def piece(self, token_id: int) -> str:
        """One token's own text, out of context (an alternative's): a special's name, a byte
        piece that is not a whole character as the replacement character."""
        if self._tok.is_special(token_id):
            return self._tok.id_to_piece(token_id)
        return self._tok.id_to_byte_piece(token_id).decode("utf-8", errors="replace")


class Engine:
    """What both model kinds share: loading state, warm-up, detokenization. Satisfies
    :class:`voxcli.engine.contract.Engine` (the Realtime engine also :class:`voxcli.engine.contract.RealtimeEngine`)."""

    kind: str = ""

    def __init__(self, model, processor, info: EngineInfo, *, alternatives: int = 0, confidence: bool = False,
                 keyterms=None) -> None:
        self.model = model
        self.processor = processor
        self.proc = ProcessorAdapter(processor)
        self.info = info
        self._tekken = self.proc.tekken
        self.eos_id = self._tekken.eos_id
        self.cache_kwargs = cache_kwarg_names(model)
        if alternatives < 0:
            raise ValueError(f"alternatives must be >= 0, got {alternatives}")
        self.alternatives = alternatives  # the top K each token event carries (with p)
        self.top_k = max(alternatives, int(confidence))  # what each step reads back: 1 for p alone
        self.keyterms = keyterms  # voxcli.engine.keyterms.Keyterms every session favours unless told otherwise
        self._tries: collections.OrderedDict = collections.OrderedDict()  # Keyterms -> trie, the latest TRIES_KEPT

    def bias_walk(self, vector, keyterms=DEFAULT):
        """A stream's keyterm walk over ``vector`` (its bias on the device, zero), for
        ``keyterms`` (default: the engine's); None when there is nothing to favour."""
        from voxcli.engine.keyterms import BiasWalk, KeytermTrie

        keyterms = self.keyterms if keyterms is DEFAULT else keyterms
        if not keyterms:
            return None
        if keyterms not in self._tries:
            self._tries[keyterms] = KeytermTrie(keyterms, self._tekken, word_marker=self.word_marker)
            if len(self._tries) > TRIES_KEPT:  # a server's sessions may each bring their own
                self._tries.popitem(last=False)
        self._tries.move_to_end(keyterms)
        return BiasWalk(self._tries[keyterms], vector)

    @property
    def word_marker(self) -> int | None:
        """The token the model says before each word group (``[STREAMING_WORD]``: the Realtime
        model's grammar), or None for a model without markers."""
        return None

    def bias_vector(self):
        """A zero bias for a stream of its own (the hf step, the offline loop)."""
        import torch

        return torch.zeros(self.model.lm_head.weight.shape[0], device=self.model.device, dtype=self.model.dtype)

    def token_extras(self, picked, walk, special: bool, detok: "_Detokenizer") -> dict:
        """What a token event says beyond its id: ``p`` and ``alternatives`` (with top_k), the
        keyterm it completed."""
        extras: dict = {}
        if picked.logprob is not None:
            extras["p"] = picked.p
            if self.alternatives:
                extras["alternatives"] = tuple({"token_id": i, "text": detok.piece(i), "logprob": lp}
                                               for i, lp in picked.top[:self.alternatives])
        done = walk.after(picked.token_id, picked.plain_id, special) if walk is not None else None
        if done is not None:
            extras["keyterm"], extras["keyterm_biased"] = done
        return extras

    @property
    def device(self):
        return self.model.device

    def detokenizer(self) -> _Detokenizer:
        return _Detokenizer(self._tekken)

    def critical_path_ms(self, audio: np.ndarray) -> float:
        from voxcli.engine.timing import critical_path_ms

        return critical_path_ms(self, audio)

    def environment(self) -> dict:
        from voxcli.engine.timing import environment

        return environment(self)

    def transcribe(self, audio: np.ndarray, *, language: str | None = None) -> Iterator[TokenEvent]:
        raise NotImplementedError

    def warmup(self) -> float:
        """Run a short silent clip through the full path once; returns the seconds it took. The
        endpointer's detector is loaded too: not inside the first file's or session's timing."""
        from voxcli.audio.vad import preload

        t0 = time.perf_counter()
        preload()
        for _ in self.transcribe(np.zeros(SAMPLE_RATE // 2, dtype=np.float32), max_new_tokens=4):
            pass
        self.info.warmup_s = time.perf_counter() - t0
        return self.info.warmup_s


def _validate_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (one dimension), got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be floating point samples in [-1, 1], got {audio.dtype}")
    return audio.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------- realtime


class RealtimeEngine(Engine):
    """Voxtral Mini 4B Realtime: one token per 80 ms chunk, through :class:`RealtimeSession`."""

    kind = "realtime"

    def __init__(self, model, processor, info: EngineInfo, *, delay_ms: int | None = None,
                 step: str = "static", compile: bool = False, static=None, streams: int = 1, on_eos: str = "restart",
                 **outputs) -> None:
        super().__init__(model, processor, info, **outputs)
        if step not in STEPS:
            raise ValueError(f"step must be one of {', '.join(STEPS)}, got {step!r}")
        if on_eos not in EOS_POLICIES:
            raise ValueError(f"on_eos must be one of {', '.join(EOS_POLICIES)}, got {on_eos!r}")
        self.step = step
        self.on_eos = on_eos
        # The static path: one StaticModel per loaded model (weights shared, compiled functions and
        # batch rows reused by every session and by with_delay()); features on the device.
        self.static = None
        self.log_mel = self.proc.log_mel
        if step == "static":
            from voxcli.engine.static import DeviceLogMel, StaticModel

            self.static = static or StaticModel(model, compile=compile, streams=streams, top_k=self.top_k)
            self.log_mel = DeviceLogMel(self.proc.frontend, model.device)
        proc = self.proc
        audio_cfg = proc.audio_config
        if delay_ms is None:
            delay_ms = int(audio_cfg.transcription_delay_ms)
        check_delay_ms(delay_ms)
        self.delay_ms = delay_ms
        self.num_delay_tokens = audio_cfg.get_num_delay_tokens(delay_ms)
        self.num_right_pad_tokens = audio_cfg.n_right_pad_tokens(delay_ms)
        self.hop_samples = proc.samples_per_token  # 1280: 80 ms
        self.frames_per_token = proc.frames_per_token  # 8 mel frames
        self.chunk_samples = proc.frames_per_token * proc.hop_length + proc.win_length  # 1680
        # The feature extractor drops the last frame of a window, so the last hop (160 samples)
        # of each 1680-sample chunk never reaches the model (verified: zeroing it changes no
        # feature). A step therefore needs only 1520 samples, and a live token is due 10 ms
        # sooner than when waiting for the whole chunk; the tail is zero-filled.
        self.window_samples = self.chunk_samples - proc.hop_length  # 1520
        # The prompt and the first chunk's size depend on the delay: BOS + (left pad + delay) x PAD.
        self.prompt_ids = proc.instruct.start() + proc.audio_encoder.encode_streaming_tokens(delay_ms)
        left_pad, _ = proc.audio_encoder.get_padding_audio(delay_ms)
        self.left_pad = left_pad.audio_array.astype(np.float32)
        first_mel_frames = (self.num_delay_tokens + 1) * proc.frames_per_token
        self.first_chunk_samples = (first_mel_frames - 1) * proc.hop_length + proc.win_length // 2
        # Where the first window after the prefill starts, counted from the start of the left pad:
        # the next mel frame (the prefill made one per 10 ms of prompt) is centred on
        # frames x hop, so its window opens win_length // 2 earlier. Getting this wrong (e.g. 400
        # samples back instead of 240) still runs, but the model hears shifted audio.
        prefill_frames = len(self.prompt_ids) * proc.frames_per_token
        self.next_window_start = prefill_frames * proc.hop_length - proc.win_length // 2
        info.extra.update(delay_ms=delay_ms, num_delay_tokens=self.num_delay_tokens, step=self.step_name)
        info.delay_ms, info.other_delays = delay_ms, True

    @property
    def word_marker(self) -> int | None:
        return self._tekken.get_control_token("[STREAMING_WORD]")

    @property
    def blank_id(self) -> int:
        """``[STREAMING_PAD]``: the token for "nothing new" (on_eos="pad" feeds it after an EOS)."""
        return self._tekken.get_control_token("[STREAMING_PAD]")

    @property
    def step_name(self) -> str:
        """Which path runs a step: ``hf eager``, ``static eager`` or ``static compiled``."""
        return self.static.name if self.static is not None else "hf eager"

    def with_delay(self, delay_ms: int) -> "RealtimeEngine":
        """The same loaded weights at another delay (the delay is a prompt, not a model): the
        second stream of two-pass transcription costs no memory beyond its caches."""
        info = dataclasses.replace(self.info, extra=dict(self.info.extra))
        other = RealtimeEngine(self.model, self.processor, info, delay_ms=delay_ms, step=self.step,
                               static=self.static, alternatives=self.alternatives, confidence=self.top_k > 0,
                               keyterms=self.keyterms, on_eos=self.on_eos)
        if self.static is not None:
            self.static.reserve(2)  # both streams are rows of one batch: they step in one forward
            if self.static.compiled:
                self.warmup()  # the two-row graphs
                other.warmup()  # this delay's prefill compiles now, not inside the first session
        return other

    def steps_together(self, sessions: list["RealtimeSession"]) -> Iterator[tuple[int, TokenEvent]]:
        """Tokens of several sessions of this engine's weights (two-pass: the same audio at two
        delays), as ``(which session, event)``: while any of them can step, one forward for all
        that can (on the static step; the hf step runs them one after the other)."""
        while True:
            work = [(i, w) for i, s in enumerate(sessions) if (w := s._next_work()) is not None]
            if not work:
                return
            _compute([w for _, w in work])
            for i, w in work:
                yield i, sessions[i]._event(w)

    def finish_together(self, sessions: list["RealtimeSession"]) -> Iterator[tuple[int, TokenEvent]]:
        """End of audio for several sessions at once (two-pass at an end of speech): their right
        padding stepped in shared forwards, as ``(which session, event)``."""
        open_ = [i for i, s in enumerate(sessions) if not s._finished]
        for i in open_:
            sessions[i]._begin_finish()
        for j, event in self.steps_together([sessions[i] for i in open_]):
            yield open_[j], event
        for i in open_:
            tail = sessions[i]._end_finish()
            if tail is not None:
                yield i, tail

    def warmup(self, *, spans: list[int] | None = None) -> float:
        """The base warm-up; on the compiled path also every step graph (or those for ``spans``
        only, see :meth:`voxcli.engine.static.StaticModel.spans`). Compile time is kept apart in
        ``info.extra["compile_s"]``, and included in ``warmup_s``."""
        t0 = time.perf_counter()
        super().warmup()
        if self.static is not None and self.static.compiled:
            import torch

            # The prefill's inputs as a session makes them (their shapes are the graph's).
            prompt = torch.tensor([self.prompt_ids], device=self.device)
            mel = self.log_mel(np.zeros(len(self.left_pad) + self.first_chunk_samples, np.float32), center=True)
            self.static.precompile(self.num_delay_tokens, spans=spans, prompt_ids=prompt, mel=mel)
        if self.static is not None:
            self._say_how_it_steps()
        self.info.warmup_s = time.perf_counter() - t0
        return self.info.warmup_s

    def _say_how_it_steps(self) -> None:
        """``info.extra``: the step that runs (a failed compile falls back to eager), why it is
        not compiled if compiling failed, compile time, and the graphs warm-up made."""
        static, extra = self.static, self.info.extra
        extra["step"] = static.name
        if static.fallback:
            extra["compile_fallback"] = static.fallback
            extra["compile_fallback_traceback"] = static.fallback_traceback  # shown with --debug
        if static.compiled:
            extra["compile_s"] = round(sum(static.compile_s.values()), 3)
            extra["graphs"] = static.graphs.at_warmup.to_dict()

    def session(self, *, max_new_tokens: int | None = None, position_offset: int = 0,
                keep_logits: bool = False, keyterms=DEFAULT) -> "RealtimeSession":
        """A push-based streaming session: push audio as it arrives, pull tokens as they exist.

        ``position_offset`` (static step): start as if that many tokens had already gone by, to
        check that a session hours long computes like a fresh one. ``keep_logits``: keep each
        step's logits (a copy, on the host) in ``session.logits``, for comparisons. ``keyterms``:
        this session's (:class:`voxcli.engine.keyterms.Keyterms`, or None for none); default:
        the engine's."""
        return RealtimeSession(self, max_new_tokens=max_new_tokens, position_offset=position_offset,
                               keep_logits=keep_logits, keyterms=keyterms)

    def stream(self, blocks: Iterable[np.ndarray], *, max_new_tokens: int | None = None,
               keyterms=DEFAULT) -> Iterator[TokenEvent]:
        """Tokens for audio arriving in blocks of any size; the stream's end flushes the delay."""
        session = self.session(max_new_tokens=max_new_tokens, keyterms=keyterms)
        for block in blocks:
            session.push(_validate_audio(block))
            yield from session.steps()
        yield from session.finish()

    def transcribe(self, audio: np.ndarray, *, language: str | None = None,
                   max_new_tokens: int | None = None, keyterms=DEFAULT) -> Iterator[TokenEvent]:
        """All of ``audio`` at once, through the same chunked path live audio takes.

        ``language`` is accepted for a uniform interface; the Realtime model detects the language
        itself and takes no hint.
        """
        audio = _validate_audio(audio)
        end_s = len(audio) / SAMPLE_RATE
        for event in self.stream([audio], max_new_tokens=max_new_tokens, keyterms=keyterms):
            yield clamp_span(event, end_s)


class _StreamAudio:
    """A Realtime session's audio side, mixed into :class:`RealtimeSession`: the samples not yet
    handed to the model (``_buffer``, from the left pad on), the real ones already handed over
    (``_history``, for a restart's replay), features computed ahead, opening a stream at a
    given sample (prompt, left pad, caches cleared), and the inputs of the next prefill or step."""

    def _open_stream(self, start: int, audio: np.ndarray, *, fresh: bool = False) -> None:
        """A stream from sample ``start`` of the session's audio (``audio``: what was pushed from
        there on): prompt and left pad again, every cache cleared."""
        e = self.engine
        self._stream_start = start
        self._stream_tokens = 0
        self._buffer = np.concatenate([e.left_pad, audio])  # samples not yet consumed
        self._buffer_start = -len(e.left_pad)  # position of _buffer[0] in the stream's real audio
        self._history.clear()
        self._started = False
        self._detok = e.detokenizer()
        self._last_token = None
        self._feats = np.zeros((1, 0, 0), dtype=np.float32)  # features computed ahead, per step
        self._feats_next = 0
        if self._state is not None:
            if not fresh:
                e.static.restart(self._state, e.num_delay_tokens)  # its bias row zeroed too
            bias = self._state.rows.bias[self._state.row]
        else:
            self._hf = _HfForward(e)
            bias = self._hf.bias
        self._walk = e.bias_walk(bias, self._keyterms)  # writes this stream's first-token bias

    def _pad(self) -> None:
        """Pad exactly as mistral-common pads a whole clip: up to a whole 80 ms token, then the
        right padding. The stream's real audio plus this is what the model hears in total."""
        e = self.engine
        pad = (-(self.pushed_samples - self._stream_start)) % e.hop_samples + e.num_right_pad_tokens * e.hop_samples
        self._buffer = np.concatenate([self._buffer, np.zeros(pad, dtype=np.float32)])

    def _heard_padding(self) -> bool:
        """Has the last step read past the last real sample, into the right padding? (A step's
        window ends ``window_samples - hop_samples`` past where the next one starts.)"""
        e = self.engine
        heard_to = self._stream_start + self._buffer_start + e.window_samples - e.hop_samples
        return self._finishing and heard_to > self.pushed_samples

    def _drop(self, n: int) -> None:
        """``n`` samples handed to the model: out of the buffer, the real ones into the history."""
        gone = self._buffer[:n]
        real = gone[max(0, -self._buffer_start):]
        self._buffer = self._buffer[n:]
        self._buffer_start += n
        if len(real):
            self._history.add(real)

    def _extract_features(self) -> None:
        """Mel features for every step the buffered audio allows (up to FEATURE_BATCH_STEPS) in
        one call. Live, that is one step at a time; for a file it amortises the extractor's
        per-call cost, which is ~10% of a tiny model's step. Frames do not depend on how the audio
        is batched: each covers its own 400 samples, and the global log-mel maximum is fixed."""
        e = self.engine
        n = min(FEATURE_BATCH_STEPS, 1 + (len(self._buffer) - e.window_samples) // e.hop_samples)
        window = np.zeros(n * e.hop_samples + (e.chunk_samples - e.hop_samples), dtype=np.float32)
        used = min(len(window), len(self._buffer))  # the last hop is never read (dropped frame)
        window[:used] = self._buffer[:used]
        self._feats = e.log_mel(window, center=False)
        self._feats_next = 0

    def _prefill(self, need: int) -> "_Work":
        torch = self._torch
        e = self.engine
        if self.t_first_chunk_ready is None:
            self.t_first_chunk_ready = time.perf_counter()
        t0 = time.perf_counter()
        window = self._buffer[:need]
        feats = e.log_mel(window, center=True)
        ids = torch.tensor([e.prompt_ids], device=e.device)
        self._drop(e.next_window_start)
        self._started = True
        return self._work(ids, feats, t0, prefill=True)

    def _step(self) -> "_Work":
        e = self.engine
        t0 = time.perf_counter()
        if self._feats_next >= self._feats.shape[-1]:
            self._extract_features()
        frames = e.frames_per_token
        feats = self._feats[..., self._feats_next:self._feats_next + frames]
        self._feats_next += frames
        self._drop(e.hop_samples)
        return self._work(self._last_token, feats, t0)


class RealtimeSession(_StreamAudio):
    """One streaming transcription: ``push(samples)``, then ``steps()`` yields every token the
    buffered audio allows, one model step per 80 ms chunk; ``finish()`` pushes the right padding
    (silence worth the delay plus a margin) so the last words come out, and drains.

    End of sequence: at each position the model emits a text token, the blank
    ([STREAMING_PAD]) or EOS (vLLM ends its request there; voxtral.c stops its decoder). EOS is
    never fed back. If it comes while real audio remains (mid-clip, live), a new stream starts at
    the first sample the ended one had not transcribed (its EOS token's position, at least one
    token on), replayed from the audio kept here, so no audio is skipped; the EOS event carries
    ``restart_at_s``. EOS in the right padding (after every real sample was heard) simply ends the
    session: nothing more comes out of it.

    Not thread-safe: one thread pushes and steps (the pipeline's engine thread).
    """

    finish_waits = False  # finish() is compute only; a server's session waits for its answer
    waiting = False  # never waits on anyone: the model is here

    def __init__(self, engine: RealtimeEngine, *, max_new_tokens: int | None = None, position_offset: int = 0,
                 keep_logits: bool = False, keyterms=DEFAULT) -> None:
        import torch

        self._torch = torch
        self.engine = engine
        self._keyterms = keyterms
        self.logits: list | None = [] if keep_logits else None
        self._max_new_tokens = max_new_tokens
        self._finished = False
        self._finishing = False  # the right padding has been pushed
        self._ended = False  # EOS in the right padding: the session has nothing more to say
        self._state = None
        if engine.static is not None:
            # Preallocated buffers, reset in place; back to the pool at finish() (or when the
            # session is dropped unfinished).
            self._state = engine.static.acquire(engine.num_delay_tokens, position_offset=position_offset)
            self._release = weakref.finalize(self, engine.static.release, self._state)
        elif position_offset:
            raise ValueError("position_offset needs the static step")
        # Real audio already handed to the model, kept for a restart's replay: the most a restart
        # can reach back behind the buffer is the first chunk (its position, counted in tokens,
        # is where the text is; the model has heard a delay further).
        self._history = _History(engine.first_chunk_samples + engine.hop_samples)
        self.n_tokens = 0
        self.pushed_samples = 0
        # Recent step times only: a session may run for hours (one step per 80 ms).
        self.step_ms: deque[float] = deque(maxlen=STEP_MS_KEEP)  # decode steps, not the prefill
        self.t_first_chunk_ready: float | None = None
        self._carried = ""  # text flushed from a restarted stream's detokenizer, for the next text token
        self._open_stream(0, np.zeros(0, np.float32), fresh=True)

    # Audio in ---------------------------------------------------------------------------------

    def push(self, samples: np.ndarray) -> None:
        if self._finished:
            raise RuntimeError("push() after finish()")
        if len(samples):
            self._buffer = np.concatenate([self._buffer, samples.astype(np.float32, copy=False)])
            self.pushed_samples += len(samples)

    @property
    def audio_s(self) -> float:
        return self.pushed_samples / SAMPLE_RATE

    # Tokens out -------------------------------------------------------------------------------

    def steps(self) -> Iterator[TokenEvent]:
        """Yield a token for every chunk the buffered audio completes, each as soon as it exists."""
        while (work := self._next_work()) is not None:
            _compute([work])
            yield self._event(work)

    def _next_work(self) -> "_Work | None":
        """The next forward the buffered audio allows, its audio taken from the buffer; None if
        there is none (too little audio, or the session is done)."""
        e = self.engine
        if self._done():
            return None
        if not self._started:
            need = len(e.left_pad) + e.first_chunk_samples
            return self._prefill(need) if len(self._buffer) >= need else None
        # Each later chunk is a window of 8 mel frames advancing 1280 samples (80 ms).
        return self._step() if len(self._buffer) >= e.window_samples else None

    def _event(self, work: "_Work") -> TokenEvent:
        event = self._token(work)
        if event.token_id == self.engine.eos_id:
            event = self._end_of_sequence(event)
        return event

    def finish(self) -> Iterator[TokenEvent]:
        """End of audio: pad to a whole chunk, push the right padding, drain, close the text."""
        if self._finished:
            return
        self._begin_finish()
        yield from self.steps()
        tail = self._end_finish()
        if tail is not None:
            yield tail

    def _begin_finish(self) -> None:
        self._finishing = True
        self._pad()

    def _end_finish(self) -> TokenEvent | None:
        """Done: the row back to the pool; a dangling partial character at the end (its event)."""
        self._finished = True
        if self._state is not None:
            self._release()
        tail = self._carried + self._detok.flush()
        self._carried = ""
        if not tail:
            return None
        end_s = (self._stream_start / SAMPLE_RATE) + self._stream_tokens * TOKEN_MS / 1000.0
        return TokenEvent(self.n_tokens, -1, tail, time.perf_counter(), max(0.0, end_s - TOKEN_MS / 1000.0), end_s)

    def close(self) -> None:
        """Drop the stream unfinished (its state goes back to the pool now, not when collected)."""
        self._finished = True
        if self._state is not None:
            self._release()

    def incidents(self) -> list[object]:
        return []  # nothing happens on the way to a model on this machine

    def _done(self) -> bool:
        return self._ended or (self._max_new_tokens is not None and self.n_tokens >= self._max_new_tokens)

    def _end_of_sequence(self, event: TokenEvent) -> TokenEvent:
        """The stream said EOS: never fed back. In the right padding, the session ends. With real
        audio left, ``on_eos="restart"``: a new stream starts at the first sample this one had not
        transcribed (at least a token on, so a model that says EOS at once still moves forward);
        ``"pad"``: the blank is fed in its place and the stream goes on with its caches."""
        e = self.engine
        at = self._stream_start + max(self._stream_tokens - 1, 1) * e.hop_samples
        if at >= self.pushed_samples or self._heard_padding():
            self._ended = True
            return event
        if e.on_eos == "pad":
            blank = e.blank_id
            if self._state is not None:
                e.static.set_token(self._state, blank)
            else:
                self._last_token = self._torch.full((1, 1), blank, device=e.device, dtype=self._torch.long)
            return event
        kept = np.concatenate([*self._history.blocks, self._buffer])
        kept_start = self._stream_start + self._buffer_start - self._history.length  # session position of kept[0]
        replay = kept[at - kept_start:self.pushed_samples - kept_start]
        self._carried += self._detok.flush()  # a character the ended stream left incomplete: not dropped
        self._open_stream(at, replay)
        if self._finishing:
            self._pad()
        return dataclasses.replace(event, restart_at_s=at / SAMPLE_RATE)

    def _work(self, input_ids, feats, t0: float, prefill: bool = False) -> "_Work":
        from voxcli.engine.static import Job

        job = None
        if self._state is not None:
            job = Job(self._state, feats, input_ids if prefill else None, keep_logits=self.logits is not None)
        return _Work(self, input_ids, feats, prefill, job, (time.perf_counter() - t0) * 1000.0)

    def _token(self, work: "_Work") -> TokenEvent:
        """The event for a forward just done."""
        t_emitted = work.t_done
        if self.logits is not None:  # copied after the clock: a comparison's copy is not the step's time
            self.logits.append(work.logits)
        prefill = work.prefill
        token_id = work.token_id
        step_ms = work.features_ms + work.forward_ms
        if not prefill:
            self.step_ms.append(step_ms)
        k = self.n_tokens
        self.n_tokens += 1
        # Token j of a stream covers the j-th 80 ms of the audio the stream started at.
        start_s = self._stream_start / SAMPLE_RATE + self._stream_tokens * TOKEN_MS / 1000.0
        self._stream_tokens += 1
        special = self._detok.is_special(token_id)
        text = self._detok.push(token_id)
        if self._carried and not special:  # the last stream's incomplete character, flushed at its restart
            text, self._carried = self._carried + text, ""
        return TokenEvent(
            index=k,
            token_id=token_id,
            text=text,
            t_emitted=t_emitted,
            audio_start_s=start_s,
            audio_end_s=start_s + TOKEN_MS / 1000.0,
            special=special,
            step_ms=None if prefill else step_ms,
            batch=work.batch,
            **self.engine.token_extras(work.picked, self._walk, special, self._detok),
        )


@dataclasses.dataclass(eq=False)
class _Work:
    """One forward a session's audio allows: its inputs, then its result."""

    session: RealtimeSession
    input_ids: object
    feats: object
    prefill: bool
    job: object  # the static step's Job, or None (the hf step)
    features_ms: float  # the session's own part of the step, before the forward
    picked: object = None  # voxcli.engine.pick.Picked: the id, and what else the host read of it
    logits: object = None
    forward_ms: float = 0.0
    batch: int | None = None  # streams that forward stepped together (the static step)
    t_done: float = 0.0

    @property
    def token_id(self) -> int:
        return self.picked.token_id


def _compute(work: list[_Work]) -> None:
    """Every forward of ``work``: on the static step in as few forwards as the rows allow (the
    sessions share one StaticModel), on the hf step one by one."""
    static = [w for w in work if w.job is not None]
    if static:
        w0 = static[0]
        w0.session.engine.static.run([w.job for w in static])
        t_done = time.perf_counter()
        for w in static:
            w.picked, w.logits, w.forward_ms, w.batch = w.job.picked, w.job.logits, w.job.step_ms, w.job.batch
            w.t_done = t_done
    for w in work:
        if w.job is None:
            s = w.session
            t0 = time.perf_counter()
            with s._torch.inference_mode():
                next_id, packed, logits = s._hf(w.input_ids, w.feats)
            s._last_token = next_id[:, None]  # the static step keeps it in its state
            w.picked = unpack(packed[0].tolist(), s.engine.top_k)  # the one sync per token
            w.t_done = time.perf_counter()
            w.forward_ms = (w.t_done - t0) * 1000.0
            if s.logits is not None:
                w.logits = logits.float().cpu().clone()


class _History:
    """Real audio already handed to the model, kept for a restart's replay: bounded, since the
    most a restart reaches back behind the buffer is the first chunk."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.blocks: deque[np.ndarray] = deque()
        self.length = 0

    def add(self, real: np.ndarray) -> None:
        self.blocks.append(real)
        self.length += len(real)
        while self.length - len(self.blocks[0]) >= self.keep:
            self.length -= len(self.blocks.popleft())

    def clear(self) -> None:
        self.blocks.clear()
        self.length = 0


class _HfForward:
    """transformers' eager forward (``step="hf"``, the reference) with one stream's three caches,
    which the forward pass updates in place."""

    def __init__(self, engine: RealtimeEngine) -> None:
        from transformers import DynamicCache
        from transformers.models.voxtral_realtime.modeling_voxtral_realtime import VoxtralRealtimeConv1dPaddingCache

        self.engine = engine
        config = engine.model.config
        self.caches = {
            engine.cache_kwargs["cache"]: DynamicCache(config=config.text_config),
            engine.cache_kwargs["encoder_cache"]: DynamicCache(config=config.audio_config),
            "padding_cache": VoxtralRealtimeConv1dPaddingCache(),
        }
        self.bias = engine.bias_vector()  # this stream's keyterm bias

    def __call__(self, input_ids, feats):
        """(next token id, what the host reads of it (:func:`voxcli.engine.pick.pick`), its
        logits) for the prompt (the prefill) or the last token."""
        from voxcli.engine.pick import pick

        model = self.engine.model
        out = model(input_ids=input_ids, input_features=feats.to(model.device, model.dtype), use_cache=True,
                    **self.caches, num_delay_tokens=self.engine.num_delay_tokens, logits_to_keep=1)
        logits = out.logits[:, -1]
        next_id, packed = pick(logits, self.bias, self.engine.top_k)
        return next_id, packed, logits


# ---------------------------------------------------------------------------------------- offline


class OfflineEngine(Engine):
    """Voxtral Mini 3B / Small 24B: whole windows of up to 30 s, split at silences."""

    kind = "offline"
    MAX_SEGMENT_S = 30.0

    def __init__(self, model, processor, info: EngineInfo, *, max_new_tokens: int = 500, **outputs) -> None:
        super().__init__(model, processor, info, **outputs)
        self.max_new_tokens = max_new_tokens

    def transcribe(self, audio: np.ndarray, *, language: str | None = None,
                   max_new_tokens: int | None = None,
                   segments: list[tuple[int, int]] | None = None, keyterms=DEFAULT) -> Iterator[TokenEvent]:
        """Tokens for each speech segment in turn; each event carries its segment's span.

        ``segments`` (sample ranges) default to :func:`voxcli.audio.vad.stream_segments`: the speech
        the endpointer (Silero VAD) finds, grouped into windows of at most 30 s, cut at silences,
        found as the clip is searched. Silence, and any stretch over 2 s without speech, is never
        sent to the model (it invents text there).
        """
        audio = _validate_audio(audio)
        limit = max_new_tokens or self.max_new_tokens
        yield from transcribe_segments(audio, segments, lambda clip: self._generate(clip, language, limit, keyterms),
                                       max_segment_s=self.MAX_SEGMENT_S)

    def warmup(self) -> float:
        from voxcli.audio.vad import preload

        t0 = time.perf_counter()
        preload()  # the split points of a long file are found with it
        n = SAMPLE_RATE // 2
        for _ in self.transcribe(np.zeros(n, dtype=np.float32), max_new_tokens=2, segments=[(0, n)]):
            pass
        self.info.warmup_s = time.perf_counter() - t0
        return self.info.warmup_s

    def _generate(self, clip: np.ndarray, language: str | None, max_new_tokens: int,
                  keyterms=DEFAULT) -> Iterator[TokenEvent]:
        import torch
        from transformers import DynamicCache

        from voxcli.engine.pick import pick

        model = self.model
        inputs = self.proc.transcription_request(clip, language=language, model_id=self.info.model)
        inputs = inputs.to(model.device)
        inputs["input_features"] = inputs["input_features"].to(model.dtype)
        detok = self.detokenizer()
        cache = DynamicCache(config=model.config.text_config)
        bias = self.bias_vector()
        walk = self.bias_walk(bias, keyterms)
        ids = inputs["input_ids"]
        kwargs = {"input_features": inputs["input_features"], "attention_mask": inputs.get("attention_mask")}
        for k in range(max_new_tokens):
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1,
                            **{self.cache_kwargs["cache"]: cache}, **kwargs)
                next_id, packed = pick(out.logits[:, -1], bias, self.top_k)
            picked = unpack(packed[0].tolist(), self.top_k)  # the one sync per token
            token_id = picked.token_id
            t_emitted = time.perf_counter()
            if token_id == self.eos_id:
                break
            special = detok.is_special(token_id)
            yield TokenEvent(k, token_id, detok.push(token_id), t_emitted, special=special,
                             step_ms=(t_emitted - t0) * 1000.0 if k else None,  # step 0 is the prefill
                             **self.token_extras(picked, walk, special, detok))
            ids = next_id[:, None]
            kwargs = {}
        tail = detok.flush()
        if tail:
            yield TokenEvent(max_new_tokens, -1, tail, time.perf_counter())


def transcribe_segments(audio: np.ndarray, segments: list[tuple[int, int]] | None,
                        clip_events, *, max_segment_s: float) -> Iterator[TokenEvent]:
    """Run ``clip_events(clip)`` over each speech segment in turn (default: speech regions grouped
    into windows of at most ``max_segment_s``, cut at silences; silence yields nothing). Events are
    numbered across segments, carry their segment's span, and a segment's first text gets a
    leading space so words of segments transcribed apart stay apart."""
    if segments is None:
        from voxcli.audio.vad import stream_segments

        # Found as the clip is searched: the first segment is decoded once its end is known.
        segments = stream_segments(audio, max_segment_s)
    index = 0
    for seg_no, (start, end) in enumerate(segments):
        needs_space = index > 0
        for event in clip_events(audio[start:end]):
            text = event.text
            if needs_space and text:
                text = text if text[0].isspace() else " " + text
                needs_space = False
            yield dataclasses.replace(event, index=index, text=text, audio_start_s=start / SAMPLE_RATE,
                                      audio_end_s=end / SAMPLE_RATE, segment=seg_no)
            index += 1


# ---------------------------------------------------------------------------------------- loading


def detect_kind(config) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type == "voxtral_realtime":
        return "realtime"
    if model_type == "voxtral":
        return "offline"
    raise ModelError(
        f"model type {model_type!r} is not a Voxtral model; expected a Voxtral Mini 4B Realtime "
        f"or Voxtral Mini 3B / Small 24B checkpoint"
    )


def load_engine(model: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
                delay_ms: int | None = None, threads: int = 0, warmup: bool = True,
                offline: bool = False, max_new_tokens: int = 500, name: str | None = None,
                step: str = "static", compile: str = "auto", sessions: int = 1, alternatives: int = 0,
                confidence: bool = False, keyterms=None, on_eos: str = "restart") -> Engine:
    """Load a Voxtral checkpoint from a hub id or a local directory and warm it up.

    Safetensors only, no remote code. The first use of a hub id downloads it (with progress
    bars); ``offline`` (or ``HF_HUB_OFFLINE=1``) uses only the local cache. Before any weights
    are read, the memory the model needs is compared with what the device has free. Raises
    :class:`ModelError` with one actionable line when any of that cannot work. ``name`` is how
    reports name the model (default: ``model``), e.g. the hub id of an already resolved path.
    ``sessions``: Realtime streams stepped together, the batch's rows (two-pass: 2; ``model.max_streams``),
    each counted by the memory check. ``alternatives``: the top K every token event carries, with
    ``p`` (``confidence``: ``p`` alone); ``keyterms``: what every session favours unless it says
    otherwise (:class:`voxcli.engine.keyterms.Keyterms`). ``on_eos`` (Realtime): ``restart`` or ``pad``, what a
    stream does when the model says end of sequence with audio left (:class:`RealtimeSession`).
    """
    t0 = time.perf_counter()
    from voxcli.engine.hub import resolve_checkpoint

    if delay_ms is not None:
        check_delay_ms(delay_ms)
    path = resolve_checkpoint(model, offline=offline)  # every hub failure is one line, quickly
    import torch

    from voxcli.engine.memory import check_fits

    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    config = _load_config(path, model)
    kind = detect_kind(config)
    compiled = step == "static" and wants_compile(compile, str(device))
    est = check_fits(config, kind, torch_dtype, device, model, sessions=sessions,
                     graphs=kind == "realtime" and compiled)
    try:
        from transformers import AutoProcessor

        if kind == "realtime":
            from transformers import VoxtralRealtimeForConditionalGeneration as model_cls
        else:
            from transformers import VoxtralForConditionalGeneration as model_cls
        # Everything is local by now: transformers never goes to the network.
        common = {"trust_remote_code": False, "local_files_only": True}
        processor = AutoProcessor.from_pretrained(path, **common)
        net = model_cls.from_pretrained(path, dtype=torch_dtype, use_safetensors=True, **common)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{setting('model.name')} {model}: cannot load the checkpoint: {first_line(exc)}",
                         model=model) from exc
    net = net.to(device).eval()
    n_params = sum(p.numel() for p in net.parameters())
    info = EngineInfo(model=name or str(model), kind=kind, device=str(device),
                      dtype=str(torch_dtype).removeprefix("torch."), n_params=n_params,
                      load_s=time.perf_counter() - t0)
    if est is not None and kind == "realtime" and step == "static" and sessions > 1:
        from voxcli.engine.memory import available_bytes

        free = available_bytes(str(device))  # the weights are in; no row is allocated yet
        if free is not None and est.row_bytes:
            info.extra["streams"] = {"rows": sessions, "row_gib": round(est.row_bytes / 1024**3, 3),
                                     "fit": est.rows_in(free[0])}
    if dtype == "auto" and torch_dtype == torch.float16:
        info.extra["dtype_why"] = "this GPU has no bfloat16"  # the load line says why it is not bf16
    outputs = {"alternatives": alternatives, "confidence": confidence, "keyterms": keyterms}
    if kind == "realtime":
        engine: Engine = RealtimeEngine(net, processor, info, delay_ms=delay_ms, step=step, compile=compiled,
                                        streams=sessions, on_eos=on_eos, **outputs)
    else:
        engine = OfflineEngine(net, processor, info, max_new_tokens=max_new_tokens, **outputs)
    if warmup:
        engine.warmup()
    return engine


def wants_compile(mode: str, device: str) -> bool:
    """``model.compile``: ``on``, ``off``, or ``auto``: compiled on CUDA (CUDA graphs: one launch
    a step instead of thousands), eager on the CPU, where compiling takes longer than a typical
    session saves (bench/RESULTS.md, section 5)."""

    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "auto":
        return device.startswith("cuda")
    return mode == "on"


def _load_config(path: Path, model: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{setting('model.name')} {model}: cannot read its config.json: {first_line(exc)}",
                         model=model) from exc
