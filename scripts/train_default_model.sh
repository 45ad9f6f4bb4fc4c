#!/usr/bin/env bash
# Train the default model's four stages in a row (glidre_core/default_model/README.md), each stage
# starting from the previous one's best checkpoint, then compare the result with the embedded
# model on dev only (benchmarks/dev_compare.py: Re-DocRED dev hold-out and CoNLL04 dev, gold
# entities). No test set is read here: test is scored once, on the chosen model, with
# benchmarks/eval_test_suite.sh.
#
# Usage: bash scripts/train_default_model.sh OUT_PREFIX [--set key=value ...]
#   OUT_PREFIX   stage outputs go to OUT_PREFIX_stage{1,2,3,4}; e.g. runs/dm
#   --set ...    extra overrides for stage 1 only (the stages 2-4 configs are used as written)
# With OUT_PREFIX=runs/default_model and no --set this is exactly the model card's sequence, apart
# from the output directory names.
# A stage that finished (OUT_PREFIX_stageN/final_eval.json, written after its last step) is
# skipped, so a stopped run restarts at the first unfinished stage; that stage starts over (its
# partial output directory is removed first).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: bash scripts/train_default_model.sh OUT_PREFIX [--set key=value ...]" >&2
  exit 2
fi
PREFIX="$1"; shift
G=.venv/bin/glidre
[ -x "$G" ] || G=glidre
configs=(configs/default_model.yaml configs/default_model_entities.yaml
         configs/default_model_joint.yaml configs/default_model_relations.yaml)
previous=""
for i in 1 2 3 4; do
  out="${PREFIX}_stage${i}"
  cfg="${configs[$((i - 1))]}"
  if [ -f "$out/final_eval.json" ]; then
    echo "[$(date -u +%H:%M:%S)] stage $i: $out finished earlier, skipped"
  else
    rm -rf "$out"
    args=(--config "$cfg" --set "output_dir=$out")
    if [ "$i" = 1 ]; then
      args+=("$@")
    else
      args+=(--set "init_from=$previous/best")
    fi
    echo "[$(date -u +%H:%M:%S)] stage $i: $G train ${args[*]}"
    "$G" train "${args[@]}"
  fi
  previous="$out"
done
echo "[$(date -u +%H:%M:%S)] dev comparison (embedded default model vs ${PREFIX}_stage4)"
.venv/bin/python benchmarks/dev_compare.py default "${PREFIX}_stage4/best"
echo "[$(date -u +%H:%M:%S)] done"
