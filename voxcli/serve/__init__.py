"""The server layer: the local engine for apps and browsers (``voxcli serve``).

Above ``engine``, ``audio`` and ``output``; below ``cli`` (tests/test_layers.py checks).

- ``scheduler``: one thread owns the engine and steps every session as a row of one forward
- ``wire``: the realtime dialects (vLLM's, OpenAI's transcription sessions) as JSON events
- ``realtime``: one WebSocket client; ``rest``: OpenAI's ``/v1/audio/transcriptions``
- ``metrics``: Prometheus; ``app``: the Starlette routes; ``run``: uvicorn, SIGTERM draining
- ``page.html``: the live page served at ``/``
"""

from voxcli.serve.app import ServeOptions, create_app
from voxcli.serve.run import serve

__all__ = ["ServeOptions", "create_app", "serve"]
