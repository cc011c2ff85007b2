"""One configuration tree, resolved as: code defaults < YAML file < command-line flags.

Unknown keys and bad values are errors that name the key and what is allowed. The defaults here
are the only defaults: ``config.example.yaml`` documents them, and a test keeps the two equal.
No torch, typer or rich in this module.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from voxcli.choices import (
    COMPILE_MODES,
    DEFAULT_MODEL,
    DETECTORS,
    DTYPES,
    EOS_POLICIES,
    KEYTERM_BIAS,
    OUTPUT_FORMATS,
    SERVER_KINDS,
    STEPS,
)
from voxcli.delays import ALLOWED_TEXT as DELAYS_TEXT
from voxcli.delays import is_allowed_delay_ms
from voxcli.errors import ConfigError

API_KEY_ENV = "VOXCLI_API_KEY"
HIDDEN = "<hidden>"  # what `voxcli config` shows for a secret that is set


def _choices(*values, help: str) -> dict:
    return {"choices": values, "help": help}


@dataclass
class ModelConfig:
    name: str = field(default=DEFAULT_MODEL, metadata={
        "help": "hub id or local checkpoint directory (Realtime 4B, or Mini 3B / Small 24B)"})
    device: str = field(default="auto", metadata={
        "help": "auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu", "device": True})
    dtype: str = field(default="auto", metadata=_choices(
        *DTYPES,
        help="auto: bfloat16 on a GPU that has it, else float16 (V100, T4); float32 on the CPU"))
    threads: int = field(default=0, metadata={"help": "CPU threads for torch; 0 keeps torch's default", "min": 0})
    offline: bool = field(default=False, metadata={
        "help": "never contact the Hugging Face hub; use only local files and the cache"})
    step: str = field(default="static", metadata=_choices(
        *STEPS, help="Realtime model: how a step runs; static = voxcli's preallocated step (ring buffers, "
                             "compilable), hf = transformers' eager forward (the reference, slower)"))
    compile: str = field(default="auto", metadata=_choices(
        *COMPILE_MODES, help="static step: torch.compile it (CUDA graphs on a GPU); auto = on for CUDA, "
                                  "off on the CPU, where compiling takes longer than a session saves"))
    max_streams: int = field(default=1, metadata={
        "help": "Realtime model, static step: the most streams one forward steps together (each a row with its own "
                "caches, about 1 GiB at full size in bf16); two-pass takes 2, bench --concurrency N takes N",
        "min": 1, "max": 1024})
    max_new_tokens: int = field(default=500, metadata={
        "help": "offline models: most tokens generated per segment of up to 30 s", "min": 1})
    server: str | None = field(default=None, metadata={
        "help": "a vLLM server (http://HOST:PORT or https://HOST:PORT) to use as the engine instead of the "
                "local GPU; null = local"})
    server_kind: str = field(default="auto", metadata=_choices(
        *SERVER_KINDS, help="with server: the served model's kind; auto asks the server"))
    api_key: str | None = field(default=None, metadata={
        "help": f"with server: the key of a server started with `vllm serve --api-key`, sent as "
                f"Authorization: Bearer; {API_KEY_ENV} sets it too; never written out", "secret": True})
    timeout_s: float = field(default=30.0, metadata={
        "help": "with server: the longest a connect, a read or a write may take before it fails", "min": 1.0})
    reconnect_s: float = field(default=120.0, metadata={
        "help": "with server: how long listen keeps reconnecting after losing the server, audio kept and "
                "replayed (0 = give up at once)", "min": 0.0})


@dataclass
class TranscriptionConfig:
    delay_ms: int | None = field(default=None, metadata={
        "help": f"Realtime model: transcription delay in ms, {DELAYS_TEXT}; null = the checkpoint's (480)",
        "delay": True})
    final_delay_ms: int | None = field(default=None, metadata={
        "help": "listen, Realtime model: two-pass transcription, a second stream at this longer delay "
                "(allowed as delay_ms) whose final text replaces the provisional words; null = one stream",
        "delay": True})
    final_model: str | None = field(default=None, metadata={
        "help": "listen, Realtime model: two-pass with an offline model (hub id or directory: Mini 3B, Small "
                "24B) that re-transcribes each utterance when it ends; its text replaces the provisional words; "
                "null = none"})
    language: str = field(default="auto", metadata={
        "help": "offline models: ISO 639-1 language hint (en, fr, ...) or auto to detect"})
    keyterms: list[str] = field(default_factory=list, metadata={
        "help": "words or phrases to favour (names, jargon): their tokens' scores get keyterm_bias added in "
                "every step; each one said is counted in the summary; [] = none"})
    keyterm_bias: float = field(default=KEYTERM_BIAS, metadata={
        "help": "logits added for keyterms: a favoured token wins a step when its probability is at least "
                "exp(-bias) of the top one's (2.0: about 14 %: near ties, not confident words); 0 counts "
                "without favouring", "min": 0.0, "max": 20.0})
    alternatives: int = field(default=0, metadata={
        "help": "every token event carries p (its probability) and the top K alternatives with their "
                "log-probabilities (JSON, JSONL, session files); 0 = off", "min": 0, "max": 20})
    on_eos: str = field(default="restart", metadata=_choices(
        *EOS_POLICIES, help="Realtime model, local: when it says end of sequence with audio left: restart = a new "
                            "stream from the first sample not yet transcribed (as vLLM ends a request there); "
                            "pad = feed it the blank instead and keep its caches (as voxtral.c does)"))


@dataclass
class OutputConfig:
    format: str = field(default="text", metadata=_choices(*OUTPUT_FORMATS, help="transcribe file output format"))
    low_confidence: float = field(default=0.0, metadata={
        "help": "the live view underlines words with a token less likely than this (0 to 1; the step then "
                "reads back each token's probability); 0 = off", "min": 0.0, "max": 1.0})
    plain: bool = field(default=False, metadata={
        "help": "print plain text as it arrives, without the live view (always so when stdout is not a terminal)"})


@dataclass
class ListenConfig:
    device: str | None = field(default=None, metadata={
        "help": "input device name or index (see `voxcli devices`); null = the system default input",
        "accepts_index": True})
    save_dir: str | None = field(default=None, metadata={
        "help": "directory for session files (WAV, JSONL events, transcript, SRT/VTT subtitles); null = save nothing"})
    vad: str = field(default="silero", metadata=_choices(
        *DETECTORS, help="what finds the end of speech: Silero VAD, or the energy fallback (a level threshold)"))
    flush_after_ms: int = field(default=320, metadata={
        "help": "this much non-speech ends speech: the Realtime model flushes its delay there, offline models "
                "transcribe the utterance (0 = never)", "min": 0})
    silence_db: float = field(default=-45.0, metadata={
        "help": "vad: energy only: input level (dBFS) below which audio counts as silence", "max": 0.0})
    blank_run_s: float = field(default=3.0, metadata={
        "help": "Realtime: speech this long with no text restarts the stream, replaying it (doubling each time, "
                "at most 3 in a row; 0 = never)", "min": 0.0})


@dataclass
class ServeConfig:
    host: str = field(default="127.0.0.1", metadata={
        "help": "serve: the address to bind; anything but loopback without api_key gets a warning"})
    port: int = field(default=8000, metadata={"help": "serve: the TCP port", "min": 1, "max": 65535})
    api_key: str | None = field(default=None, metadata={
        "help": f"serve: clients must send it as Authorization: Bearer (compared in constant time, never "
                f"logged); {API_KEY_ENV} sets it too; null = no key", "secret": True})
    ssl_certfile: str | None = field(default=None, metadata={"help": "serve: certificate (PEM) to serve https/wss"})
    ssl_keyfile: str | None = field(default=None, metadata={"help": "serve: its private key (PEM)"})
    max_sessions: int = field(default=8, metadata={
        "help": "serve: realtime sessions at once, each a row of the batched step; one more is refused (and "
                "GET /ready says full)", "min": 1, "max": 1024})
    max_upload_mb: float = field(default=200.0, metadata={
        "help": "serve: the largest file POST /v1/audio/transcriptions takes (larger: 413)", "min": 0.001})
    client_queue: int = field(default=2000, metadata={
        "help": "serve: events waiting for one client (about 12 per second of audio); a client that falls "
                "this far behind is dropped with an error event", "min": 8})
    send_timeout_s: float = field(default=10.0, metadata={
        "help": "serve: the longest one send to a client may wait; a client that stops reading is dropped",
        "min": 0.1})
    wyoming: str | None = field(default=None, metadata={
        "help": "serve: also speak Wyoming (Home Assistant's local voice protocol) on this TCP PORT or HOST:PORT "
                "(10300 by convention; a bare port is loopback), sharing the sessions; null = off"})
    allow_origins: list[str] = field(default_factory=list, metadata={
        "help": "serve: web pages of other sites that may use this server (origins, e.g. https://app.example.com; "
                "* = any): a browser's WebSocket from any other page is refused (403), and REST answers CORS "
                "for these only; [] = this server's own page only. Programs that send no Origin are not affected"})


@dataclass
class DictateConfig:
    hotkey: str = field(default="f9", metadata={
        "help": "dictate: the key (or keys joined by +, e.g. ctrl+alt+space, right_ctrl) to hold while speaking; "
                "held with a modifier, a press's words are typed at its release (typed while held they would be "
                "shortcuts); X11, macOS and Windows; on Wayland read from the keyboards (the input group), or bind "
                "`voxcli dictate --toggle-now` to a shortcut"})
    toggle: bool = field(default=False, metadata={
        "help": "dictate: one press of the hotkey starts listening, the next stops (instead of holding it)"})
    stop_hotkey: str = field(default="esc", metadata={
        "help": "dictate: the key that stops a press at once: nothing more of it is typed (the words not yet "
                "typed are dropped); '' for none"})
    live_correct: bool = field(default=False, metadata={
        "help": "dictate, two-pass: type the provisional stream's words at once, and put the final stream's in "
                "their place with backspaces where they differ (instead of typing only final words)"})
    type_with: str = field(default="auto", metadata=_choices(
        "auto", "keys", "clipboard", help="dictate: how words reach the focused window: auto picks for the desktop "
        "(X11: keys through XTest; Wayland: wtype, else ydotool, else the clipboard), keys, or the clipboard "
        "and a paste keystroke"))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    transcription: TranscriptionConfig = field(default_factory=TranscriptionConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    dictate: DictateConfig = field(default_factory=DictateConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "voxcli" / "config.yaml"


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file (``path``, else the user's default file if it exists), then
    $VOXCLI_API_KEY (model.api_key and serve.api_key), then ``overrides`` given as dotted keys (``{"model.device": "cpu"}``; ``None`` values mean "not given")."""
    config = Config()
    if path is None and default_config_path().is_file():
        path = default_config_path()
    if path is not None:
        apply_mapping(config, read_yaml(Path(path)), source=str(path))
    if os.environ.get(API_KEY_ENV):  # the key a client sends, and the one `voxcli serve` asks for
        config.model.api_key = config.serve.api_key = os.environ[API_KEY_ENV]
    for key, value in (overrides or {}).items():
        if value is not None:
            set_key(config, key, value, source="command line")
    return config


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # An unclosed quote or bracket is reported at the end of the file; where it was opened
        # (context_mark) is the line worth showing.
        problem = getattr(exc, "problem", None) or "syntax error"
        mark = getattr(exc, "problem_mark", None)
        context = getattr(exc, "context_mark", None)
        if context is not None and "end of stream" in str(problem):
            mark = context
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections (model, transcription, output, listen)")
    return data


