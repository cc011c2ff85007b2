"""Wire protocols for talking to a vLLM server with the standard library only.

voxcli's remote engine must run without torch or extra dependencies, so this module holds a
minimal RFC 6455 WebSocket client (text frames, fragmentation, ping/pong, close; no TLS or
extensions) for ``/v1/realtime``, and multipart/SSE helpers for ``/v1/audio/transcriptions``.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import struct
import threading
import time
import uuid
from urllib.parse import urlsplit

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketClosed(ConnectionError):
    def __init__(self, code: int | None, reason: str):
        super().__init__(f"WebSocket closed by peer (code {code}): {reason}")
        self.code, self.reason = code, reason


class WebSocket:
    """Blocking client over one TCP socket. ``url`` is ws://host:port/path (no TLS)."""

    def __init__(self, url: str, timeout_s: float = 30.0):
        parts = urlsplit(url)
        if parts.scheme != "ws":
            raise ValueError(f"only ws:// URLs are supported, got {url!r}")
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        self._send_lock = threading.Lock()  # one reader thread and one writer may share it
        self.closed = False
        key = base64.b64encode(os.urandom(16)).decode()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = (f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status, *header_lines = head.split("\r\n")
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in header_lines if line)}
        if status.split(" ")[1:2] != ["101"]:
            self.sock.close()
            raise ConnectionError(f"WebSocket handshake refused: {status}")
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            self.sock.close()
            raise ConnectionError("WebSocket handshake: bad Sec-WebSocket-Accept")

    # -- raw I/O --
    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            self._fill()
        head, _, self._buf = self._buf.partition(marker)
        return head

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            raise WebSocketClosed(None, "connection lost")
        self._buf += data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)  # clients must mask every frame
        if n:
            key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
            payload = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")
        with self._send_lock:
            self.sock.sendall(header + mask + payload)

    def _recv_frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = self._read_exact(2)
        fin, opcode, masked, n = bool(b0 & 0x80), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read_exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read_exact(8))
        mask = self._read_exact(4) if masked else b""  # servers do not mask, but be lenient
        payload = self._read_exact(n)
        if masked and n:
            key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
            payload = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")
        return fin, opcode, payload

    # -- messages --
    def send_text(self, text: str) -> None:
        self._send_frame(OP_TEXT, text.encode())

    def send_json(self, obj: dict) -> None:
        self.send_text(json.dumps(obj))

    def recv(self, timeout_s: float | None = 30.0) -> str | bytes:
        """The next whole message (text as str, binary as bytes); answers pings; raises
        WebSocketClosed on a close frame (after answering it) and TimeoutError on timeout.
        The timeout applies to each socket read (and to sends meanwhile: one socket)."""
        self.sock.settimeout(timeout_s)
        parts: list[bytes] = []
        message_op = None
        while True:
            fin, opcode, payload = self._recv_frame()
            if opcode == OP_PING:
                self._send_frame(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                if not self.closed:
                    self.closed = True
                    try:
                        self._send_frame(OP_CLOSE, payload[:2])
                    except OSError:
                        pass
                raise WebSocketClosed(code, payload[2:].decode(errors="replace"))
            if opcode in (OP_TEXT, OP_BINARY):
                message_op, parts = opcode, [payload]
            elif opcode == OP_CONT and message_op is not None:
                parts.append(payload)
            else:
                raise ConnectionError(f"unexpected WebSocket opcode {opcode:#x}")
            if fin:
                data = b"".join(parts)
                return data.decode() if message_op == OP_TEXT else data

    def recv_json(self, timeout_s: float | None = 30.0) -> dict:
        return json.loads(self.recv(timeout_s))

    def close(self, code: int = 1000) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._send_frame(OP_CLOSE, struct.pack("!H", code))
            except OSError:
                pass
        self.sock.close()

    def __enter__(self) -> WebSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def multipart(fields: dict[str, str],  # noqa: D103 - a form body and its Content-Type
              files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = []
    for name, value in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                   f"{value}\r\n".encode())
    for name, (filename, data, content_type) in files.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                   f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
                   + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def sse_data(response: http.client.HTTPResponse):
    """Yield (perf_counter when it arrived, payload) for each ``data:`` line of an SSE stream."""
    while line := response.readline():
        line = line.rstrip(b"\r\n")
        if line.startswith(b"data:"):
            yield time.perf_counter(), line[5:].strip().decode()
