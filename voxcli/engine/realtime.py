"""Voxtral Mini 4B Realtime on this machine: one token per 80 ms chunk, everything (files
included) through :class:`voxcli.engine.session.RealtimeSession`, the chunked path live audio
takes, so what ``bench`` measures on files is what ``listen`` runs. A step runs on the static step
(:mod:`voxcli.engine.static`: rows allocated once, compilable, many streams in one forward) or on
transformers' forward (:mod:`voxcli.engine.hfstep`, the reference); both behind one face."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator

import numpy as np

from voxcli.choices import EOS_POLICIES, STEPS
from voxcli.delays import check_delay_ms
from voxcli.engine.base import DEFAULT, LocalEngine, validate_audio
from voxcli.engine.contract import EngineInfo
from voxcli.engine.hfstep import HfStep
from voxcli.engine.session import RealtimeSession, compute
from voxcli.events import TokenEvent, clamp_span
from voxcli.units import seconds


class RealtimeEngine(LocalEngine):
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
        self.stepper = self.static if self.static is not None else HfStep(self)  # acquire, run(jobs), ...
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
        info.num_delay_tokens, info.step = self.num_delay_tokens, self.step_name
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
        return self.stepper.name

    @property
    def forward_clock(self):
        """The step's :class:`voxcli.engine.batching.ForwardClock` (shared with ``with_delay``'s engines)."""
        return self.stepper.clock

    def with_delay(self, delay_ms: int, *, prepare: bool = True) -> "RealtimeEngine":
        """The same loaded weights at another delay (the delay is a prompt, not a model): the
        second stream of two-pass transcription costs no memory beyond its caches. ``prepare=False``
        (a server, whose rows were all allotted at load): no rows reserved, nothing compiled ahead;
        a compiled step compiles this delay's prefill in its first session."""
        info = dataclasses.replace(self.info)
        other = RealtimeEngine(self.model, self.processor, info, delay_ms=delay_ms, step=self.step,
                               static=self.static, alternatives=self.alternatives, confidence=self.top_k > 0,
                               keyterms=self.keyterms, on_eos=self.on_eos)
        if self.static is not None and prepare:
            self.static.reserve(2)  # both streams are rows of one batch: they step in one forward
            if self.static.compilation.compiled:
                self.warmup()  # the two-row graphs
                other.warmup()  # this delay's prefill compiles now, not inside the first session
        return other

    def steps_together(self, sessions: list["RealtimeSession"]) -> Iterator[tuple[int, TokenEvent]]:
        """Tokens of several sessions of this engine's weights (two-pass: the same audio at two
        delays), as ``(which session, event)``: while any of them can step, one forward for all
        that can (on the static step; the hf step runs them one after the other)."""
        while True:
            self._features_together(sessions)
            work = [(i, w) for i, s in enumerate(sessions) if (w := s.next_work()) is not None]
            if not work:
                return
            compute([w for _, w in work])
            for i, w in work:
                yield i, sessions[i].event(w)

    def _features_together(self, sessions: list["RealtimeSession"]) -> None:
        """The features every session's next step needs, in one log-mel call per width (live, every
        session's is one step's: one call for all), not one call per session."""
        by_width: dict[int, list] = {}
        for s in sessions:
            if self.static is not None and (width := s.features_due()) and s.engine.log_mel is self.log_mel:
                by_width.setdefault(width, []).append(s)
        for width, group in by_width.items():
            if len(group) < 2:
                continue  # next_work computes it as it always has
            feats = self.log_mel(np.stack([s.window.samples(width) for s in group]), center=False)
            for k, s in enumerate(group):
                s.window.computed(feats[k:k + 1])

    def finish_together(self, sessions: list["RealtimeSession"]) -> Iterator[tuple[int, TokenEvent]]:
        """End of audio for several sessions at once (two-pass at an end of speech): their right
        padding stepped in shared forwards, as ``(which session, event)``."""
        open_ = [i for i, s in enumerate(sessions) if not s.finished]
        for i in open_:
            sessions[i].begin_finish()
        for j, event in self.steps_together([sessions[i] for i in open_]):
            yield open_[j], event
        for i in open_:
            tail = sessions[i].end_finish()
            if tail is not None:
                yield i, tail

    def warmup(self, *, spans: list[int] | None = None) -> float:
        """The base warm-up; on the compiled path also every step graph (or those for ``spans``
        only, see :meth:`voxcli.engine.static.StaticModel.spans`). Compile time is kept apart in
        ``info.compile_s``, and included in ``warmup_s``."""
        t0 = time.perf_counter()
        super().warmup()
        if self.static is not None and self.static.compilation.compiled:
            import torch

            # The prefill's inputs as a session makes them (their shapes are the graph's).
            prompt = torch.tensor([self.prompt_ids], device=self.device)
            mel = self.log_mel(np.zeros(len(self.left_pad) + self.first_chunk_samples, np.float32), center=True)
            self.static.compilation.precompile(self.num_delay_tokens, spans=spans, prompt_ids=prompt, mel=mel)
        if self.static is not None:
            self._say_how_it_steps()
        self.info.warmup_s = time.perf_counter() - t0
        return self.info.warmup_s

    def _say_how_it_steps(self) -> None:
        """``info``: the step that runs (a failed compile falls back to eager), why it is
        not compiled if compiling failed, compile time, and the graphs warm-up made."""
        compilation, info = self.static.compilation, self.info
        info.step = self.static.name
        if compilation.fallback:
            info.compile_fallback = compilation.fallback
            info.compile_fallback_traceback = compilation.fallback_traceback  # shown with --debug
        if compilation.compiled:
            info.compile_s = round(sum(compilation.compile_s.values()), 3)
            info.graphs = compilation.graphs.at_warmup.to_dict()

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
            session.push(validate_audio(block))
            yield from session.steps()
        yield from session.finish()

    def transcribe(self, audio: np.ndarray, *, language: str | None = None, max_new_tokens: int | None = None,
                   segments: list[tuple[int, int]] | None = None, keyterms=DEFAULT) -> Iterator[TokenEvent]:
        """All of ``audio`` at once, through the same chunked path live audio takes.

        ``language`` and ``segments`` are accepted for a uniform interface: the Realtime model
        detects the language itself and hears the clip whole, silences included.
        """
        audio = validate_audio(audio)
        end_s = seconds(len(audio))
        for event in self.stream([audio], max_new_tokens=max_new_tokens, keyterms=keyterms):
            yield clamp_span(event, end_s)
