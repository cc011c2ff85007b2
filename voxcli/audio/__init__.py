"""The audio layer: files decoded to 16 kHz mono (``decode``), the microphone and file replay
(``capture``), and the endpointer that hears where speech starts and ends (``vad``).
Imports only the core modules (errors, events, config, units)."""

from voxcli.audio.decode import load_audio, resample

__all__ = ["load_audio", "resample"]
