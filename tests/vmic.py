"""A virtual microphone for tests: a real ALSA capture device whose samples come from a file.

A file-backed ALSA capture device (docs/design.md, "Testing without a GPU or weights"). Tests
exercise the stack a user has
(sounddevice -> PortAudio -> alsa-lib -> device), with no sound card, daemon or root::

    from vmic import vmic, no_mic          # the fixtures

    def test_x(vmic):
        with MicSource(vmic.device_name, max_seconds=2) as src: ...
        subprocess.run([..., "--device", vmic.device_name], env={**os.environ, **vmic.env})

What the device does (learnt the hard way, see the recipe too):
- It is NOT paced: it delivers about 1000x faster than real time. Bound captures with
  ``max_seconds`` (and a queue at least that long if nothing may be dropped).
- Samples come back bit-exact only when opened as float32 / 16000 Hz / 1 channel (``plug``
  converts anything else, and the file plugin then drops frames in callback mode).
- After ``speech`` the raw file holds zeros (sparse padding), so the device delivers silence.
- The file is read from ``$VMIC_RAW`` at each stream open, so a test may point it elsewhere
  (``write_raw``) and a new stream starts from the file's beginning.
- ``ALSA_CONFIG_PATH`` must start with alsa.conf: a config without it makes PortAudio 19.6
  abort the whole process in Pa_Initialize (assertion ``devIdx < numDeviceNames``).
- PortAudio reads the device list only when it initialises: ``reinit_portaudio()`` after
  changing the environment, with no stream open.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from speech import make_speech

__all__ = ["VirtualMic", "vmic", "no_mic", "reinit_portaudio", "write_raw", "ALSA_CONF"]

ALSA_CONF = "/usr/share/alsa/alsa.conf"
DEVICE_NAME = "vmic"
SAMPLE_RATE = 16000
# Sparse: ~70 minutes of zeros at 16 kHz float32 that take no disk space.
PAD_BYTES = 256 * 1024 * 1024
SPEECH_TEXT = "The quick brown fox jumps over the lazy dog. Voxtral is listening."

_VMIC_CONF = """\
# voxcli test device: capture reads float32 mono 16 kHz samples from $VMIC_RAW.
pcm.{name} {{
    type plug
    slave {{
        pcm {{
            type file
            slave.pcm "null"
            file "/dev/null"
            format "raw"
            infile {{
                @func getenv
                vars [ VMIC_RAW ]
                default "{default_raw}"
            }}
        }}
        format FLOAT_LE
        rate {rate}
        channels 1
    }}
    hint {{
        show on
        description "voxcli virtual microphone (file-backed)"
    }}
}}
"""

# No device of our own: with the stock alsa.conf and no sound card, PortAudio lists nothing.
_NO_MIC_CONF = "# voxcli test: no capture devices\n"


@dataclass
class VirtualMic:
    device_name: str
    speech: np.ndarray  # float32 samples as the raw file holds them, before the zero padding
    raw_path: Path
    conf_path: Path
    env: dict[str, str] = field(default_factory=dict)  # what a subprocess needs
    sample_rate: int = SAMPLE_RATE


@dataclass
class NoMic:
    conf_path: Path
    env: dict[str, str] = field(default_factory=dict)


def write_raw(
    path: str | os.PathLike[str], samples: np.ndarray, pad_bytes: int = PAD_BYTES
) -> Path:
    """Write samples as the device's raw float32 file, zero-padded (sparsely) to ``pad_bytes``."""
    path = Path(path)
    data = np.ascontiguousarray(samples, dtype="<f4")
    data.tofile(path)
    if pad_bytes > data.nbytes:
        os.truncate(path, pad_bytes)
    return path


def reinit_portaudio() -> None:
    """Make PortAudio re-read the ALSA configuration (device list). No stream may be open."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


_built: VirtualMic | None = None


def _build(tmp: Path) -> VirtualMic:
    # Built once per process: several test modules importing the fixture share the files.
    global _built
    if _built is None:
        if not Path(ALSA_CONF).is_file():
            raise RuntimeError(f"{ALSA_CONF} is missing: the virtual mic needs alsa-lib's config")
        speech_raw = make_speech(
            tmp / "speech.raw", SPEECH_TEXT, bits=32, encoding="floating-point"
        )
        speech = np.fromfile(speech_raw, dtype="<f4")
        raw = write_raw(tmp / "vmic.raw", speech)
        conf = tmp / "vmic.conf"
        conf.write_text(_VMIC_CONF.format(name=DEVICE_NAME, default_raw=raw, rate=SAMPLE_RATE))
        env = {"ALSA_CONFIG_PATH": f"{ALSA_CONF}:{conf}", "VMIC_RAW": str(raw)}
        _built = VirtualMic(DEVICE_NAME, speech, raw, conf, env)
    return _built


@pytest.fixture(scope="session")
def vmic(tmp_path_factory):
    """The virtual microphone, selected for this process (os.environ) for the whole session."""
    mic = _build(tmp_path_factory.mktemp("vmic"))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in mic.env.items():
            mp.setenv(key, value)
        reinit_portaudio()
        try:
            yield mic
        finally:
            mp.undo()
            reinit_portaudio()


@pytest.fixture
def no_mic(tmp_path):
    """An ALSA configuration with no capture device at all, for this test only."""
    conf = tmp_path / "nomic.conf"
    conf.write_text(_NO_MIC_CONF)
    env = {"ALSA_CONFIG_PATH": f"{ALSA_CONF}:{conf}"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        reinit_portaudio()
        try:
            import sounddevice as sd

            if any(d["max_input_channels"] > 0 for d in sd.query_devices()):
                # Real sound hardware (or a sound server's ALSA plugin) is visible to PortAudio
                # whatever the config says; "no device" cannot be arranged here.
                pytest.skip("this machine has audio input devices outside the ALSA config")
            yield NoMic(conf, env)
        finally:
            mp.undo()
            reinit_portaudio()
