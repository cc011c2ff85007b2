"""A Hugging Face hub stand-in on 127.0.0.1, for testing the real download code without network.

``HF_ENDPOINT=http://127.0.0.1:PORT`` points huggingface_hub at it. It serves the two things a
download uses: model metadata (``/api/models/OWNER/NAME``: the commit and file list; ``.../tree/REV``:
the listing a snapshot download reads) and files (``HEAD``/``GET /OWNER/NAME/resolve/REV/FILE``, with the commit and ETag
headers the client checks). Repositories are local directories; a repository can be made
gated (401 on every file, with the hub's ``X-Error-Code: GatedRepo``). Every request is
counted, so a test can tell that a client did not retry.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Path] = {}
        self.gated: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, body=False)

            def do_GET(self) -> None:
                hub._serve(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, repo: str, directory: Path, *, gated: bool = False) -> None:
        self.repos[repo] = Path(directory)
        if gated:
            self.gated.add(repo)

    def _serve(self, h: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return self._send(h, 404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
            files = sorted(p.name for p in self.repos[repo].iterdir() if p.is_file())
            if len(parts) >= 5 and parts[4] == "tree":  # the file listing a snapshot download reads
                tree = [{"type": "file", "path": f, "size": (self.repos[repo] / f).stat().st_size,
                         "oid": hashlib.sha1((self.repos[repo] / f).read_bytes()).hexdigest()} for f in files]
                return self._send(h, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
            info = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                    "gated": "manual" if repo in self.gated else False,
                    "siblings": [{"rfilename": f} for f in files]}
            return self._send(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            if repo not in self.repos:
                return self._send(h, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)
            if repo in self.gated:
                return self._send(h, 401, b"gated", {"X-Error-Code": "GatedRepo",
                                                     "X-Error-Message": "Access to this model is restricted."}, body)
            file = self.repos[repo] / name
            if not file.is_file():
                return self._send(h, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
            data = file.read_bytes()
            etag = hashlib.sha256(data).hexdigest()
            return self._send(h, 200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'}, body)
        self._send(h, 404, b"", {}, body)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict, body: bool) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)
