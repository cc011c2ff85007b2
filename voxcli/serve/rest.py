"""``POST /v1/audio/transcriptions``, OpenAI's shape: a multipart ``file`` (any format libsndfile
reads), ``model``, ``language``, ``response_format`` (json, text, verbose_json, srt, vtt) and
``stream=true`` for server-sent events (``transcript.text.delta`` / ``transcript.text.done``).
voxcli's own fields: ``keyterms`` (repeated, or ``keyterms[]`` as the ``openai`` package sends a
list in ``extra_body``) and ``keyterm_bias``: phrases to favour for this file; ``json`` and
``verbose_json`` then say how often each was said (``keyterms``).

Mistral's SDK (``client.audio.transcriptions.complete`` / ``stream``) posts to the same path. Its
form always carries ``diarize`` (and ``context_bias``, its phrases to favour), which OpenAI's never
does: such a form is answered in Mistral's shape (``{model, text, language, usage}``; server-sent
``transcription.text.delta`` / ``transcription.done`` with ``event:`` lines), :mod:`voxcli.serve.mistral`.

The file runs through the same scheduler as the realtime sessions (a stream that is pushed all its
audio and ended at once), so it counts against ``serve.max_sessions`` (503 when full). Past
``serve.max_upload_mb``: 413, before the body is read.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from voxcli.audio.decode import load_audio
from voxcli.choices import KEYTERM_BIAS
from voxcli.errors import AudioError
from voxcli.events import Transcript, TranscriptMetrics, clamp_span, keyterm_counts
from voxcli.output.cues import events_to_cues
from voxcli.output.formats import render_transcript
from voxcli.serve import codec, mistral
from voxcli.serve.scheduler import Done, Failed, Full, Token
from voxcli.units import seconds

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
_MEDIA = {"text": "text/plain; charset=utf-8", "srt": "application/x-subrip", "vtt": "text/vtt"}


def problem(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


async def transcriptions(request: Request) -> Response:
    server = request.app.state.server
    limit = int(server.options.max_upload_mb * 1024 * 1024)
    length = request.headers.get("content-length")
    if length is None:
        return _refused(server, 411, "send a Content-Length (chunked uploads are not taken)", "length_required")
    if int(length) > limit:
        return _refused(server, 413, f"the upload is {int(length) / 1e6:.1f} MB; this server takes at most "
                                     f"{server.options.max_upload_mb:g} MB (serve.max_upload_mb)", "file_too_large")
    try:
        form = await request.form(max_files=1, max_fields=16 + codec.MAX_KEYTERMS)
    except Exception as exc:  # noqa: BLE001 - python-multipart's and Starlette's parse errors alike
        return _refused(server, 400, f"not a multipart form: {exc}", "invalid_form")
    upload = form.get("file")
    fmt = str(form.get("response_format") or "json")
    if upload is None or isinstance(upload, str):
        return _refused(server, 400, "the form needs a 'file' part (the audio)", "missing_file", "file")
    if fmt not in FORMATS:
        return _refused(server, 400, f"response_format {fmt!r}: one of {', '.join(FORMATS)}", "invalid_format",
                        "response_format")
    model = str(form.get("model") or server.model_name)
    if mistral.is_mistral_form(form):  # an app keeps the hosted model's name: the one served answers
        model = server.model_name
    if model not in server.model_names:
        return _refused(server, 404, f"model {model!r} is not served here; this server serves "
                                     f"{server.model_name!r}", "model_not_found", "model")
    try:
        options = _options(form)
    except codec.BadEvent as exc:
        return _refused(server, 400, str(exc), exc.code, "keyterms")
    try:
        audio = await asyncio.to_thread(_decode, await upload.read(), upload.filename or "upload")
    except AudioError as exc:
        return _refused(server, 400, str(exc), "invalid_audio", "file")
    try:
        queue: asyncio.Queue = asyncio.Queue()
        mail = server.mailbox()
        stream = server.scheduler.open(lambda m: mail.put(queue.put_nowait, m), options=options)
    except Full as exc:
        return _refused(server, 503, str(exc), "server_full")
    server.metrics.sessions.labels("transcriptions").inc()
    stream.push(audio)
    stream.end()
    if str(form.get("stream") or "false").lower() == "true":
        shape = (mistral.RestEvents(model, form.get("language"), seconds(len(audio)))
                 if mistral.is_mistral_form(form) else OpenAIEvents())
        events = _events(stream, queue, shape)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    try:
        events, failed = await _collect(queue)
    finally:
        stream.close()  # its row is free at the scheduler's next cycle
    if failed is not None:
        return problem(500, failed.message, failed.code)
    if mistral.is_mistral_form(form):
        text = "".join(e.text for e in events).strip()
        return JSONResponse(mistral.rest_done(model, text, form.get("language"), seconds(len(audio))))
    return _render(events, fmt, seconds(len(audio)), model, str(form.get("language") or ""))


def _options(form) -> dict:
    """The engine options a form asks for: its keyterms (codec.BadEvent if they are wrong)."""
    phrases = [str(v) for v in form.getlist("keyterms") + form.getlist("keyterms[]") + form.getlist("context_bias")]
    if not phrases:
        return {}
    bias = form.get("keyterm_bias")
    try:
        bias = KEYTERM_BIAS if bias is None else float(str(bias))
    except ValueError:
        raise codec.BadEvent("keyterm_bias: a number from 0 to 20", "invalid_keyterms") from None
    return {"keyterms": codec.keyterms(phrases, bias)}


def _refused(server, status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    server.metrics.rejected.labels(code).inc()
    return problem(status, message, code, param)


def _decode(data: bytes, name: str):
    suffix = os.path.splitext(name)[1][:16]
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:  # libsndfile reads files; the upload is spooled already
        f.write(data)
        f.flush()
        return load_audio(f.name)


async def _collect(queue: asyncio.Queue):
    events = []
    while True:
        message = await queue.get()
        if isinstance(message, Token):
            events.append(message.event)
        elif isinstance(message, Done):
            return events, None
        elif isinstance(message, Failed):
            return events, message


class OpenAIEvents:
    """OpenAI's server-sent events for an upload: ``transcript.text.delta`` / ``.done``."""

    def delta(self, text: str) -> dict:
        return {"type": "transcript.text.delta", "delta": text}

    def done(self, text: str) -> dict:
        return {"type": "transcript.text.done", "text": text}

    def failed(self, message: Failed) -> dict:
        return {"type": "error", "error": {"message": message.message, "type": "server_error", "code": message.code,
                                           "param": None}}

    def sse(self, event: dict) -> str:
        return f"data: {json.dumps(event)}\n\n"


