"""Real test audio made with espeak-ng and sox, plus the broken files users actually hand us.

Import from tests as ``from speech import make_speech``: pytest's default ("prepend") import
mode puts this directory on sys.path because tests/ is not a package.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "HAVE_TOOLS",
    "make_speech",
    "make_silence",
    "make_tone",
    "trim",
    "make_truncated",
    "make_corrupt",
    "make_empty",
    "make_zero_frames",
    "make_text",
    "make_png",
]

# The Debian tools are required, not optional: .ci/run installs them, and a test suite that
# skipped its real-speech tests would hide the paths CI must run. Without them, each test that
# makes speech fails (not the whole collection: the unit tests need neither).
HAVE_TOOLS = bool(shutil.which("espeak-ng") and shutil.which("sox"))

# Lossy encoders choose their own sample format; sox warns and ignores -b for them.
_LOSSY = {".mp3", ".ogg"}


def _run(*cmd: str) -> None:
    if not HAVE_TOOLS:
        raise RuntimeError("this test needs espeak-ng and sox: apt-get install espeak-ng sox libsox-fmt-mp3")
    # check=True so a broken recipe fails loudly here, not as a confusing decode error later.
    # (Callers pass sox -V1: errors only, so expected warnings do not clutter test output.)
    subprocess.run(cmd, check=True, capture_output=True)


def _sox_out(rate: int, channels: int, bits: int, path: Path, encoding: str | None) -> list[str]:
    opts = ["-r", str(rate), "-c", str(channels)]
    if path.suffix.lower() not in _LOSSY:
        opts += ["-b", str(bits)]
        if encoding:
            opts += ["-e", encoding]
    return [*opts, str(path)]


def make_speech(
    path: str | os.PathLike[str],
    text: str,
    rate: int = 16000,
    channels: int = 1,
    bits: int = 16,
    voice: str | None = None,
    encoding: str | None = None,
) -> Path:
    """Speak ``text`` with espeak-ng and convert it with sox to ``path`` (format from suffix).

    ``encoding`` is passed to sox's ``-e`` (e.g. "floating-point" with bits=32). sox's ``-G``
    lowers the gain just enough that resampling espeak's full-scale output does not clip, and
    ``-D`` turns dithering off so the same text always gives the same bytes.
    If this sox build cannot encode MP3 (no libmp3lame), the MP3 is written by libsndfile.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "espeak.wav"
        _run("espeak-ng", *(["-v", voice] if voice else []), "-w", str(raw), text)
        try:
            _run("sox", "-V1", "-G", "-D", str(raw),
                 *_sox_out(rate, channels, bits, path, encoding))
        except subprocess.CalledProcessError:
            if path.suffix.lower() != ".mp3":
                raise
            wav = Path(tmp) / "converted.wav"
            _run("sox", "-V1", "-G", "-D", str(raw), *_sox_out(rate, channels, 16, wav, None))
            import soundfile as sf  # libsndfile >= 1.1 encodes MPEG Layer III

            data, sr = sf.read(wav)
            sf.write(path, data, sr, format="MP3", subtype="MPEG_LAYER_III")
    return path


def make_silence(
    path: str | os.PathLike[str], seconds: float, rate: int = 16000, channels: int = 1
) -> Path:
    """Digital silence (all zeros) of the given length."""
    path = Path(path)
    _run("sox", "-V1", "-n", "-r", str(rate), "-c", str(channels), "-b", "16", str(path),
         "trim", "0", str(seconds))
    return path


def make_tone(
    path: str | os.PathLike[str], hz: float, seconds: float, rate: int = 16000, bits: int = 16
) -> Path:
    """A sine at half full scale."""
    path = Path(path)
    _run("sox", "-V1", "-n", "-r", str(rate), "-c", "1", "-b", str(bits), str(path),
         "synth", str(seconds), "sine", str(hz), "vol", "0.5")
    return path


def trim(src: str | os.PathLike[str], dst: str | os.PathLike[str], start_s: float,
         seconds: float) -> Path:
    """Copy ``seconds`` of ``src`` starting at ``start_s`` (e.g. a 0.1 s clip)."""
    dst = Path(dst)
    _run("sox", "-V1", str(src), str(dst), "trim", str(start_s), str(seconds))
    return dst