def apply_mapping(config: Config, data: dict, *, source: str) -> None:
    sections = {f.name: f for f in fields(config)}
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown key {section!r}; valid keys: {', '.join(sections)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section!r} must be a mapping of keys")
        for key, value in values.items():
            set_key(config, f"{section}.{key}", value, source=source)


def set_key(config: Config, dotted: str, value: Any, *, source: str) -> None:
    section_name, _, key = dotted.partition(".")
    section = getattr(config, section_name, None)
    if section is None or not dataclasses.is_dataclass(section):
        valid = ", ".join(f.name for f in fields(config))
        raise ConfigError(f"{source}: unknown key {section_name!r}; valid keys: {valid}")
    by_name = {f.name: f for f in fields(section)}
    if key not in by_name:
        valid = ", ".join(f"{section_name}.{k}" for k in by_name)
        raise ConfigError(f"{source}: unknown key {dotted!r}; valid keys: {valid}")
    setattr(section, key, _validate(dotted, by_name[key], value, source))


_DEVICE_RE = re.compile(r"(auto|cuda|mps|cpu|cuda:[0-9]+)")


def _allowed(f: dataclasses.Field) -> str:
    """What a key accepts, in words: every error about the key says it."""
    meta = f.metadata
    base = str(f.type).replace(" | None", "")
    if "choices" in meta:
        text = "one of " + ", ".join(meta["choices"])
    elif meta.get("device"):
        text = "one of auto, cuda, cuda:N, mps, cpu"
    elif meta.get("delay"):
        text = f"an integer, {DELAYS_TEXT}"
    elif base == "bool":
        text = "true or false"
    elif base == "int":
        text = f"an integer >= {meta['min']}" if "min" in meta else "an integer"
        text += f" and <= {meta['max']}" if "max" in meta else ""
    elif base == "float":
        text = (f"a number <= {meta['max']}" if "max" in meta else
                f"a number >= {meta['min']}" if "min" in meta else "a number")
    elif base == "list[str]":
        text = "a list of non-empty strings"
    elif meta.get("accepts_index"):
        text = "a device name or index"
    else:
        text = "a non-empty string"
    return text + (" or null" if "None" in str(f.type) else "")


