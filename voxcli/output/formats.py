"""A transcript as text, JSON, JSON Lines, SRT or WebVTT (``render_transcript``)."""

from __future__ import annotations

import json
import math
from typing import Any

from voxcli.choices import OUTPUT_FORMATS
from voxcli.events import Restart, Transcript, keyterm_counts
from voxcli.output.cues import Cue, events_to_cues

FORMATS = OUTPUT_FORMATS

# --------------------------------------------------------------------------------------------
# Output formats
# --------------------------------------------------------------------------------------------


def _finite(obj: Any) -> Any:
    """NaN/inf are not JSON: write them as null rather than produce a file nothing can parse."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _json(obj: Any, **kwargs: Any) -> str:
    return json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False, **kwargs)


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_transcript(transcript: Transcript, fmt: str) -> str:
    """One transcript as ``fmt`` (one of ``FORMATS``); the result ends with a newline
    (except an SRT with no cues, which is empty)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "text":
        return transcript.text + "\n"
    if fmt == "json":
        return _json(transcript.to_dict(), indent=2) + "\n"
    if fmt == "jsonl":
        source = transcript.source
        lines = []
        for e in transcript.events:
            lines.append(_json({"type": "token", "source": source, **e.to_dict()}))
            if e.restart_at_s is not None:  # the stream it ended starts again here
                lines.append(_json({**Restart("eos", e.restart_at_s).to_dict(), "source": source}))
        summary = {
            "type": "summary",
            "source": transcript.source,
            "model": transcript.model,
            "text": transcript.text,
            "metrics": transcript.metrics.to_dict(),
        }
        keyterms = keyterm_counts(transcript.events)
        if keyterms:
            summary["keyterms"] = keyterms
        lines.append(_json(summary))
        return "\n".join(lines) + "\n"
    cues = events_to_cues(transcript.events, fallback_end_s=transcript.metrics.audio_s)
    if fmt == "srt":
        return "\n".join(srt_block(i, c) for i, c in enumerate(cues, 1))
    return "\n".join([VTT_HEADER, *(vtt_block(c) for c in cues)])


VTT_HEADER = "WEBVTT\n"  # a WebVTT file; each cue block follows after a blank line


def srt_block(number: int, cue: Cue) -> str:
    """One SRT cue (1-based ``number``), ending with a newline; blocks are joined by a blank line."""
    return (f"{number}\n{_timestamp(cue.start_s, ',')} --> {_timestamp(cue.end_s, ',')}\n"
            f"{cue.text.replace('-->', '->')}\n")


def vtt_block(cue: Cue) -> str:
    """One WebVTT cue, ending with a newline; after ``VTT_HEADER``, blocks are joined by a blank line."""
    return f"{_timestamp(cue.start_s, '.')} --> {_timestamp(cue.end_s, '.')}\n{_vtt_escape(cue.text)}\n"


