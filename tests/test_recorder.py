"""Session files: the WAV through libsndfile stays valid after every block, past 4 GiB too (RF64)."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from voxcli.output import recorder as rec
from voxcli.output.recorder import SessionRecorder


def test_the_wav_is_whole_after_every_block(tmp_path):
    r = SessionRecorder(tmp_path, meta={})
    blocks = [np.full(1600, k / 10, np.float32) for k in range(5)]
    for k, block in enumerate(blocks):
        r.write_audio(block)
        info = sf.info(str(r.wav_path))  # read while the session goes on: the header is current
        assert info.frames == 1600 * (k + 1) and info.samplerate == 16000 and info.subtype == "FLOAT"
    r.close()
    heard, _ = sf.read(r.wav_path, dtype="float32")
    assert np.array_equal(heard, np.concatenate(blocks))
    assert sf.info(str(r.wav_path)).format != "RF64"  # below 4 GiB: plain WAV, for every reader


class _SparseIO(rec._WavIO):
    """A file that takes all-zero data as a hole: 4 GiB of silence costs no disk and no time to
    write, and every byte of the header logic is real."""

    def write(self, data) -> int:
        view = np.frombuffer(data, np.uint8)
        if len(view) > 1 << 20 and not view.any():
            end = self._f.tell() + len(view)
            if end > self._f.seek(0, 2):
                self._f.truncate(end)  # a hole: the file is that long, and reads zeros there
            self._f.seek(end)
            return len(view)
        return super().write(data)


def test_a_wav_past_4_gib_is_rf64_and_whole(tmp_path, monkeypatch):
    real = rec._Wav.__init__
    monkeypatch.setattr(rec._Wav, "__init__", lambda self, path, rate: real(self, path, rate, io_class=_SparseIO))
    r = SessionRecorder(tmp_path, meta={})
    chunk = np.zeros(1 << 26, np.float32)  # 256 MiB
    for _ in range(17):  # 4.25 GiB of float32: 19.8 h at 16 kHz
        r.write_audio(chunk)
    tail = np.linspace(-1, 1, 1600, dtype=np.float32)
    r.write_audio(tail)
    r.close()
    frames = 17 * len(chunk) + len(tail)
    assert r.wav_path.stat().st_size > 1 << 32  # the data itself is past what a plain WAV can address
    info = sf.info(str(r.wav_path))
    assert info.format == "RF64" and info.frames == frames and info.samplerate == 16000
    with sf.SoundFile(r.wav_path) as f:
        f.seek(frames - len(tail))
        assert np.array_equal(f.read(dtype="float32"), tail)  # the last samples where they belong
