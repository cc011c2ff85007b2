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

The work is split by job, and this module is where the local engine's parts are found:

- :mod:`voxcli.engine.loading`: device, dtype, kind, the memory check, ``load_engine``
- :mod:`voxcli.engine.base`: what both kinds share (detokenizer, keyterm walks, warm-up)
- :mod:`voxcli.engine.realtime`, :mod:`voxcli.engine.session`, :mod:`voxcli.engine.window`: the
  Realtime engine, its session, the session's audio window (on a ``Tape``)
- :mod:`voxcli.engine.static`, :mod:`voxcli.engine.hfstep`, :mod:`voxcli.engine.batching`: the two
  steps behind one ``run(jobs)`` face, and who runs a batched forward
- :mod:`voxcli.engine.offline`: the offline engine and segmenting

None of it knows about YAML, flags or the terminal; errors a user can cause are raised as
:class:`voxcli.errors.ModelError` / ``ValueError``.
"""

from __future__ import annotations

from voxcli.engine.base import DEFAULT, Detokenizer, LocalEngine
from voxcli.engine.contract import EngineInfo
from voxcli.engine.loading import detect_kind, load_engine, resolve_device, resolve_dtype, wants_compile
from voxcli.engine.offline import OfflineEngine
from voxcli.engine.realtime import RealtimeEngine
from voxcli.engine.segments import transcribe_segments
from voxcli.engine.session import RealtimeSession

__all__ = ["DEFAULT", "Detokenizer", "EngineInfo", "LocalEngine", "OfflineEngine", "RealtimeEngine",
           "RealtimeSession", "detect_kind", "load_engine", "resolve_device", "resolve_dtype", "transcribe_segments",
           "wants_compile"]
