"""Audio input devices, through sounddevice (imported lazily, so ``import voxcli.audio`` works
without PortAudio): listing them, resolving ``--device`` (an index, a name fragment, or the
default), and the rate a device is opened at (16 kHz where it takes it, else its own)."""

from __future__ import annotations

from dataclasses import dataclass

from voxcli.errors import AudioError
from voxcli.errors import one_line as _one_line
from voxcli.units import SAMPLE_RATE

NO_PORTAUDIO = (
    "PortAudio is not installed: on Debian/Ubuntu run `sudo apt-get install libportaudio2` "
    "(on macOS and Windows it comes with the sounddevice wheel)"
)
NO_INPUT = (
    "no audio input device found (connect a microphone; on Linux check that your user may use "
    "the sound card, e.g. is in the 'audio' group)"
)


# --------------------------------------------------------------------------------------------
# Devices


@dataclass(frozen=True)
class DeviceInfo:
    """An audio input device as PortAudio lists it."""

    index: int
    name: str
    hostapi: str  # e.g. "ALSA", "Core Audio", "Windows WASAPI"
    channels: int  # input channels
    default_rate: float  # Hz
    is_default: bool  # the device ``MicSource(None)`` opens


def list_input_devices() -> list[DeviceInfo]:
    """Input-capable devices, each once, in PortAudio's order. No device at all gives ``[]``."""
    sd = load_sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except sd.PortAudioError as e:
        raise AudioError(f"cannot list audio devices ({_one_line(str(e))})") from None
    default = default_input(sd)
    found: dict[int, DeviceInfo] = {}
    for index, d in enumerate(devices):
        if d["max_input_channels"] <= 0 or index in found:
            continue
        found[index] = DeviceInfo(
            index=index,
            name=d["name"],
            hostapi=hostapis[d["hostapi"]]["name"],
            channels=int(d["max_input_channels"]),
            default_rate=float(d["default_samplerate"]),
            is_default=index == default,
        )
    return list(found.values())


def default_input(sd) -> int | None:
    try:
        return int(sd.query_devices(kind="input")["index"])
    except (sd.PortAudioError, ValueError):  # "Error querying device -1": there is none
        return None


def load_sounddevice():
    """Import sounddevice, turning a missing PortAudio into a one-line AudioError."""
    try:
        import sounddevice
    except OSError as e:  # the Linux wheel does not bundle PortAudio
        if "PortAudio library not found" in str(e):
            raise AudioError(NO_PORTAUDIO) from None
        raise AudioError(f"cannot load PortAudio ({_one_line(str(e))})") from None
    except ImportError:
        raise AudioError(
            "the sounddevice package is not installed: pip install sounddevice"
        ) from None
    return sounddevice


def resolve_device(sd, device: str | int | None) -> dict:
    """PortAudio's info dict for the requested input device, or a one-line AudioError."""
    try:
        devices = list(sd.query_devices())
    except sd.PortAudioError as e:
        raise AudioError(f"cannot list audio devices ({_one_line(str(e))})") from None
    inputs = [(i, d) for i, d in enumerate(devices) if d["max_input_channels"] > 0]
    if not inputs:
        raise AudioError(NO_INPUT)
    available = ", ".join(f"[{i}] {d['name']}" for i, d in inputs)

    if isinstance(device, str) and device.strip().isdigit():
        device = int(device)
    if device is None:
        index = default_input(sd)
        if index is None:
            raise AudioError(f"no default audio input device; choose one of: {available}")
    elif isinstance(device, int) and not isinstance(device, bool):
        index = device
        if not 0 <= index < len(devices):
            raise AudioError(
                f"no audio input device with index {index}; input devices: {available}"
            )
        if devices[index]["max_input_channels"] <= 0:
            raise AudioError(
                f"audio device [{index}] {devices[index]['name']} has no input channels; "
                f"input devices: {available}"
            )
    elif isinstance(device, str):
        try:
            index = int(sd.query_devices(device, "input")["index"])
        except ValueError as e:
            if str(e).startswith("Multiple"):
                raise AudioError(
                    f"several audio input devices match {device!r}; give more of the name or the "
                    f"index: {available}"
                ) from None
            raise AudioError(
                f"no audio input device matches {device!r}; input devices: {available}"
            ) from None
    else:
        raise TypeError(f"device must be a name, an index or None, got {device!r}")
    info = dict(devices[index])
    info["index"] = index
    return info


# --------------------------------------------------------------------------------------------
# Sources


def pick_rate(sd, index: int, name: str, default_rate: int) -> int:
    """16 kHz if the device takes it (no resampling needed), else its default rate."""
    reasons = []
    for rate in dict.fromkeys((SAMPLE_RATE, default_rate)):
        try:
            sd.check_input_settings(device=index, channels=1, dtype="float32", samplerate=rate)
            return rate
        except (sd.PortAudioError, ValueError) as e:
            reasons.append(f"{rate} Hz: {_one_line(str(e))}")
    raise AudioError(
        f"audio input device [{index}] {name} refuses mono float32 capture ({'; '.join(reasons)})"
    )
