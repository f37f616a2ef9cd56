#!/usr/bin/env bash
# Creates .venv and installs slicewise into it. Usage: scripts/setup.sh [extras]
# On a GPU server set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu128) first: see README.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ] || [ ! -x .venv/bin/pip ]; then
    rm -rf .venv
    python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    .venv/bin/pip install --quiet torch==2.13.0 --index-url "$TORCH_INDEX_URL"
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, fastapi, gradio, nibabel, SimpleITK, highdicom" \
    || { echo "setup failed: slicewise's dependencies did not install" >&2; exit 1; }
