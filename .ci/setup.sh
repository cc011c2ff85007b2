#!/usr/bin/env bash
# Set up voxcli on a fresh Debian/Ubuntu machine with Python 3.11+: system libraries, a virtual
# environment in .venv, PyTorch, and the package itself. Safe to run again (it skips what is done).
#   bash .ci/setup.sh          # to run voxcli
#   bash .ci/setup.sh --test   # also what the test suite uses: espeak-ng, sox, pytest, and vLLM's
#                              # CPU build in ~/.cache/voxcli/vllm-venv (.ci/vllm.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[[ "${1:-}" == "--test" ]] && with_tests=1

# PortAudio is not in sounddevice's Linux wheel: without libportaudio2 there is no microphone.
packages=(libportaudio2)
(( with_tests )) && packages+=(espeak-ng sox libsox-fmt-mp3 openssl chromium haproxy xvfb xdotool python3-tk)  # openssl: the https test server's certificate; chromium: the live page's test (driven by playwright); haproxy: replicas behind a balancer (docs/deploy.md); xvfb, xdotool, python3-tk: dictate typing into a real X11 app
python3 -m venv --help >/dev/null 2>&1 || packages+=(python3-venv)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  sudo=""; [[ "$(id -u)" == 0 ]] || sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# One tested torch release. From PyPI on Linux this is a CUDA build (what a GPU user wants).
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
if (( with_tests )); then
  .venv/bin/python -m pip install -q -e ".[test,report]"
else
  .venv/bin/python -m pip install -q -e ".[report,serve,dictate]"
fi
if (( with_tests )); then
  # The tests that run voxcli against a real vLLM server need vLLM's CPU build in its own venv
  # (~2.5 min and 3.7 GB the first time, seconds after). Where it cannot be installed, those
  # tests skip with the reason, except under CI=true, where they fail.
  bash .ci/vllm.sh >/dev/null || echo "setup: vLLM could not be installed; the vLLM server tests will not run" >&2
fi
echo "setup: ready (.venv/bin/voxcli)" >&2
