"""``serve(engine, options, host=..., port=...)``: uvicorn around :func:`voxcli.serve.app.create_app`.

SIGTERM or Ctrl-C: new sessions are refused (503), every open session flushes its last words and
gets its done event, then uvicorn stops; all within ``DRAIN_S`` plus uvicorn's own
``GRACEFUL_S``. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from voxcli.serve.app import ServeOptions, create_app

DRAIN_S = 10.0
GRACEFUL_S = 3.0
MAX_FRAME_BYTES = 16 * 1024 * 1024  # a WebSocket message larger than this closes the connection (1009)
log = logging.getLogger(__name__)


def uvicorn_config(app, options: ServeOptions, **kwargs) -> uvicorn.Config:
    """uvicorn as voxcli serves: WebSocket frames up to ``MAX_FRAME_BYTES``, a ping every
    ``send_timeout_s`` that must come back within as long (a client that reads nothing is dropped),
    no per-message deflate (base64 PCM and short JSON events barely compress, and inflating every
    append was 4 % of a loaded server's CPU: bench/RESULTS.md, "Hundreds of streams")."""
    return uvicorn.Config(app, ws="websockets-sansio", ws_max_size=MAX_FRAME_BYTES, ws_per_message_deflate=False,
                          ws_ping_interval=options.send_timeout_s, ws_ping_timeout=options.send_timeout_s,
                          log_level="warning", timeout_graceful_shutdown=GRACEFUL_S, lifespan="off",
                          access_log=False, **kwargs)


class _Server(uvicorn.Server):
    """uvicorn's server, whose first SIGTERM drains the sessions before uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, state) -> None:
        super().__init__(config)
        self.state = state
        self._draining: asyncio.Task | None = None
        self._wyoming = None

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        address = self.state.options.wyoming
        if self.started and address:  # Wyoming's TCP server in the same loop, over the same scheduler
            from voxcli.serve import wyoming

            try:
                self._wyoming = await wyoming.start(self.state, address)
            except OSError as exc:
                log.error("cannot serve Wyoming on %s: %s", address, exc.strerror or exc)
                self.should_exit = True

    async def shutdown(self, sockets=None) -> None:
        if self._wyoming is not None:
            await self._wyoming.stop()
        await super().shutdown(sockets=sockets)

    def handle_exit(self, sig, frame) -> None:
        if self._draining is not None or self.should_exit:
            return super().handle_exit(sig, frame)  # a second signal: now
        loop = asyncio.get_running_loop()
        self._draining = loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self.state.drain(DRAIN_S), DRAIN_S + 1.0)
        except Exception:  # noqa: BLE001 - stopping is what matters now
            log.exception("draining the sessions failed")
        self.should_exit = True


def serve(engine, options: ServeOptions, *, host: str = "127.0.0.1", port: int = 8000,
          ssl_certfile: str | None = None, ssl_keyfile: str | None = None, on_ready=None) -> None:
    app = create_app(engine, options)
    config = uvicorn_config(app, options, host=host, port=port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    server = _Server(config, app.state.server)
    if on_ready is not None:
        original = server.startup

        async def startup(sockets=None) -> None:
            await original(sockets=sockets)
            if server.started:
                on_ready()
        server.startup = startup
    server.run()
