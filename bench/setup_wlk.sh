#!/usr/bin/env bash
# A separate venv with WhisperLiveKit's Voxtral backend, for bench/compare.py's `wlk` methods.
# It never touches voxcli's own environment. Usage: bash bench/setup_wlk.sh [VENV_DIR]
#   TORCH_SPEC         torch to install first (default torch==2.13.0; on a GPU machine give the
#                      CUDA build you use, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...")
#   TRANSFORMERS_SPEC  default transformers==5.23.0 (match voxcli's venv)
set -euo pipefail
VENV=${1:-/tmp/wlk-venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TRANSFORMERS_SPEC=${TRANSFORMERS_SPEC:-transformers==5.23.0}
python3 -m venv "$VENV"
# torch first, so whisperlivekit's `torch>=2.0.0` is already met and no other build is pulled in.
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q $TORCH_SPEC
"$VENV/bin/pip" install -q "whisperlivekit[voxtral-hf]==0.2.26" "$TRANSFORMERS_SPEC" "mistral-common[audio]>=1.13.1"
# whisperlivekit requires torchaudio, and PyPI's torchaudio is built against another torch: loading
# it fails (`Could not load this library: .../_torchaudio.abi3.so`), and transformers imports it
# whenever it is installed. WhisperLiveKit's Voxtral path does not use it.
"$VENV/bin/pip" uninstall -y -q torchaudio
HF_HUB_OFFLINE=1 "$VENV/bin/python" -c "import whisperlivekit.voxtral_hf_streaming, whisperlivekit.audio_processor"
echo "WhisperLiveKit venv ready: $VENV/bin/python"
