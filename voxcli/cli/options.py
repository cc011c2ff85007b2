"""The options several commands share, each written once: its flag, its help, its range. Each
defaults to None ("not given": the configuration decides); ``MODEL_KEYS`` and ``TOKEN_KEYS`` say
which configuration key each one sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from voxcli.delays import ALLOWED_TEXT as DELAYS_TEXT

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.",
                                                show_default=False)]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", show_default=False,
    help="Hub id or local checkpoint directory. Default: mistralai/Voxtral-Mini-4B-Realtime-2602. "
         "Also: mistralai/Voxtral-Mini-3B-2507, mistralai/Voxtral-Small-24B-2507.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cuda, cuda:N, mps or cpu.",
                                               show_default=False)]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="auto, bfloat16, float16 or float32.",
                                              show_default=False)]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for torch (0: torch's default).",
                                                show_default=False)]
DelayOpt = Annotated[int | None, typer.Option(
    "--delay-ms", show_default=False,
    help=f"Realtime model: transcription delay in ms, {DELAYS_TEXT} (checkpoint default 480). "
         "Lower shows words sooner, higher is more accurate.")]
LanguageOpt = Annotated[str | None, typer.Option(
    "--language", "-l", show_default=False,
    help="Offline models (3B/24B): language hint such as en, fr, de; 'auto' detects it.")]
OfflineOpt = Annotated[bool, typer.Option(
    "--offline", help="Never contact the Hugging Face hub: use a local directory or the cache.")]
ServerOpt = Annotated[str | None, typer.Option(
    "--server", show_default=False,
    help="Use a vLLM server (http://HOST:PORT, or https:// with its certificate checked) as the engine; "
         "--model is then the served model name.")]
ApiKeyOpt = Annotated[str | None, typer.Option(
    "--api-key", show_default=False,
    help="With --server: the key of a server started with `vllm serve --api-key`. VOXCLI_API_KEY does "
         "the same and keeps the key out of the process list.")]
StepOpt = Annotated[str | None, typer.Option(
    "--step", show_default=False,
    help="Realtime model: static (default: preallocated ring buffers, compilable) or hf (transformers' "
         "eager forward, the reference).")]
CompileOpt = Annotated[bool | None, typer.Option(
    "--compile/--no-compile", show_default=False,
    help="Static step: torch.compile it (CUDA graphs on a GPU). Default: on for CUDA, off on the CPU. "
         "Compiling takes seconds to minutes at start-up, reported apart.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]
KeytermOpt = Annotated[list[str] | None, typer.Option(
    "--keyterm", "-k", show_default=False,
    help="A word or phrase to favour (a name, jargon); repeat for more. Its tokens' scores get --keyterm-bias "
         "in every step; each one said is counted in the summary. A local model, or voxcli serve as the server.")]
KeytermsFileOpt = Annotated[Path | None, typer.Option(
    "--keyterms-file", show_default=False, help="Keyterms from a file, one phrase a line (# comments).")]
KeytermBiasOpt = Annotated[float | None, typer.Option(
    "--keyterm-bias", show_default=False, min=0.0, max=20.0,
    help="Logits added for keyterms (default 2.0: a favoured token wins when at least ~14% as likely as "
         "the top one). 0 counts them without favouring.")]
AlternativesOpt = Annotated[int | None, typer.Option(
    "--alternatives", show_default=False, min=0, max=20,
    help="Every token event carries p and the top K alternatives with log-probabilities (json, jsonl, "
         "session files). Default 0: off.")]
LowConfidenceOpt = Annotated[float | None, typer.Option(
    "--low-confidence", show_default=False, min=0.0, max=1.0,
    help="Underline words in the live view with a token less likely than P (e.g. 0.5). Default 0: off.")]
# The configuration keys the keyterm and confidence options set.
TOKEN_KEYS = {"transcription.keyterms": "keyterm", "transcription.keyterm_bias": "keyterm_bias",
              "transcription.alternatives": "alternatives"}
# The configuration keys the model options above set (each command adds its own device flag).
MODEL_KEYS = {"model.name": "model", "model.dtype": "dtype", "model.threads": "threads",
              "model.offline": "offline", "model.server": "server", "model.api_key": "api_key",
              "transcription.delay_ms": "delay_ms", "model.step": "step", "model.compile": "compile"}
