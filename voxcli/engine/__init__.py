"""The engine layer: a model, local or behind a server, turned into token events.

Nothing here imports ``live``, ``output``, ``measure`` or ``cli`` (tests/test_layers.py checks);
callers see the contract (:mod:`voxcli.engine.contract`), never which implementation is behind it.

- ``local``: transformers on this machine, split by job: ``loading``, ``base``, ``realtime``,
  ``session``, ``window`` (the session's audio), ``offline``, ``segments``; the two Realtime steps
  behind one ``run(jobs)``: ``static`` (with ``batching``, ``compiling``, ``tables``) and ``hfstep``;
  ``compat``: everything read from transformers
- ``remote``: a vLLM server behind the same contract (``server``: reaching it, ``connect``: an
  engine from a URL), ``reconnect``: its session that outlives the server; ``opener``: the
  configuration's engine, local or remote (``open_engine``)
- ``hub``: checkpoints; ``memory``: will it fit; ``timing``: the critical path, the environment
"""

from voxcli.engine.contract import BatchingEngine, Engine, EngineInfo, RealtimeEngine, Session, WaitingSession
from voxcli.engine.local import load_engine
from voxcli.engine.opener import open_engine

__all__ = ["BatchingEngine", "Engine", "EngineInfo", "RealtimeEngine", "Session", "WaitingSession", "load_engine", "open_engine"]
