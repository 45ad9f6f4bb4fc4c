#!/usr/bin/env bash
# The main job on a laptop: extract triplets from the bundled sample corpus (data/sample/docs.jsonl,
# 40 DocRED test documents) with the embedded default model on a local Ray, then print a summary.
# Extra arguments are passed to `glidre extract` (e.g. --num-actors 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
.venv/bin/glidre extract --config configs/extract.yaml \
  --input data/sample/docs.jsonl --output outputs/sample --model default --labels redocred --overwrite "$@"
.venv/bin/python - <<'PY'
import pyarrow.parquet as pq
t = pq.read_table("outputs/sample/triplets").to_pandas()
cols = ["doc_id", "head_text", "relation", "tail_text", "score"]
print(f"\n{len(t)} triplets; the 10 highest-scoring:")
print(t.sort_values("score", ascending=False)[cols].head(10).to_string(index=False))
PY