def make_truncated(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """The first half of ``src``'s bytes: a download or recording cut off mid-stream."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: len(data) // 2])
    return dst


def make_corrupt(src: str | os.PathLike[str], dst: str | os.PathLike[str], keep_bytes: int,
                 n_random: int = 8000, seed: int = 0) -> Path:
    """The first ``keep_bytes`` of ``src`` (its magic/header) followed by random bytes.

    Note for WAV: a complete header followed by random bytes is valid PCM (it decodes as
    noise), so to get an undecodable WAV keep only the 12-byte RIFF/WAVE preamble.
    """
    rng = np.random.default_rng(seed)
    dst = Path(dst)
    dst.write_bytes(Path(src).read_bytes()[:keep_bytes] + rng.bytes(n_random))
    return dst


def make_empty(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_zero_frames(path: str | os.PathLike[str], rate: int = 16000) -> Path:
    """A WAV with a valid header and no frames."""
    path = Path(path)
    _run("sox", "-V1", "-n", "-r", str(rate), "-c", "1", "-b", "16", str(path), "trim", "0", "0")
    return path


def make_text(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.write_text("This is a transcript, not audio.\n" * 50)
    return path


def make_png(path: str | os.PathLike[str]) -> Path:
    """A real, valid 1x1 PNG: the kind of wrong file a user drags in by mistake."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00\xff\x00\x00")
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please send the quarterly report to the finance team by Friday.",
    "We will meet again tomorrow morning to discuss the new design.",
)


def _level_db(x: np.ndarray) -> float:
    return 20.0 * float(np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12))


def _strip_silence(x: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """espeak pads its clips with silence: cut it, so the pauses are exactly as asked."""
    loud = np.flatnonzero(np.abs(x) > floor)
    return x[loud[0]:loud[-1] + 1] if len(loud) else x


def pink_noise(seconds: float, level_dbfs: float, rate: int = 16000) -> np.ndarray:
    """Pink noise (sox's generator, repeatable with -R) at ``level_dbfs`` RMS: room noise."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "noise.wav"
        _run("sox", "-V1", "-R", "-n", "-r", str(rate), "-c", "1", "-b", "32", "-e", "floating-point",
             str(out), "synth", str(seconds), "pinknoise")
        import soundfile as sf

        noise, _ = sf.read(out, dtype="float32")
    return (noise * 10 ** ((level_dbfs - _level_db(noise)) / 20)).astype(np.float32)


def make_paused_speech(path: str | os.PathLike[str], sentences=SENTENCES, *, pause_s: float = 1.2,
                       lead_s: float = 0.5, tail_s: float = 0.5, snr_db: float | None = None,
                       speech_dbfs: float | None = None, noise_dbfs: float | None = None):
    """Sentences spoken apart by ``pause_s`` of silence, optionally made quiet (``speech_dbfs``:
    the speech's RMS) and put in pink noise (``snr_db`` against the speech, or ``noise_dbfs``).
    Returns (path, [(start, end) sample range of each sentence])."""
    import soundfile as sf

    path = Path(path)
    rate = 16000
    with tempfile.TemporaryDirectory() as tmp:
        spoken = [_strip_silence(sf.read(make_speech(Path(tmp) / f"s{i}.wav", s), dtype="float32")[0])
                  for i, s in enumerate(sentences)]
    speech_level = _level_db(np.concatenate(spoken))
    gain = 1.0 if speech_dbfs is None else 10 ** ((speech_dbfs - speech_level) / 20)
    pieces, regions, pos = [np.zeros(int(lead_s * rate), np.float32)], [], int(lead_s * rate)
    for i, x in enumerate(spoken):
        if i:
            pieces.append(np.zeros(int(pause_s * rate), np.float32))
            pos += int(pause_s * rate)
        pieces.append(x * gain)
        regions.append((pos, pos + len(x)))
        pos += len(x)
    pieces.append(np.zeros(int(tail_s * rate), np.float32))
    audio = np.concatenate(pieces).astype(np.float32)
    if snr_db is not None or noise_dbfs is not None:
        level = noise_dbfs if noise_dbfs is not None else speech_level + 20 * np.log10(gain) - snr_db
        audio = audio + pink_noise(len(audio) / rate, level)[: len(audio)]
    sf.write(path, np.clip(audio, -1.0, 1.0), rate, subtype="FLOAT")
    return path, regions
