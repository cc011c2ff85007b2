"""A TCP relay in front of a server that a test can cut: a network outage on demand.

    relay = Relay(server.host, server.port)    # relay.url points at the server through it
    relay.cut()        # every connection through it dropped, new ones refused (the server is gone)
    relay.restore()    # the same port accepts and relays again (the server is back)
    relay.close()

An outage of exactly the length a test needs, on the server the other tests share, in place of
killing a server and waiting 30-60 s for a fresh one to start. Written by hand: it is 60 lines of
sockets, and the relays on PyPI (or toxiproxy, a Go service) bring more than they save here.
"""

from __future__ import annotations

import socket
import threading

from vllm_server import free_port


class Relay:
    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0  # connections relayed, over the relay's life
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        """Accept on the relay's port again (a no-op while it is up)."""
        with self._lock:
            if self._listener is not None:
                return
            self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: rebinds at once
            listener = self._listener
        threading.Thread(target=self._accept, args=(listener,), name="relay-accept", daemon=True).start()

    def cut(self) -> None:
        """Drop every connection through the relay and refuse new ones, until ``restore()``."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        for sock in ([listener] if listener else []) + sockets:
            _shut(sock)

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut(): the listener was shut down
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                _shut(client)
                continue
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    _shut(client)
                    _shut(upstream)
                    return
                self._sockets += [client, upstream]
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(src, dst), name="relay-pipe", daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _shut(src)
        _shut(dst)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept() or recv() on it
    except OSError:
        pass
    sock.close()
