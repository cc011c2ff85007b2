#!/usr/bin/env bash
# The GPU check in one command, for a GPU machine lent for minutes with no network (bench/README.md):
# install the wheels carried beside the repo in .whl/ (if any), then run bench/gpu.py compiled-first
# within 480 s, one JSON line per finished phase in ${OUT:-.}/gpu.jsonl (a kill keeps what was done):
# each path's step, what warm-up compiled and recorded (and why compiling fell back, if it did), graphs
# after warm-up (must be 0), the static step's bf16 logits against transformers', on_eos restart vs pad;
# then the gpu-marked tests (no graph after warm-up; bf16 runs compared within the measured noise);
# then the server phase: the full-size model (random weights, saved once) behind `voxcli serve`, and
# N = 1, 8, 32, 64, 100, 128 paced sessions over loopback from another process (bench/serve_load.py,
# an N past the rows that fit is skipped and said): step p99, host ms per row, emission p99, sessions
# behind, in $OUT/serve_load.json; the largest N with none behind is the figure. Within 560 s in all.
#   bash bench/gpu.sh                                      # full size, bfloat16, cuda
#   BUDGET_S=200 SERVE_BUDGET_S=120 bash bench/gpu.sh      # shorter windows
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
timeout "$(( ${BUDGET_S:-270} + 30 ))" python3 bench/gpu.py --paths compiled,static,hf --budget-s "${BUDGET_S:-270}" \
  --json "$out/gpu.jsonl" > "$out/gpu.json"
status=$?
timeout 90 python3 -m pytest -q -m gpu tests/test_static.py tests/test_batched.py tests/test_keyterms.py tests/test_engine.py \
  2>&1 | tail -n 15
timeout "${SERVE_BUDGET_S:-170}" bash -c '
  python3 bench/gpu.py --save-checkpoint /tmp/voxcli-full >&2 &&
  python3 bench/serve_load.py --model /tmp/voxcli-full --ns 1,8,32,64,100,128 --seconds 8 \
    --serve-arg=--model-device --serve-arg=cuda --json "$1/serve_load.json"' _ "$out" > "$out/serve_load.txt" 2>&1
echo "gpu.sh: server phase exit $?; $out/serve_load.json (table in $out/serve_load.txt)" >&2
echo "gpu.sh: bench exit $status; phases in $out/gpu.jsonl" >&2
exit $status
