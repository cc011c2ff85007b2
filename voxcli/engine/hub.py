"""Where a checkpoint comes from: a local directory, or the Hugging Face hub (downloaded once).

:func:`resolve_checkpoint` turns the model setting (``--model``) into a local directory before transformers reads
anything, so every failure a user can meet gets one line, quickly:

- no network: one short metadata request (``HUB_TIMEOUT_S``) with no retries, instead of the
  hub client's five retries with back-off (27 s measured) before the same error; a model
  already in the cache is used from there;
- a gated or private model (401/403): how to log in;
- a repository (or directory) with only Mistral's own format (``params.json`` +
  ``consolidated.safetensors``, no ``config.json``): that it needs the vLLM path;
- a real download keeps the hub's progress bars, and fetches only the transformers files (the
  real repositories hold the weights twice; ``consolidated*`` is vLLM's copy).

No torch or transformers here.
"""

from __future__ import annotations

import os
from pathlib import Path

from voxcli.errors import ModelError, first_line, setting

HUB_TIMEOUT_S = 5.0
MODEL = setting("model.name")
# What transformers needs from a Voxtral repository; the Mistral-format weights are skipped.
ALLOW_PATTERNS = ["*.json", "model*.safetensors", "*.jinja", "*.txt"]
IGNORE_PATTERNS = ["consolidated*", "params.json"]
VLLM_HINT = ("voxcli loads the transformers format (config.json + model*.safetensors); serve this one "
             f"with vLLM and pass {setting('model.server')}=URL")


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    for module in ("httpx2", "httpx"):  # huggingface_hub 2.x uses httpx2, 1.x httpx
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def is_mistral_format(names: set[str]) -> bool:
    return "config.json" not in names and "params.json" in names and any(
        n.startswith("consolidated") for n in names)


def check_local_dir(path: Path, shown: str) -> Path:
    names = {p.name for p in path.iterdir()}
    if "config.json" in names:
        return path
    if is_mistral_format(names):
        raise ModelError(f"{MODEL} {shown} holds only Mistral's own format (params.json, "
                         f"consolidated.safetensors, no config.json); {VLLM_HINT}", model=shown)
    raise ModelError(f"{MODEL} {shown}: no checkpoint in this directory (no config.json); pass a Voxtral "
                     f"checkpoint directory or a hub id", model=shown)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_checkpoint(model: str, *, offline: bool = False) -> Path:
    """A local directory holding ``model``'s transformers files, downloading it if needed.

    Raises :class:`ModelError` with one line for every way that can fail.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return check_local_dir(path, model)
    if path.exists():
        raise ModelError(f"{MODEL} {model!r} is a file; pass a checkpoint directory or a hub id", model=model)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        raise ModelError(f"{MODEL} {model}: no such directory, and not a hub id (owner/name)",
                         model=model) from None
    if offline or hub_offline():
        cached = _cached(model)
        if cached is None:
            raise ModelError(f"{model} is not in the local Hugging Face cache and the hub is off "
                             f"({setting('model.offline')} or HF_HUB_OFFLINE); run once with network to "
                             f"download it, or pass {MODEL}=PATH", model=model)
        return cached
    return _download(model)


def _cached(model: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(model, local_files_only=True, allow_patterns=ALLOW_PATTERNS,
                                      ignore_patterns=IGNORE_PATTERNS))
    except Exception:  # noqa: BLE001 - any failure here means "no usable cached copy"
        return None
    return path if (path / "config.json").is_file() else None


def _download(model: str) -> Path:
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    network = _network_errors()
    try:
        # One request, with a bound and no retries: the quick answer to "is the hub there?".
        info = HfApi().model_info(model, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise ModelError(_login_hint(model, _GATED)) from None
    except RepositoryNotFoundError:
        raise ModelError(f"{model}: no such model on the Hugging Face hub (if it is private, log in with "
                         f"`hf auth login`, or set HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        raise ModelError(_http_error(model, exc)) from None
    except network as exc:
        cached = _cached(model)
        if cached is not None:
            return cached
        raise ModelError(f"cannot reach the Hugging Face hub ({first_line(exc)}) and {model} is not in the "
                         f"local cache; connect once to download it, or pass {MODEL}=PATH to a local "
                         f"checkpoint directory", model=model) from None
    names = {s.rfilename for s in (info.siblings or [])}
    if names and is_mistral_format(names):
        raise ModelError(f"{model} on the hub holds only Mistral's own format (params.json, "
                         f"consolidated.safetensors, no config.json); {VLLM_HINT}")
    try:
        if getattr(info, "gated", False):
            # Ask for one small file first, so a missing login is said before any progress bar.
            get_hf_file_metadata(hf_hub_url(model, "config.json"), timeout=HUB_TIMEOUT_S)
        return Path(snapshot_download(model, allow_patterns=ALLOW_PATTERNS,
                                      ignore_patterns=IGNORE_PATTERNS))
    except GatedRepoError:
        raise ModelError(_login_hint(model, _GATED)) from None
    except HfHubHTTPError as exc:
        raise ModelError(_http_error(model, exc)) from None
    except network as exc:
        raise ModelError(f"downloading {model} failed ({first_line(exc)}); run again to resume") from None


def _http_error(model: str, exc: BaseException) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return _login_hint(model, f"was refused by the hub (HTTP {status}):")
    return f"the Hugging Face hub failed for {model}: {first_line(exc)}"


_GATED = "is gated: accept its terms on its page on huggingface.co, then"


def _login_hint(model: str, what: str) -> str:
    return f"{model} {what} log in with `hf auth login` (or set HF_TOKEN), or pass {MODEL}=PATH to a local copy"