async def _events(stream, queue: asyncio.Queue, shape):
    """Server-sent events in ``shape``'s dialect (OpenAIEvents, mistral.RestEvents); a client that
    leaves frees the stream (finally)."""
    text = []
    try:
        while True:
            message = await queue.get()
            if isinstance(message, Token) and message.event.text:
                text.append(message.event.text)
                yield shape.sse(shape.delta(message.event.text))
            elif isinstance(message, Done):
                yield shape.sse(shape.done("".join(text).strip()))
                return
            elif isinstance(message, Failed):
                yield shape.sse(shape.failed(message))
                return
    finally:
        stream.close()  # its row is free at the scheduler's next cycle


def _render(events, fmt: str, audio_s: float, model: str, language: str) -> Response:
    events = [clamp_span(e, audio_s) for e in events]
    transcript = Transcript(source="upload", model=model, events=events,
                            metrics=TranscriptMetrics(audio_s=audio_s, n_tokens=len(events)))
    said = keyterm_counts(events)
    extra = {"keyterms": said} if said else {}
    if fmt == "json":
        return JSONResponse({"text": transcript.text, **extra})
    if fmt == "verbose_json":
        cues = events_to_cues(events, fallback_end_s=audio_s)
        segments = [{"id": i, "start": round(c.start_s, 3), "end": round(c.end_s, 3), "text": c.text}
                    for i, c in enumerate(cues)]
        return JSONResponse({"task": "transcribe", "language": language or "unknown", "duration": round(audio_s, 3),
                             "text": transcript.text, "segments": segments, **extra})
    body = transcript.text + "\n" if fmt == "text" else render_transcript(transcript, fmt)
    return PlainTextResponse(body, media_type=_MEDIA[fmt])
