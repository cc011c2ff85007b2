"""The server: Starlette routes over one engine, run by uvicorn.

Starlette rather than FastAPI: every body here is audio, a form or a WebSocket event checked by
hand for its own error wording, so FastAPI's pydantic layer would add weight and validate nothing.

    app = create_app(engine, ServeOptions(...))   # usable from Python and tests (TestClient)
    serve(engine, options)                         # uvicorn, with SIGTERM draining the sessions

Routes: ``GET /`` (the live page), ``GET /health`` (liveness), ``GET /ready`` (readiness: 503 when
full, draining or the engine is down; a balancer's check), ``GET /v1/models``, ``GET /metrics``
(Prometheus), ``POST /v1/audio/transcriptions`` (:mod:`voxcli.serve.rest`), ``WS /v1/realtime``
(:mod:`voxcli.serve.realtime`: vLLM's and OpenAI's dialects), ``WS /v1/audio/transcriptions/realtime``
(Mistral's), ``WS /v1/listen`` (Deepgram's). With an API key, ``/v1/*`` wants ``Authorization:
Bearer KEY`` or ``Token KEY`` (Deepgram's clients), compared in constant time; a browser's
WebSocket, which cannot set headers, may send it as the subprotocol ``openai-insecure-api-key.KEY``,
as OpenAI's browser clients do, or as the two subprotocols ``token``, ``KEY``, as Deepgram's do. A browser's WebSocket
from another site's page (its ``Origin`` not this server's, nor in ``serve.allow_origins``) is
refused with 403: WebSockets are not bound by CORS. REST answers CORS for the listed origins only. The page, ``/health``,
``/ready`` and ``/metrics`` are open, as vLLM's are.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from voxcli.serve import deepgram, mistral, wire
from voxcli.serve.mailbox import Mailbox
from voxcli.serve.metrics import CONTENT_TYPE, Metrics
from voxcli.serve.realtime import Connection
from voxcli.serve.rest import problem, transcriptions
from voxcli.serve.scheduler import Scheduler

KEY_PROTOCOL = "openai-insecure-api-key."


@dataclass(frozen=True)
class ServeOptions:
    """What the server needs besides the engine (``serve:`` in the config file)."""

    api_key: str | None = None
    max_sessions: int = 8
    max_upload_mb: float = 200.0
    client_queue: int = 2000
    send_timeout_s: float = 10.0
    model_name: str | None = None  # what /v1/models says (default: the engine's)
    allow_origins: tuple[str, ...] = ()  # other sites' pages that may use the server ("*": any)
    wyoming: str | None = None  # Wyoming's [HOST:]PORT beside HTTP (serve.wyoming)

    @classmethod
    def from_config(cls, cfg) -> ServeOptions:
        s = cfg.serve
        return cls(api_key=s.api_key, max_sessions=s.max_sessions, max_upload_mb=s.max_upload_mb,
                   client_queue=s.client_queue, send_timeout_s=s.send_timeout_s, model_name=cfg.model.name,
                   allow_origins=tuple(s.allow_origins), wyoming=s.wyoming)


class ServerState:
    """One per app: the engine's scheduler, the metrics, the open connections."""

    def __init__(self, engine, options: ServeOptions) -> None:
        self.engine = engine
        self.options = options
        self.metrics = Metrics()
        self.scheduler = Scheduler(engine, max_sessions=options.max_sessions, on_step=self.metrics.on_step)
        self.metrics.active.set_function(lambda: self.scheduler.active)
        self.metrics.capacity.set(options.max_sessions)
        if engine.environment().get("graphs"):  # a compiled step
            self.metrics.watch_graphs(engine.environment)
        self.model_name = options.model_name or engine.info.model
        self.model_names = {self.model_name, engine.info.model}
        self.connections: set[Connection] = set()
        self.started = int(time.time())
        self.draining = False
        self._mailboxes: dict[int, Mailbox] = {}

    def mailbox(self) -> Mailbox:
        """The running loop's mailbox (deliveries from the scheduler thread, one wake for many)."""
        loop = asyncio.get_running_loop()
        box = self._mailboxes.get(id(loop))
        if box is None or box.loop is not loop:
            box = self._mailboxes[id(loop)] = Mailbox(loop)
        return box

    def origin_allowed(self, headers) -> bool:
        """A browser says which page opened a WebSocket (``Origin``); WebSockets are not bound by
        CORS, so any site the user visits could use this server. Allowed: no Origin (a program),
        this server's own page (the Origin's host is the one asked for), or a listed origin."""
        origin = headers.get("origin")
        if origin is None:
            return True
        allowed = self.options.allow_origins
        if "*" in allowed or origin.rstrip("/") in {o.rstrip("/") for o in allowed}:
            return True
        return urlsplit(origin).netloc.lower() == headers.get("host", "").lower() != ""

    def authorized(self, headers, protocols: list[str] = ()) -> bool:
        key = self.options.api_key
        if not key:
            return True
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token"):  # Token: Deepgram's clients
            token = ""
        for i, protocol in enumerate(protocols):
            if protocol.startswith(KEY_PROTOCOL):
                token = protocol[len(KEY_PROTOCOL):]
            elif protocol == "token" and i + 1 < len(protocols):  # Deepgram's, in a browser
                token = protocols[i + 1]
        return hmac.compare_digest(token.encode(), key.encode())

    async def drain(self, timeout_s: float) -> None:
        """SIGTERM: take no more sessions, end the open ones (each flushes and gets its done
        event), let their writers send it, within ``timeout_s``."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        await asyncio.to_thread(self.scheduler.stop, timeout_s)
        while time.monotonic() < deadline:
            if all(c.gone or (c.out.empty() and not c.open_utterances) for c in self.connections):
                break
            await asyncio.sleep(0.02)
        for c in list(self.connections):
            await c.closing()


def create_app(engine, options: ServeOptions | None = None) -> Starlette:
    state = ServerState(engine, options or ServeOptions())
    origins = list(state.options.allow_origins)
    middleware = [Middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                             allow_headers=["authorization", "content-type"])] if origins else []
    app = Starlette(middleware=middleware, routes=[
        Route("/", page),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/health", health),
        Route("/ready", ready),
        Route("/metrics", metrics),
        Route("/v1/models", keyed(models)),
        Route("/v1/audio/transcriptions", keyed(transcriptions), methods=["POST"]),
        WebSocketRoute("/v1/realtime", realtime),
        WebSocketRoute("/v1/audio/transcriptions/realtime", mistral_realtime),
        WebSocketRoute("/v1/listen", deepgram_live),
    ])
    app.state.server = state
    return app


def keyed(endpoint):
    async def guarded(request: Request) -> Response:
        server = request.app.state.server
        if not server.authorized(request.headers):
            server.metrics.rejected.labels("unauthorized").inc()
            return problem(401, "a valid API key is needed: Authorization: Bearer KEY", "invalid_api_key")
        if server.draining:
            return problem(503, "the server is shutting down", "shutting_down")
        return await endpoint(request)
    return guarded


async def page(request: Request) -> Response:
    html = resources.files("voxcli.serve").joinpath("page.html").read_text(encoding="utf-8")
    return HTMLResponse(html)


def _state(server: ServerState) -> dict:
    body = {"sessions": server.scheduler.active, "max_sessions": server.scheduler.max_sessions,
            "draining": server.draining}
    if not server.scheduler.alive and not server.draining:  # stopped, and not by SIGTERM's drain: restart it
        body["error"] = server.scheduler.error or "the engine's thread has stopped"
    return body


async def health(request: Request) -> Response:
    """Liveness: 503 only when the engine's thread has stopped (a restart is due)."""
    server = request.app.state.server
    body = _state(server)
    if "error" in body:
        return JSONResponse({"status": "error", **body}, 503)
    return JSONResponse({"status": "draining" if server.draining else "ok", **body})


