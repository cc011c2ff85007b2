"""Replicas behind a real balancer: deploy/haproxy.cfg (Debian's haproxy) in front of three
`voxcli serve` processes on loopback, reached with voxcli's own client (``connect_engine``, as
``voxcli listen`` with ``model.server`` runs it).

One replica is full: HAProxy's check on /ready takes it out, and no new session goes there.
Twelve paced sessions open through HAProxy; one replica is killed (SIGKILL) mid-session. Every
session finishes; those on the dead replica reconnect through HAProxy to another and replay from
where the dead one last answered, less the delay, so no audio is missing, and their reconnect
rows say so; the others never notice.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from websockets.sync.client import connect

from voxcli.audio.decode import load_audio
from voxcli.events import Reconnect
from voxcli.testing.served import ServeProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("deploy"),
              pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy (bash .ci/setup.sh --test)")]
MAX_SESSIONS = 8
TOKEN_S = 0.08


class HAProxy:
    """deploy/haproxy.cfg with this test's replicas and port, and an admin socket to read its view."""

    def __init__(self, tmp: Path, replicas: list[ServeProcess]) -> None:
        text = (ROOT / "deploy" / "haproxy.cfg").read_text()
        servers = "".join(f"    server r{i} 127.0.0.1:{r.port}\n" for i, r in enumerate(replicas))
        text, n = re.subn(r"(?ms)^    # One line per replica.*?# END\n", servers, text)
        assert n == 1, "deploy/haproxy.cfg lost its REPLICAS ... END block"
        self.port = free_port()
        self.sock = tmp / "haproxy.sock"
        text = text.replace("bind :8000", f"bind 127.0.0.1:{self.port}")
        text = text.replace("global\n", f"global\n    stats socket {self.sock} level admin\n", 1)
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(text)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(["haproxy", "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not self.sock.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.proc.stderr.read()
            time.sleep(0.05)

    def up(self) -> dict[str, bool]:
        """Each server's state as HAProxy sees it (its checks)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.sock))
            s.sendall(b"show servers state replicas\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        rows = [line.split() for line in out.decode().splitlines()[2:] if line.strip()]
        return {row[3]: row[5] == "2" for row in rows}

    def wait(self, want: dict[str, bool], timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while any(self.up().get(k) != v for k, v in want.items()):
            assert time.monotonic() < deadline, f"HAProxy's view {self.up()} never became {want}"
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def sessions(replica: ServeProcess) -> int:
    return replica.health()[1]["sessions"]


def hold(replica: ServeProcess, n: int) -> list:
    """``n`` sessions opened straight to ``replica`` (not through HAProxy): it is full."""
    held = []
    for _ in range(n):
        ws = connect(replica.ws_url + "/v1/realtime", open_timeout=10)
        json.loads(ws.recv(10))
        ws.send(json.dumps({"type": "session.update"}))  # the session's stream opens: a row taken
        held.append(ws)
    return held


def client(url: str, audio: np.ndarray, out: dict, started: threading.Event) -> None:
    """voxcli's own client through the balancer: one engine per client (its own outage), audio
    pushed at real speed in 80 ms blocks, then finished."""
    from voxcli.engine.connect import connect_engine

    try:
        engine = connect_engine(url, timeout_s=10, reconnect_s=60)
        session = engine.session()
        started.set()
        t0 = time.perf_counter()
        for k, i in enumerate(range(0, len(audio), 1280)):
            time.sleep(max(0.0, t0 + k * TOKEN_S - time.perf_counter()))
            session.push(audio[i:i + 1280])
            out["events"] += list(session.steps())
            out["incidents"] += session.incidents()
        out["events"] += list(session.finish())
        out["incidents"] += session.incidents()
        out["delay_s"] = engine.info.delay_ms / 1000
    except Exception as exc:  # noqa: BLE001 - the test says which session failed, and how
        out["error"] = f"{type(exc).__name__}: {exc}"
        started.set()


def test_a_replica_killed_mid_session_loses_nothing_and_a_full_one_gets_no_sessions(realtime_dir, tmp_path):
    with ThreadPoolExecutor(3) as pool:
        replicas = list(pool.map(lambda i: ServeProcess(realtime_dir, max_sessions=MAX_SESSIONS, log=tmp_path / f"r{i}.log",
                                                        args=("--model-device", "cpu", "--threads", "1")), range(3)))
    lb = None
    try:
        lb = HAProxy(tmp_path, replicas)
        lb.wait({"r0": True, "r1": True, "r2": True})
        # r2 is full: its own /ready says 503, HAProxy's check takes it out.
        held = hold(replicas[2], MAX_SESSIONS)
        assert replicas[2].health("/ready")[1]["status"] == "full"
        lb.wait({"r2": False})

        audio = load_audio(ROOT / "examples" / "long.wav")[: 8 * 16000]
        outs = [{"events": [], "incidents": [], "error": None} for _ in range(12)]
        threads = []
        for out in outs:
            started = threading.Event()
            threads.append(threading.Thread(target=client, args=(lb.url, audio, out, started), daemon=True))
            threads[-1].start()
            assert started.wait(30)
        deadline = time.monotonic() + 20
        while sessions(replicas[0]) + sessions(replicas[1]) < 12:
            assert time.monotonic() < deadline, [sessions(r) for r in replicas]
            time.sleep(0.05)
        assert sessions(replicas[2]) == MAX_SESSIONS  # the full replica got none of the twelve

        for ws in held:  # r2 has room again: back in HAProxy's pool
            ws.close()
        lb.wait({"r2": True})
        victim = max(replicas[:2], key=sessions)
        time.sleep(1.0)  # mid-session: a second or two of each session's audio answered
        lost = sessions(victim)
        victim.kill()
        for t in threads:
            t.join(120)
        assert lost >= 1

        assert [o["error"] for o in outs] == [None] * 12
        reconnected = [o for o in outs if any(isinstance(i, Reconnect) for i in o["incidents"])]
        assert len(reconnected) == lost  # exactly the dead replica's sessions; the others never noticed
        clip_s = len(audio) / 16000
        for o in outs:
            assert "".join(e.text for e in o["events"]).strip()  # every session finished with its text
        for o in reconnected:
            (row,) = [i for i in o["incidents"] if isinstance(i, Reconnect)]
            # The tokens of each connection (a connection's index counts from 0): the dead one's
            # answered up to n_dead tokens, the replay started at replay_from_s, the new one went on.
            tokens = [e for e in o["events"] if e.token_id >= 0]
            cut = next(k for k in range(1, len(tokens)) if tokens[k].index < tokens[k - 1].index)
            answered_s, after = cut * TOKEN_S, len(tokens) - cut
            assert row.replay_from_s <= answered_s + 1e-6  # nothing between the dead one's last answer and the replay
            assert row.replay_from_s >= answered_s - o["delay_s"] - TOKEN_S  # back the delay, no further
            assert row.replay_from_s + after * TOKEN_S >= clip_s  # the new replica heard the rest, to the end
            assert row.lost_at_s <= clip_s and row.replayed_s > 0
        survivors = [r for r in replicas if r is not victim]
        assert all(r.health("/ready")[0] == 200 for r in survivors)
    finally:
        if lb is not None:
            lb.stop()
        for r in replicas:
            r.stop()
