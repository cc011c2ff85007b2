"""``voxcli serve`` for tests: the real app under a real uvicorn, in a thread of this process.

    with served(engine, ServeOptions(...)) as server:
        server.url, server.ws_url, server.state (the app's ServerState), server.get("/health")

The engine is loaded once per module (a row per session); the clients are the ones users have:
voxcli's own vLLM client, the ``openai`` package, ``websockets``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import uvicorn
from vllm_server import free_port

from voxcli.serve.app import ServeOptions, create_app
from voxcli.serve.run import uvicorn_config


class Served:
    def __init__(self, engine, options: ServeOptions) -> None:
        self.app = create_app(engine, options)
        self.state = self.app.state.server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        config = uvicorn_config(self.app, options, host="127.0.0.1", port=self.port)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> "Served":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.state.scheduler.stop(5)

    def get(self, path: str, headers: dict | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def health(self) -> dict:
        status, body = self.get("/health")
        assert status == 200, body
        return json.loads(body)

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics (0 if absent)."""
        _, body = self.get("/metrics")
        for line in body.splitlines():
            if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
                return float(line.split()[-1])
        return 0.0

    def wait_idle(self, timeout_s: float = 20.0) -> None:
        """Until no stream is open on the engine (a dropped client's row given back)."""
        deadline = time.monotonic() + timeout_s
        while self.state.scheduler.active or self.metric("voxcli_sessions_active"):
            assert time.monotonic() < deadline, f"still {self.state.scheduler.active} streams open"
            time.sleep(0.05)


@contextlib.contextmanager
def served(engine, options: ServeOptions | None = None):
    server = Served(engine, options or ServeOptions()).start()
    try:
        yield server
    finally:
        server.stop()


class NeverReads:
    """A WebSocket client that sends and never reads a byte: websockets' sans-I/O protocol over a
    raw socket with a small receive window (a library client would keep reading in its own thread).
    ``send`` takes a text event or binary audio."""

    def __init__(self, url: str, port: int) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(60)
        self.protocol = ClientProtocol(parse_uri(url))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)
        self.protocol.receive_data(response)

    def send(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.protocol.send_binary(message)
        else:
            self.protocol.send_text(message.encode())
        self._flush()

    def flood(self, messages) -> None:
        """Send ``messages`` in a thread of its own until they run out, ``close()`` or the server
        closes the connection (dropped)."""
        self._stop = threading.Event()

        def send_all() -> None:
            try:
                for message in messages:
                    if self._stop.is_set():
                        return
                    self.send(message)
            except OSError:
                return  # dropped: the server closed the connection

        self._flooder = threading.Thread(target=send_all, daemon=True)
        self._flooder.start()

    def close(self) -> None:
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
        self.sock.close()
        if getattr(self, "_flooder", None) is not None:
            self._flooder.join(10)

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.protocol.data_to_send()))
