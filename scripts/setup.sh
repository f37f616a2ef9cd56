#!/usr/bin/env bash
# Creates .venv and installs slicewise into it from the hash-pinned lock, so an install today and one in
# a month get the same bytes. Usage: scripts/setup.sh [EXTRAS], EXTRAS a comma-separated list of test, ray
#   requirements.lock (serve) / requirements-ray.lock (with the ray extra, for --runner ray) /
#   requirements-test.lock (with the test and ray extras): made by scripts/lock.sh
# On a GPU server set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu128) first: torch and its
# CUDA libraries then come from that index (pinned to torch==2.13.0 by version, not by hash); see README.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
lock=requirements.lock
for extra in ${extras//,/ }; do
    case "$extra" in
        test) lock=requirements-test.lock ;;  # holds the ray extra too
        ray) [ "$lock" = requirements-test.lock ] || lock=requirements-ray.lock ;;
        *) echo "setup.sh: unknown extra '$extra' (use a comma-separated list of: test, ray)" >&2; exit 2 ;;
    esac
done
if [ ! -x .venv/bin/python ] || [ ! -x .venv/bin/pip ]; then
    rm -rf .venv
    python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
pip=(.venv/bin/pip install --quiet --disable-pip-version-check)
quiet() { grep -v "^WARNING: Location" || true; }
# pip first, from its own lock: the pip a new venv bundles (23.2 with Python 3.11) rejects a hash-locked package
# that another wants with an extra (pip-audit's CacheControl[filecache]) once the index holds a newer release
"${pip[@]}" --require-hashes -r requirements-pip.lock 2>&1 | quiet
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" torch==2.13.0 --index-url "$TORCH_INDEX_URL" 2>&1 | quiet
    without_torch="$(mktemp)"
    trap 'rm -f "$without_torch"' EXIT
    awk '/^torch==/ {skip=1; next} skip && /^[ \t]/ {next} {skip=0; print}' "$lock" > "$without_torch"
    lock="$without_torch"
fi
"${pip[@]}" --require-hashes -r "$lock" 2>&1 | quiet
# the project itself, without resolving anything: every dependency came from the lock above
if ! out="$("${pip[@]}" --no-deps --no-build-isolation -e . 2>&1)"; then echo "$out" >&2; exit 1; fi
.venv/bin/python -c "import torch, fastapi, gradio, nibabel, SimpleITK, highdicom, argon2" \
    || { echo "setup failed: slicewise's dependencies did not install (is $lock older than pyproject.toml? rerun scripts/lock.sh)" >&2; exit 1; }
