"""`voxcli serve` glue: check the options, load the engine (a row per session), run the server."""

from __future__ import annotations

import ipaddress

from rich.console import Console

from voxcli.config import Config
from voxcli.errors import ConfigError, VoxcliError


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_serve(cfg: Config) -> list[str]:
    """Errors for what cannot work; the warnings (as lines) for what may be unwise."""
    s = cfg.serve
    from voxcli.engine.opener import loads_here

    if not loads_here(cfg):
        raise ConfigError("serve runs the model on this machine; point clients at the vLLM server itself "
                          "(unset model.server / --server)")
    if s.wyoming is not None:
        from voxcli.serve.wyoming import parse_address

        try:
            parse_address(s.wyoming)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if bool(s.ssl_certfile) != bool(s.ssl_keyfile):
        raise ConfigError("serve.ssl_certfile and serve.ssl_keyfile go together (https needs both)")
    warnings = []
    if not _loopback(s.host) and not s.api_key:
        warnings.append(f"serving on {s.host} without an API key: anyone who can reach this port can use it "
                        f"(set --api-key or VOXCLI_API_KEY)")
    return warnings


def run_serve(cfg: Config, *, load_engine) -> int:
    from voxcli.serve.app import ServeOptions
    from voxcli.serve.run import serve

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for line in check_serve(cfg):
        err.print(f"voxcli: warning: {line}")
    cfg.model.max_streams = max(cfg.model.max_streams, cfg.serve.max_sessions)  # a row per session
    engine = load_engine(cfg, err)
    s = cfg.serve
    scheme = "https" if s.ssl_certfile else "http"
    url = f"{scheme}://{s.host if ':' not in s.host else f'[{s.host}]'}:{s.port}"

    def ready() -> None:
        ws = url.replace("http", "ws", 1)
        err.print(f"voxcli serve: {url}  (live page {url}/, OpenAI- and Mistral-compatible {url}/v1, realtime "
                  f"{ws}/v1/realtime, Mistral's {ws}/v1/audio/transcriptions/realtime, Deepgram's {ws}/v1/listen; "
                  f"up to {s.max_sessions} sessions"
                  f"{f'; Wyoming on {s.wyoming}' if s.wyoming else ''}"
                  f"{', API key required' if s.api_key else ''}; Ctrl-C or SIGTERM ends the sessions and stops)")

    try:
        serve(engine, ServeOptions.from_config(cfg), host=s.host, port=s.port, ssl_certfile=s.ssl_certfile,
              ssl_keyfile=s.ssl_keyfile, on_ready=ready)
    except OSError as exc:
        raise VoxcliError(f"cannot serve on {s.host}:{s.port}: {exc.strerror or exc}") from None
    return 0
