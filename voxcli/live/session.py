"""One listen session on the main thread: what ``run_live`` hands over, drawn, saved and counted.

``ListenSession`` holds the session's state in typed fields (the view, the session files, two-pass
text, the status line) and has one method per kind of item the engine thread sends; ``run``
wires them to :func:`voxcli.live.runner.run_live` and returns the summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from voxcli.events import LiveStatus, StreamRole, keyterm_counts, round_or_none, summarize
from voxcli.live.runner import LiveResult, run_live
from voxcli.live.twopass import TwoPassRecorder


@dataclass
class _Shown:
    status: LiveStatus = field(default_factory=LiveStatus)
    state: str | None = None  # a message shown in the status line (a live view has no room for lines)
    save_failure_told: bool = False


class ListenSession:
    """The main thread's side of ``listen``.

    ``view``: where text is drawn (a live view, plain text, or nothing); ``out``: a stream that
    gets every row as JSON Lines (``--format jsonl``), or None; ``recorder``: the session files, or
    None; ``say``: a line for the person watching, when there is no status line to show it in
    (None: a live view, whose status line shows it); ``two_pass``: draw two streams.
    """

    def __init__(self, *, view, say, out=None, recorder=None, two_pass: bool = False) -> None:
        self.view = view
        self.say = say
        self.out = out
        self.recorder = recorder
        self.two_pass = TwoPassRecorder(view, on_replacement=self.row) if two_pass else None
        self.shown = _Shown()
        self.result: LiveResult | None = None
        self.keyterms: dict = {}  # phrase -> said, biased (in the transcript's stream)

    def run(self, engine, source, stop, options, final_engine=None, quit_now=None) -> LiveResult:
        self.result = run_live(engine, source, on_token=self.token, stop=stop, quit_now=quit_now, options=options,
                               final_engine=final_engine, on_audio=self.audio, on_latency=self.latency,
                               on_endpoint=self.endpoint, on_reconnect=self.row, on_restart=self.row,
                               on_notice=self.notice, on_status=self.status)
        return self.result

    # -- items from the engine thread --

    def audio(self, item) -> None:
        if self.recorder:
            self.recorder.write_audio(item.samples)
            self._saving_failed()

    def token(self, event, stream: str = "") -> None:
        if self.two_pass is None:
            self.view.add(event)
        else:
            self.two_pass.token(event, stream)

    def latency(self, token, emission_ms: float | None, after_ready_ms: float | None) -> None:
        extra = {"emission_latency_ms": round_or_none(emission_ms), "emitted_after_ready_ms": round_or_none(after_ready_ms),
                 "audio_available_s": round(token.audio_available_s, 5), "flushed": token.flushed,
                 "utterance": token.utterance}
        if token.stream:
            extra["stream"] = token.stream
            self.two_pass.latency(token.stream, token.event, emission_ms)
        self._emit({"type": "token", **token.event.to_dict(), **extra})
        final = token.stream != StreamRole.PROVISIONAL  # a token of the transcript (two-pass: its final stream)
        if final:
            keyterm_counts([token.event], self.keyterms)
        if self.recorder:
            self.recorder.write_event(token.event, transcript=final, **extra)
            self._saving_failed()

    def row(self, row) -> None:
        """An endpoint, a reconnect, a restart, a replacement: a row of the session's JSONL."""
        self._emit(row.to_dict())
        if self.recorder:
            self.recorder.write_row(row.to_dict())
            self._saving_failed()

    def endpoint(self, endpoint) -> None:
        self.row(endpoint)
        if self.two_pass is not None:  # speech ended: the last provisional word is whole
            self.two_pass.endpoint()

    def notice(self, text: str) -> None:
        if self.say is not None:  # no status line to show it in
            self.say(f"voxcli: {text}")

    def status(self, status: LiveStatus) -> None:
        self.shown.status = status
        self._show()

    def notify(self, message: str) -> None:
        """A message from this side (stopping, a failed save): a line, or the status line."""
        if self.say is not None:
            self.say(message)
        else:  # printing beside a live view would tear it
            self.shown.state = message
            self._show()

    # -- the end --

    def summary(self) -> dict | None:
        result = self.result
        if result is None:
            return None
        two = self.two_pass
        text = two.final_text() if two is not None else "".join(e.text for e in result.events)
        return {
            "audio_s": round(result.audio_s, 3),
            "n_tokens": len(result.events),
            "text": text.strip(),
            **({"two_pass": two.figures()} if two is not None else {}),
            **({"keyterms": self.keyterms} if self.keyterms else {}),
            "emission_latency_ms": summarize(result.emission_latency_ms),
            "emitted_after_ready_ms": summarize(result.emit_after_ready_ms),
            "step_ms": summarize(result.step_ms),
            "dropped_blocks": result.dropped_blocks,
            "input_overflows": result.input_overflows,
            "flushes": result.flushes,
            "endpoints": result.endpoints,
            "reconnects": result.reconnects,
            "restarts": result.restarts,
            "notice": result.notice,
            "error": result.error,
        }

    def close(self) -> dict | None:
        """The summary row out and into the files, and the files closed (also after a failure)."""
        summary = self.summary()
        if summary is not None:
            self._emit({"type": "summary", **summary})
        if self.recorder:
            if summary is not None:
                self.recorder.write_summary(summary)
            self.recorder.close()
        return summary

    def _emit(self, row: dict) -> None:
        if self.out is not None:
            self.out.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.out.flush()

    def _show(self) -> None:
        self.view.set_status(replace(self.shown.status, state=self.shown.state))

    def _saving_failed(self) -> None:
        if self.recorder.failure and not self.shown.save_failure_told:
            self.shown.save_failure_told = True
            self.notify(f"voxcli: error: {self.recorder.failure}")  # once; the transcript goes on
