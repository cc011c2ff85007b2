"""Segmenting: a long clip transcribed speech segment by speech segment, by any engine that hears
whole clips (the local offline engine, a server's offline endpoint)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from voxcli.events import TokenEvent
from voxcli.units import seconds


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
            yield dataclasses.replace(event, index=index, text=text, audio_start_s=seconds(start),
                                      audio_end_s=seconds(end), segment=seg_no)
            index += 1
