"""Every choice a setting offers, and the default model, defined once: the configuration checks
against these, the engine and the CLI's help read them."""

from __future__ import annotations

DEFAULT_MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"  # the Realtime model: live, token by token
DEFAULT_OFFLINE_MODEL = "mistralai/Voxtral-Mini-3B-2507"
MODEL_KINDS = ("realtime", "offline")
SERVER_KINDS = ("auto", *MODEL_KINDS)  # auto: ask the server
DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("auto", "bfloat16", "float16", "float32")
STEPS = ("static", "hf")  # the Realtime step: voxcli's static one, or transformers' eager forward
COMPILE_MODES = ("auto", "on", "off")
DETECTORS = ("silero", "energy")  # the endpointer: Silero VAD, or a level threshold
OUTPUT_FORMATS = ("text", "json", "jsonl", "srt", "vtt")  # transcribe file
LISTEN_FORMATS = ("text", "jsonl")  # what listen can stream as it goes
EOS_POLICIES = ("restart", "pad")  # a Realtime stream's end of sequence with audio left (voxcli.engine.session)
KEYTERM_BIAS = 2.0  # logits added for a keyterm's tokens (why 2.0: voxcli.engine.keyterms)