async def ready(request: Request) -> Response:
    """Readiness (a balancer's health check): 503 while a new session would be refused: full,
    draining, or the engine down. The same body as ``/health``."""
    server = request.app.state.server
    body = _state(server)
    if "error" in body:
        status = "error"
    elif server.draining:
        status = "draining"
    elif body["sessions"] >= body["max_sessions"]:
        status = "full"
    else:
        return JSONResponse({"status": "ready", **body})
    return JSONResponse({"status": status, **body}, 503)


async def models(request: Request) -> Response:
    server = request.app.state.server
    info = server.engine.info
    return JSONResponse({"object": "list", "data": [{
        "id": server.model_name, "object": "model", "created": server.started, "owned_by": "voxcli",
        "voxcli": {"kind": server.engine.kind, "device": info.device, "dtype": info.dtype,
                   "delay_ms": info.delay_ms}}]})


async def metrics(request: Request) -> Response:
    return Response(request.app.state.server.metrics.render(), media_type=CONTENT_TYPE)


async def realtime(ws: WebSocket) -> None:
    query = ws.query_params
    dialect = wire.OPENAI if ("intent" in query or "model" in query) else wire.VLLM
    await _session(ws, lambda connection: wire.Codec(connection, dialect))


async def mistral_realtime(ws: WebSocket) -> None:
    await _session(ws, mistral.Codec)


async def deepgram_live(ws: WebSocket) -> None:
    await _session(ws, deepgram.Codec, subprotocol="token")  # a browser's key: protocols ["token", KEY]


async def _session(ws: WebSocket, codec, subprotocol: str = "realtime") -> None:
    """``codec``: the dialect's Codec (called with the Connection); ``subprotocol``: answered when offered."""
    server = ws.app.state.server
    if not server.origin_allowed(ws.headers):
        server.metrics.rejected.labels("origin").inc()
        await ws.send_denial_response(problem(403, f"a page at {ws.headers.get('origin')} may not use this server "
                                                   f"(serve.allow_origins, --allow-origin)", "origin_not_allowed"))
        return
    protocols = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    if not server.authorized(ws.headers, protocols):
        server.metrics.rejected.labels("unauthorized").inc()
        await ws.send_denial_response(problem(401, "a valid API key is needed: Authorization: Bearer KEY",
                                              "invalid_api_key"))
        return
    if server.engine.kind != "realtime":  # as vLLM: a server for an offline model has no realtime endpoint
        await ws.send_denial_response(problem(403, f"{server.model_name} is an offline model: use "
                                                   f"POST /v1/audio/transcriptions", "not_realtime"))
        return
    if server.draining:
        await ws.send_denial_response(problem(503, "the server is shutting down", "shutting_down"))
        return
    await ws.accept(subprotocol=subprotocol if subprotocol in protocols else None)
    connection = Connection(ws, server, codec)
    server.connections.add(connection)
    try:
        await connection.run()
    finally:
        server.connections.discard(connection)