def _validate(dotted: str, f: dataclasses.Field, value: Any, source: str) -> Any:
    meta = f.metadata
    base = str(f.type).replace(" | None", "")
    if value is None and "None" in str(f.type):
        return None
    if meta.get("accepts_index") and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)  # an index such as `device: 3` in YAML
    if value is None:
        raise ConfigError(f"{source}: {dotted} cannot be null; it must be {_allowed(f)}")
    if not _valid(base, meta, value):
        raise ConfigError(f"{source}: {dotted} must be {_allowed(f)}; got {value!r}")
    return float(value) if base == "float" else value


def _valid(base: str, meta: dict, value: Any) -> bool:
    if base == "bool":
        return isinstance(value, bool)
    if base == "int":
        ok = (isinstance(value, int) and not isinstance(value, bool)
              and meta.get("min", value) <= value <= meta.get("max", value))
        return ok and (is_allowed_delay_ms(value) if meta.get("delay") else True)
    if base == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
    if base == "float":
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and meta.get("min", -math.inf) <= value <= meta.get("max", math.inf))
    if not isinstance(value, str) or not value:
        return False
    if "choices" in meta:
        return value in meta["choices"]
    if meta.get("device"):
        return _DEVICE_RE.fullmatch(value) is not None
    return True


def dump_yaml(config: Config) -> str:
    """The configuration as YAML, with every secret that is set shown as <hidden>."""
    data = config.to_dict()
    for section in fields(Config):
        for f in fields(section.default_factory()):
            if f.metadata.get("secret") and data[section.name][f.name] is not None:
                data[section.name][f.name] = HIDDEN
    return yaml.safe_dump(data, sort_keys=False)


def describe() -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every key: what config.example.yaml must document."""
    rows = []
    for section in fields(Config):
        for f in fields(section.default_factory()):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{section.name}.{f.name}", default, f.metadata.get("help", "")))
    return rows
