"""The server layer: the local engine for apps and browsers (``voxcli serve``).

Above ``engine``, ``audio`` and ``output``; below ``cli`` (tests/test_layers.py checks).

- ``scheduler``: one thread owns the engine and steps every session as a row of one forward
- ``codec``: what a dialect is (a thin codec over one session) and what every dialect shares
- the dialects, a module each: ``wire`` (vLLM's and OpenAI's realtime events), ``mistral``
  (Mistral's realtime and REST), ``deepgram`` (Deepgram's live ``/v1/listen``), ``wyoming``
  (Home Assistant's TCP protocol)
- ``realtime``: one WebSocket client, whatever its dialect; ``rest``: ``/v1/audio/transcriptions``
- ``metrics``: Prometheus; ``app``: the Starlette routes; ``run``: uvicorn, SIGTERM draining
- ``page.html``: the live page served at ``/``
"""

from voxcli.serve.app import ServeOptions, create_app
from voxcli.serve.run import serve

__all__ = ["ServeOptions", "create_app", "serve"]
