#!/usr/bin/env bash
# Fresh machine -> running app: installs into .venv, then `slicewise serve` (args pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/slicewise serve "$@"
