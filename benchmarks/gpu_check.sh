#!/usr/bin/env bash
# The GPU checks of the batched-core issue, as one script for the device machine.
#
# Here (once):   bash ../shared/gpu/prepare.sh          # builds .gpu/ (wheels, MiniLM tokenizer+config, data)
# On the device: bash benchmarks/gpu_check.sh            # with ".gpu" carried; results under $OUT
# Local dry run: DEVICE=cpu QUICK=1 GPU_ENV_SKIP_WHEELS=1 OUT=/tmp/gpu_dry bash benchmarks/gpu_check.sh
#
# What it measures (the embedded weights cannot load there, so the model is the default
# architecture with random heads, `--model fresh`; speed and memory only):
#   1. model_benchmark: predict / encoder stage / bare encoder docs/s at batch 8, 32, 64 in fp32 and
#      bf16 (target: predict >= 0.5 of the bare encoder at batch 32 bf16; encoder stage >= 0.8),
#      and the encoder stage per SDPA backend (efficient, flash, cudnn, math);
#   2. train_throughput: full fine-tuning with the joint loss, batch 8, bf16 (target: step >= 0.5
#      of the bare encoder's forward+backward).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-benchmarks/results/gpu}"
PY="${PY:-python3}"
mkdir -p "$OUT"
if [ "${QUICK:-0}" = 1 ]; then
  SPEED="--speed-docs 16 --reps 1 --batch-sizes 8 --precisions fp32 --profile-docs 8 --profile-batch-sizes 8"
  MEM="--entities 10,50"; TRAIN="--docs 8 --reps 1"; LIM=900
else
  SPEED="--speed-docs 512 --reps 3 --batch-sizes 8,32,64 --precisions fp32,bf16 --profile-docs 64 --profile-batch-sizes 8,32"
  MEM="--entities 10,100,300,1000"; TRAIN="--docs 64 --reps 3"; LIM=${STEP_LIMIT_S:-240}
fi
# a focused rerun may override the arguments: SPEED_ARGS, SDPA (backends, "" = none), TRAIN_ARGS, MEMORY=0
SPEED="${SPEED_ARGS:-$SPEED}"; TRAIN="${TRAIN_ARGS:-$TRAIN}"; SDPA="${SDPA-efficient,flash,cudnn,math}"
run() { timeout "$LIM" "$PY" .gpu/gpu_env.py -- "$@"; }
{ nvidia-smi || true; "$PY" -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())"; } > "$OUT/device.txt" 2>&1
# the pinned transformers travels in .gpu/whl when prepared with WITH_TRANSFORMERS=1; should it not import
# beside the device's own packages, fall back to the device's transformers (logged in device.txt)
if ! run "$PY" -c "import transformers, glidre_core.modeling.glidre; print('transformers', transformers.__version__)" >> "$OUT/device.txt" 2>&1; then
  echo "pinned transformers failed to import; using the device's own" >> "$OUT/device.txt"
  rm -f .gpu/whl/transformers-*.whl; rm -rf "${TMPDIR:-/tmp}"/gpu_site/transformers*
  run "$PY" -c "import transformers, glidre_core.modeling.glidre; print('transformers', transformers.__version__)" >> "$OUT/device.txt" 2>&1
fi
status=0
# each step has its own time limit and its own output files, so one failure or overrun keeps the others
# shellcheck disable=SC2086
run "$PY" benchmarks/model_benchmark.py --device "$DEVICE" --model fresh --sections speed $SPEED \
  --sdpa-backends "$SDPA" --out-dir "$OUT/speed" > "$OUT/model_speed.log" 2>&1 || status=1
# shellcheck disable=SC2086
run "$PY" benchmarks/train_throughput.py --device "$DEVICE" --batch-size 8 --bf16 on \
  --set model.trainable_encoder_layers=null --set model.span_head=true --set threads=null $TRAIN \
  --out-dir "$OUT/train" > "$OUT/train_throughput.log" 2>&1 || status=1
# shellcheck disable=SC2086
[ "${MEMORY:-1}" = 0 ] || run "$PY" benchmarks/model_benchmark.py --device "$DEVICE" --model fresh --sections memory $MEM \
  --out-dir "$OUT/memory" > "$OUT/model_memory.log" 2>&1 || status=1
tail -n 5 "$OUT"/*.log
exit $status
