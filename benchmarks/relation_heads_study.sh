#!/usr/bin/env bash
# Issue 11 point 4: stage 4 of the default model retrains the relation heads alone (encoder and
# span head frozen) to win back the given-entity relation F1 that stages 2-3 cost. One run of
# configs/default_model_relations.yaml per arm; every arm is scored on DEV only (the 50 held-out
# Re-DocRED dev documents and CoNLL04 dev) by benchmarks/span_study_report.py, with the stage-3
# model as the baseline. Rule, fixed before any test run: among the arms whose selection score
# (mean of Re-DocRED relaxed and CoNLL04 strict end-to-end F1) is at least stage 3's, the one
# with the best Re-DocRED dev given-entity F1 ships. Two CPU cores: 2-10 minutes an arm.
#   bash benchmarks/relation_heads_study.sh            # then see runs/relation_heads_study/report.json
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/relation_heads_study
CONLL='{"path": "../shared/data/conll04/conll04_train.json", "format": "conll04"'
arm() {  # arm NAME [--set ...]
  local name=$1; shift
  [ -f "$OUT/$name/best/config.json" ] || .venv/bin/glidre train --config configs/default_model_relations.yaml \
    --set "output_dir=$OUT/$name" "$@"
}
arm a_conll_w1_lr1e4_e8   --set "extra_train=[$CONLL}]" --set lr_heads=1e-4 --set epochs=8
arm b_redocred_lr1e4_e8   --set 'extra_train=[]' --set 'extra_dev=[]' --set lr_heads=1e-4 --set epochs=8
arm c_conll_w03_lr1e4_e8  --set "extra_train=[$CONLL, \"relation_weight\": 0.3}]" --set lr_heads=1e-4 --set epochs=8
arm d_redocred_lr3e4_e16  --set 'extra_train=[]' --set 'extra_dev=[]' --set lr_heads=3e-4 --set epochs=16
arm e_conll_w03_lr3e4_e16 --set "extra_train=[$CONLL, \"relation_weight\": 0.3}]" --set lr_heads=3e-4 --set epochs=16
arm f_conll_w01_lr3e4_e16 --set "extra_train=[$CONLL, \"relation_weight\": 0.1}]" --set lr_heads=3e-4 --set epochs=16
arm g_conll_w01_lr3e4_e32 --set "extra_train=[$CONLL, \"relation_weight\": 0.1}]" --set lr_heads=3e-4 --set epochs=32
arm h_conll_w01_lr1e3_e16 --set "extra_train=[$CONLL, \"relation_weight\": 0.1}]" --set lr_heads=1e-3 --set epochs=16
.venv/bin/python benchmarks/span_study_report.py --runs "$OUT" --baseline "${BASELINE:-default}" \
  --study "issue 11.4: stage-4 relation-head arms (benchmarks/relation_heads_study.sh)" \
  --output-json "$OUT/report.json"
