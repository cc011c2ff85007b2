"""How voxcli talks to a server (vLLM, or ``voxcli serve``): where it is, TLS, the key, bounded
connects and reads, what its refusals mean, and audio as the server takes it (PCM16, WAV).

``https://`` servers are reached over TLS (``wss://`` for the WebSocket) with certificates checked
against the system's CAs, or the bundle named by ``SSL_CERT_FILE``. An API key goes out as
``Authorization: Bearer`` and nowhere else. Every network step is bounded by ``timeout_s``."""

from __future__ import annotations

import base64
import io
import ssl
import threading
import wave
from urllib.parse import urlsplit

import httpx2
import numpy as np
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from voxcli.audio.pcm import to_pcm16
from voxcli.config import API_KEY_ENV
from voxcli.errors import ServerError, first_line, setting
from voxcli.units import SAMPLE_RATE

TIMEOUT_S = 30.0
KEY = setting("model.api_key")


class Server:
    """Where the server is and how to talk to it: URL, TLS context, key, bounds."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = TIMEOUT_S) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
            raise ServerError(f"{setting('model.server')} {url!r}: expected http://HOST:PORT or https://HOST:PORT",
                              url=url)
        self.tls = parts.scheme in ("https", "wss")
        port = parts.port or (443 if self.tls else 80)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        self.url = f"{'https' if self.tls else 'http'}://{host}:{port}"
        self.ws_url = f"{'wss' if self.tls else 'ws'}://{host}:{port}"
        # One context for both clients: the system's CAs, or SSL_CERT_FILE / SSL_CERT_DIR.
        self.ssl = ssl.create_default_context() if self.tls else None
        self.keyed = bool(api_key)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        self.http = httpx2.Client(base_url=self.url, headers=self.headers, verify=self.ssl or False,
                                  timeout=httpx2.Timeout(timeout_s))

    def __repr__(self) -> str:  # never the key
        return f"_Server({self.url!r}, keyed={self.keyed})"

    # -- errors, worded once for both clients --

    def refused(self, status: int, what: str, *, websocket: bool = False) -> ServerError:
        # 401 is what vLLM's --api-key answers, on HTTP and WebSocket alike; a proxy in front may
        # say 403. On the WebSocket a 403 means no realtime endpoint (an offline model).
        if status == 401 or (status == 403 and not websocket):
            if self.keyed:
                return ServerError(f"the vLLM server at {self.url} refused the API key (HTTP {status}); "
                                   f"check {KEY} or {API_KEY_ENV}", url=self.url, status=status)
            return ServerError(f"the vLLM server at {self.url} wants an API key (HTTP {status}); pass it as "
                               f"{KEY} or set {API_KEY_ENV}", url=self.url, status=status)
        return ServerError(f"{what} (HTTP {status})", url=self.url, status=status)

    def unreachable(self, exc: BaseException, doing: str = "reach") -> ServerError:
        cert = certificate_error(exc)
        if cert is not None:
            return ServerError(f"cannot verify the TLS certificate of {self.url} ({cert}); if a private CA "
                               f"signed it, set SSL_CERT_FILE to that CA's certificate", url=self.url)
        if isinstance(exc, (TimeoutError, httpx2.TimeoutException)):
            return ServerError(f"the vLLM server at {self.url} did not answer within {self.timeout_s:.0f} s "
                               f"(while trying to {doing} it)", url=self.url)
        return ServerError(f"cannot {doing} the vLLM server at {self.url} ({first_line(exc)}); is it running?",
                           url=self.url)

    # -- HTTP --

    def cycle_counters(self) -> dict | None:
        """``voxcli serve``'s own split of its scheduler's cycles (:func:`cycle_counters`), read from
        its ``/metrics`` now; None from a server that does not say it (vLLM), or cannot be read."""
        try:
            response = self.http.get("/metrics")
        except httpx2.HTTPError:
            return None
        return cycle_counters(parse_metrics(response.text)) if response.status_code == 200 else None

    def get_json(self, path: str) -> dict:
        try:
            response = self.http.get(path)
        except httpx2.HTTPError as exc:
            raise self.unreachable(exc) from None
        if response.status_code != 200:
            raise self.refused(response.status_code, f"{self.url}{path} answered")
        try:
            return response.json()
        except ValueError:
            raise ServerError(f"{self.url}{path} did not answer JSON; is it a vLLM server?", url=self.url) from None

    # -- WebSocket --

    def websocket(self, path: str) -> ClientConnection:
        """An open WebSocket whose writes are bounded too (see module docstring)."""
        try:
            ws = bounded(lambda: connect(
                self.ws_url + path, ssl=self.ssl, additional_headers=self.headers, open_timeout=self.timeout_s,
                close_timeout=2.0, ping_interval=self.timeout_s / 2, ping_timeout=self.timeout_s,
                max_size=2 ** 22, proxy=None, legacy=True), self.timeout_s + 2.0)
        except InvalidStatus as exc:
            raise self.refused(exc.response.status_code, f"{self.ws_url}{path} refused the WebSocket",
                               websocket=True) from None
        except (InvalidHandshake, InvalidURI, OSError, TimeoutError) as exc:
            raise self.unreachable(exc, "open a realtime session on") from None
        # websockets' own reader thread waits in select() before every recv, so a socket timeout
        # bounds only our sendall(): a server that stops reading fails the write, not the caller.
        ws.socket.settimeout(self.timeout_s)
        return ws


def bounded(call, seconds: float):
    """``call()`` in a thread of its own, given up on after ``seconds``: websockets' own opening
    timeout can be outlived when a TLS read that started before it never returns (its clean-up
    waits for that read), and no call of ours may hang."""
    done: list = []

    def run() -> None:
        try:
            done.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            done.append((False, exc))

    thread = threading.Thread(target=run, name="voxcli-connect", daemon=True)
    thread.start()
    thread.join(seconds)
    if not done:
        raise TimeoutError(f"no answer within {seconds:.0f} s")
    ok, value = done[0]
    if not ok:
        raise value
    return value


def certificate_error(exc: BaseException) -> str | None:
    """The reason, when ``exc`` (or what caused it) is a failed certificate check."""
    seen = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or first_line(seen)
        if "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return first_line(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def pcm16_base64(samples: np.ndarray) -> str:
    return base64.b64encode(to_pcm16(samples)).decode()


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(to_pcm16(samples))
    return buffer.getvalue()


def http_error(url: str, response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.reason_phrase
    return f"vLLM server {url} answered: {message}"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus' text format as ``{"name{labels}": value}`` (comments left out)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


CYCLE_METRICS = {'voxcli_cycle_seconds_total{part="forward"}': "forward_s",
                 'voxcli_cycle_seconds_total{part="host"}': "host_s", "voxcli_cycle_rows_total": "rows",
                 "voxcli_cycles_total": "cycles"}


def cycle_counters(metrics: dict[str, float]) -> dict | None:
    """``voxcli serve``'s scheduler counters since it started, from its parsed ``/metrics``:
    forward and host seconds, rows stepped, cycles (None where a server does not say them)."""
    out = {short: metrics[name] for name, short in CYCLE_METRICS.items() if name in metrics}
    return out if len(out) == len(CYCLE_METRICS) else None
