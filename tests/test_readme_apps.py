"""README's "Use voxcli from your app": every Python snippet there, run as written against a real
``voxcli serve --wyoming`` process (the tiny model). Only the address, the Wyoming port, the model
path and the audio file are replaced. Each prints the text the local engine gives for the file,
but Deepgram's: it prints a final result per end of speech (the endpointer cuts the file at its
pauses, and each piece is transcribed on its own), so its text is checked for being there only."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from voxcli.audio.decode import load_audio
from voxcli.testing.served import ServeProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.wav"
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("readme-apps")]


def snippets() -> dict[str, str]:
    """The section's ```python blocks, named by the client each imports."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use voxcli from your app", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    names = {}
    for block in blocks:
        name = next(n for n in ("openai", "mistralai", "deepgram", "wyoming") if f"from {n}" in block)
        names[name] = block
    return names


@pytest.fixture(scope="module")
def server(realtime_dir, tmp_path_factory):
    port = free_port()
    with ServeProcess(realtime_dir, max_sessions=4, log=tmp_path_factory.mktemp("apps") / "serve.log",
                      args=("--model-device", "cpu", "--threads", "1", "--wyoming", f"127.0.0.1:{port}")) as s:
        s.wyoming_port = port
        yield s


def test_the_section_has_a_snippet_per_client():
    assert set(snippets()) == {"openai", "mistralai", "deepgram", "wyoming"}


@pytest.mark.parametrize("client", ["openai", "mistralai", "deepgram", "wyoming"])
def test_each_readme_snippet_runs_and_prints_the_text(server, realtime_dir, realtime_engine, tmp_path, client):
    code = snippets()[client]
    code = (code.replace("http://127.0.0.1:8000", server.url).replace("ws://127.0.0.1:8000", server.ws_url)
            .replace("10300", str(server.wyoming_port))
            .replace('"mistralai/Voxtral-Mini-4B-Realtime-2602"', repr(str(realtime_dir)))
            .replace('"hello.wav"', repr(str(HELLO))))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    local = "".join(e.text for e in realtime_engine.transcribe(load_audio(HELLO))).strip()
    if client == "deepgram":
        assert run.stdout.split()
    else:
        assert run.stdout.strip() == local != ""
