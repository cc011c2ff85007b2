"""One Realtime stream on this machine: audio pushed in, one token per 80 ms chunk out.

The session owns its audio window (:class:`voxcli.engine.window.AudioWindow`), its text (an
incremental detokenizer, a keyterm walk) and its row of the step (``engine.stepper``: the static
step's preallocated row, or the hf step's caches). ``next_work()`` and ``event(work)`` let an engine
step several sessions in one forward (:func:`compute`); ``steps()`` is the same for one.
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from collections import deque
from collections.abc import Iterator

import numpy as np

from voxcli.engine.batching import Job
from voxcli.engine.contract import DEFAULT
from voxcli.engine.window import AudioWindow
from voxcli.events import TokenEvent
from voxcli.units import TOKEN_MS, seconds

STEP_MS_KEEP = 4096  # step times a session remembers (about 5.5 minutes of audio)


@dataclasses.dataclass(eq=False)
class Work:
    """One forward a session's audio allows: its job (inputs, then result), and the session's own
    part of the step before the forward."""

    session: RealtimeSession
    job: Job
    features_ms: float

    @property
    def prefill(self) -> bool:
        return self.job.prompt_ids is not None


def compute(work: list[Work]) -> None:
    """Every forward of ``work``, in as few forwards as each step allows (sessions that share one
    static step share its forwards; the hf step runs them one by one)."""
    by_stepper: dict[int, list[Work]] = {}
    for w in work:
        by_stepper.setdefault(id(w.session.engine.stepper), []).append(w)
    for group in by_stepper.values():
        stepper = group[0].session.engine.stepper
        t0 = time.perf_counter()
        stepper.run([w.job for w in group])
        t_done = time.perf_counter()
        stepper.clock.add(t_done - t0, len(group))
        for w in group:
            w.job.t_done = w.job.t_done or t_done


class RealtimeSession:
    """One streaming transcription: ``push(samples)``, then ``steps()`` yields every token the
    pushed audio allows, one model step per 80 ms chunk; ``finish()`` pushes the right padding
    (silence worth the delay plus a margin) so the last words come out, and drains.

    End of sequence: at each position the model emits a text token, the blank
    ([STREAMING_PAD]) or EOS (vLLM ends its request there; voxtral.c stops its decoder). EOS is
    never fed back. If it comes while real audio remains (mid-clip, live), ``on_eos="restart"``
    starts a new stream at the first sample the ended one had not transcribed (its EOS token's
    position, at least one token on), replayed from the audio kept here, so no audio is skipped;
    the EOS event carries ``restart_at_s``. EOS in the right padding (after every real sample was
    heard) simply ends the session: nothing more comes out of it.

    Not thread-safe: one thread pushes and steps (the pipeline's engine thread).
    """

    finish_waits = False  # finish() is compute only; a server's session waits for its answer
    waiting = False  # never waits on anyone: the model is here

    def __init__(self, engine, *, max_new_tokens: int | None = None, position_offset: int = 0,
                 keep_logits: bool = False, keyterms=DEFAULT) -> None:
        self.engine = engine
        self._keyterms = keyterms
        self.logits: list | None = [] if keep_logits else None
        self._max_new_tokens = max_new_tokens
        self.finished = False
        self._finishing = False  # the right padding has been pushed
        self._ended = False  # EOS in the right padding: the session has nothing more to say
        stepper = engine.stepper
        # A row of the step, reset in place; back to the pool at finish() (or when dropped unfinished).
        self._state = stepper.acquire(engine.num_delay_tokens, position_offset=position_offset)
        self._release = weakref.finalize(self, stepper.release, self._state)
        self.window = AudioWindow(engine)
        self.n_tokens = 0
        # Recent step times only: a session may run for hours (one step per 80 ms).
        self.step_ms: deque[float] = deque(maxlen=STEP_MS_KEEP)  # decode steps, not the prefill
        self.t_first_chunk_ready: float | None = None
        self._carried = ""  # text flushed from a restarted stream's detokenizer, for the next text token
        self._open_stream(0, fresh=True)

    def _open_stream(self, start: int, *, fresh: bool = False) -> None:
        """A stream from sample ``start`` of the session's audio: prompt and left pad again, its
        row's caches cleared (a new row state for the hf step)."""
        e = self.engine
        self._stream_start = start
        self._stream_tokens = 0
        self._started = False
        self._detok = e.detokenizer()
        self.window.open(start)
        if not fresh:
            self._state = e.stepper.restart(self._state, e.num_delay_tokens)
        self._walk = e.bias_walk(e.stepper.bias(self._state), self._keyterms)  # writes the first-token bias

    # Audio in ---------------------------------------------------------------------------------

    @property
    def pushed_samples(self) -> int:
        return self.window.pushed

    @property
    def audio_s(self) -> float:
        return seconds(self.pushed_samples)

    def push(self, samples: np.ndarray) -> None:
        if self.finished:
            raise RuntimeError("push() after finish()")
        self.window.push(samples)

    # Tokens out -------------------------------------------------------------------------------

    def steps(self) -> Iterator[TokenEvent]:
        """Yield a token for every chunk the pushed audio completes, each as soon as it exists."""
        while (work := self.next_work()) is not None:
            compute([work])
            yield self.event(work)

    def next_work(self) -> Work | None:
        """The next forward the pushed audio allows, its audio taken from the window; None if
        there is none (too little audio, or the session is done)."""
        e, window = self.engine, self.window
        if self._ended or (self._max_new_tokens is not None and self.n_tokens >= self._max_new_tokens):
            return None
        t0 = time.perf_counter()
        if not self._started:
            if window.available() < len(e.left_pad) + e.first_chunk_samples:
                return None
            if self.t_first_chunk_ready is None:
                self.t_first_chunk_ready = t0
            self._started = True
            prompt = self._tensor([e.prompt_ids])
            return self._work(Job(self._state, window.prefill_features(), prompt, self.logits is not None), t0)
        # Each later chunk is a window of 8 mel frames advancing 1280 samples (80 ms).
        if window.available() < e.window_samples:
            return None
        return self._work(Job(self._state, window.step_features(), None, self.logits is not None), t0)

    def features_due(self) -> int:
        """How many samples the next step's features need computing from (0: none now); an engine
        stepping many sessions computes them in one call (``RealtimeEngine.steps_together``)."""
        if not self._started or self._ended:
            return 0
        return self.window.features_due()

    def _tensor(self, ids):
        import torch

        return torch.tensor(ids, device=self.engine.device)

    def _work(self, job: Job, t0: float) -> Work:
        return Work(self, job, (time.perf_counter() - t0) * 1000.0)

    def event(self, work: Work) -> TokenEvent:
        """The event for a forward of this session's just done."""
        event = self._token(work)
        if event.token_id == self.engine.eos_id:
            event = self._end_of_sequence(event)
        return event

    def finish(self) -> Iterator[TokenEvent]:
        """End of audio: pad to a whole chunk, push the right padding, drain, close the text."""
        if self.finished:
            return
        self.begin_finish()
        yield from self.steps()
        tail = self.end_finish()
        if tail is not None:
            yield tail

    def begin_finish(self) -> None:
        self._finishing = True
        self.window.pad()

    def end_finish(self) -> TokenEvent | None:
        """Done: the row back to the pool; a dangling partial character at the end (its event)."""
        self.finished = True
        self._release()
        tail = self._carried + self._detok.flush()
        self._carried = ""
        if not tail:
            return None
        end_s = seconds(self._stream_start) + self._stream_tokens * TOKEN_MS / 1000.0
        return TokenEvent(self.n_tokens, -1, tail, time.perf_counter(), max(0.0, end_s - TOKEN_MS / 1000.0), end_s)

    def close(self) -> None:
        """Drop the stream unfinished (its row goes back to the pool now, not when collected)."""
        self.finished = True
        self._release()

    def incidents(self) -> list[object]:
        return []  # nothing happens on the way to a model on this machine

    def cache_state(self):
        """The step's state of this stream (a static row, or the hf step's caches), for benchmarks
        that watch memory over hours (bench/soak.py)."""
        return self._state

    def _end_of_sequence(self, event: TokenEvent) -> TokenEvent:
        """The stream said EOS: never fed back. In the right padding, the session ends. With real
        audio left, ``on_eos="restart"``: a new stream starts at the first sample this one had not
        transcribed (at least a token on, so a model that says EOS at once still moves forward);
        ``"pad"``: the blank is fed in its place and the stream goes on with its caches."""
        e = self.engine
        at = self._stream_start + max(self._stream_tokens - 1, 1) * e.hop_samples
        if at >= self.pushed_samples or (self._finishing and self.window.heard_padding()):
            self._ended = True
            return event
        if e.on_eos == "pad":
            e.stepper.set_token(self._state, e.blank_id)
            return event
        self._carried += self._detok.flush()  # a character the ended stream left incomplete: not dropped
        self._open_stream(at)
        if self._finishing:
            self.window.pad()
        return dataclasses.replace(event, restart_at_s=seconds(at))

    def _token(self, work: Work) -> TokenEvent:
        job = work.job
        if self.logits is not None:  # copied after the clock: a comparison's copy is not the step's time
            self.logits.append(job.logits)
        step_ms = work.features_ms + job.step_ms
        if not work.prefill:
            self.step_ms.append(step_ms)
        k = self.n_tokens
        self.n_tokens += 1
        # Token j of a stream covers the j-th 80 ms of the audio the stream started at.
        start_s = seconds(self._stream_start) + self._stream_tokens * TOKEN_MS / 1000.0
        self._stream_tokens += 1
        token_id = job.token_id
        special = self._detok.is_special(token_id)
        text = self._detok.push(token_id)
        if self._carried and not special:  # the last stream's incomplete character, flushed at its restart
            text, self._carried = self._carried + text, ""
        return TokenEvent(
            index=k, token_id=token_id, text=text, t_emitted=job.t_done,
            audio_start_s=start_s, audio_end_s=start_s + TOKEN_MS / 1000.0,
            special=special, step_ms=None if work.prefill else step_ms, batch=job.batch,
            **self.engine.token_extras(job.picked, self._walk, special, self._detok),
        )
