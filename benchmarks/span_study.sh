#!/usr/bin/env bash
# Issue 11.1: the span-representation study. Trains configs/default_model_joint.yaml once per
# representation (same seed, same step budget), then writes the dev comparison
# (benchmarks/results/span_study.json). Dev data only; the test sets are not read.
# Usage: bash benchmarks/span_study.sh [ARM ...]   (2 shared CPU cores: 20-30 minutes per arm)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
ARMS=("$@"); [ ${#ARMS[@]} -gt 0 ] || ARMS=(endpoints_content_width endpoints endpoints_width)
for arm in "${ARMS[@]}"; do
  echo "[span_study] $(date -u +%FT%TZ) arm $arm" >&2
  .venv/bin/glidre train --config configs/default_model_joint.yaml \
    --set model.span_representation="$arm" --set model.span_word_shape=false --set output_dir="runs/span_study/$arm"
done
$PY benchmarks/span_study_report.py --runs runs/span_study --output-json benchmarks/results/span_study.json
