#!/usr/bin/env bash
# Run the fast test subset under another Python version, in its own venv .venv-pyVERSION.
#
#   bash scripts/test_python.sh 3.12            # fast subset: -m "not slow"
#   bash scripts/test_python.sh 3.13 tests/test_metrics.py -x
#   bash scripts/test_python.sh 3.13 -m ""      # the whole suite
#
# The venv is installed exactly like scripts/setup.sh (torch at its exact pin first, then
# -e ".[test]") and is idempotent: a stamp file skips the install when pyproject.toml and this
# script are unchanged. Extra arguments go to pytest after -m "not slow" (the fast subset: no
# real pretrained encoder, no Ray Train runs, no real `glidre extract` subprocess jobs); give
# your own -m to change that (-m "" runs the whole suite).
# CI (.ci/run) keeps testing only the Python of scripts/setup.sh (3.11); this is a manual check.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:?usage: scripts/test_python.sh VERSION [pytest args]   e.g. 3.12}"
shift
VENV=".venv-py${VERSION}"

# python3.X on PATH, else a pyenv installation of it (pyenv shims refuse versions not selected).
find_python() {
  local cand
  if command -v "python${VERSION}" >/dev/null 2>&1 && "python${VERSION}" -c "" >/dev/null 2>&1; then
    echo "python${VERSION}"; return
  fi
  for cand in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"${VERSION}".*/bin/"python${VERSION}"; do
    if [ -x "$cand" ]; then echo "$cand"; return; fi
  done
  return 1
}

STAMP="$VENV/.glidre-installed"
want="$(cat pyproject.toml scripts/test_python.sh | sha256sum | cut -d' ' -f1)"
if ! { [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; }; then
  PY="$(find_python)" || { echo "[test_python] no python${VERSION} found (PATH or pyenv)" >&2; exit 2; }
  echo "[test_python] creating/updating $VENV with $("$PY" --version) (first time takes minutes)" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # This machine's local CPU wheel of torch 2.13.0 is cp311 only; for another Python, pip takes
  # PyPI's Linux wheel (CUDA build, ~4 GB with its nvidia-* packages) unless TORCH_INDEX_URL
  # names a CPU index (e.g. https://download.pytorch.org/whl/cpu) where that is reachable.
  "$VENV/bin/python" -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  echo "$want" > "$STAMP"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
"$VENV/bin/python" --version >&2
# the fast subset unless the arguments choose markers themselves (-m "" runs everything)
case " $* " in
  *" -m "*|*" -m="*) ;;
  *) set -- -m "not slow" "$@" ;;
esac
exec "$VENV/bin/python" -m pytest "$@"
