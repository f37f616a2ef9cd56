#!/usr/bin/env bash
# Known vulnerabilities in the locked dependencies: pip-audit (pinned in the test extra) against the lock
# file, strict (a dependency that cannot be audited fails too). Usage: scripts/audit.sh [lock file]
# It asks PyPI's vulnerability data (https://pypi.org/pypi/NAME/VERSION/json). Where that cannot be
# reached (offline, or a registry mirror without it) it says so and skips, so tests still run offline.
set -euo pipefail
cd "$(dirname "$0")/.."
lock="${1:-requirements-test.lock}"
first="$(grep -m1 -oE '^[A-Za-z0-9_.-]+==[^ ]+' "$lock")"
if ! reason="$(.venv/bin/python - "${first%%==*}" "${first#*==}" <<'PY'
import sys, urllib.error, urllib.request
url = f"https://pypi.org/pypi/{sys.argv[1]}/{sys.argv[2]}/json"
try:
    urllib.request.urlopen(url, timeout=15).close()
except urllib.error.HTTPError as exc:
    print(f"{url} answered HTTP {exc.code}", end="")
    sys.exit(1)
except OSError as exc:
    print(f"{url} is unreachable ({exc})", end="")
    sys.exit(1)
PY
)"; then
    echo "pip-audit SKIPPED: PyPI's vulnerability data cannot be read from here: $reason." >&2
    echo "  Run 'bash scripts/audit.sh' on a machine that reaches pypi.org to check $lock." >&2
    exit 0
fi
audited="$(mktemp)"
trap 'rm -f "$audited"' EXIT
# the CPU build of torch carries a local version (2.13.0+cpu); its advisories are those of 2.13.0
sed -E 's/^(torch==[0-9.]+)\+[A-Za-z0-9.]+/\1/' "$lock" > "$audited"
.venv/bin/pip-audit --strict --disable-pip --no-deps --progress-spinner off -r "$audited"
