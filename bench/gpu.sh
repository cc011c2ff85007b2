#!/usr/bin/env bash
# The GPU check in one command, for a GPU machine lent for minutes with no network (bench/README.md):
# install the wheels carried beside the repo in .whl/ (if any), then run bench/gpu.py compiled-first
# within 480 s, one JSON line per finished phase in ${OUT:-.}/gpu.jsonl (a kill keeps what was done):
# each path's step, what warm-up compiled and recorded (and why compiling fell back, if it did), graphs
# after warm-up (must be 0), the static step's bf16 logits against transformers', on_eos restart vs pad;
# then the gpu-marked tests (no graph after warm-up; bf16 runs compared within the measured noise).
#   bash bench/gpu.sh                 # full size, bfloat16, cuda
#   BUDGET_S=300 bash bench/gpu.sh    # a shorter window
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu.sh: installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout "$(( ${BUDGET_S:-480} + 60 ))" python3 bench/gpu.py --paths compiled,static,hf --budget-s "${BUDGET_S:-480}" \
  --json "$out/gpu.jsonl" > "$out/gpu.json"
status=$?
timeout 150 python3 -m pytest -q -m gpu tests/test_static.py tests/test_batched.py tests/test_keyterms.py tests/test_engine.py \
  2>&1 | tail -n 15
echo "gpu.sh: bench exit $status; phases in $out/gpu.jsonl" >&2
exit $status
