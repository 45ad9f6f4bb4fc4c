#!/usr/bin/env bash
# Score one model on the TEST sets with the same commands the README reports (run once per
# chosen model; choices are made on dev). Writes PREFIX_{redocred_test,redocred_ner,
# redocred_joint_strict,redocred_joint_relaxed,conll04_ner,conll04_joint,
# conll04_relation_given_entities}.json.
# Usage: bash benchmarks/eval_test_suite.sh MODEL PREFIX [all|conll04]
#   e.g. default benchmarks/results/default_model; `conll04` scores only the CoNLL04 test set
#   (for a CoNLL04 model such as configs/conll04_mpnet.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="$1"; P="$2"; SETS="${3:-all}"; G=.venv/bin/glidre; D=../shared/data
case "$SETS" in all|conll04) ;; *) echo "third argument: all or conll04, not '$SETS'" >&2; exit 2;; esac
if [ "$SETS" = all ]; then
$G evaluate --model "$MODEL" --data $D/redocred/test_revised.json --format docred \
  --train-facts $D/redocred/dev_revised.json --output-json "${P}_redocred_test.json"
$G evaluate --task ner --model "$MODEL" --data $D/redocred/test_revised.json --format docred --output-json "${P}_redocred_ner.json"
for m in strict relaxed; do
  $G evaluate --task joint --model "$MODEL" --data $D/redocred/test_revised.json --format docred --match $m \
    --output-json "${P}_redocred_joint_${m}.json"
done
fi
# CoNLL04 mentions over the corpus tokens (the default for conll04, SpERT's unit), and character-exact
for task in ner joint; do
  $G evaluate --task $task --model "$MODEL" --data $D/conll04/conll04_test.json --format conll04 --output-json "${P}_conll04_${task}.json"
  $G evaluate --task $task --model "$MODEL" --data $D/conll04/conll04_test.json --format conll04 --spans chars \
    --output-json "${P}_conll04_${task}_chars.json"
done
$G evaluate --model "$MODEL" --data $D/conll04/conll04_test.json --format conll04 \
  --output-json "${P}_conll04_relation_given_entities.json"
