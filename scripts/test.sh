#!/usr/bin/env bash
# Fresh machine -> all tests: installs into .venv (with the test and ray extras), the system packages the
# browser and DICOM tests need (Debian's chromium, dicom3tools, nodejs), audits the lock
# for known vulnerabilities (scripts/audit.sh), then runs pytest (args pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,ray
# MONAI Label's own client for the compatibility tests; --no-deps: the client needs only requests (a test extra)
.venv/bin/python -c "import monailabel.client" 2>/dev/null \
    || .venv/bin/pip install --quiet --disable-pip-version-check --no-deps monailabel==0.8.5
missing=""
command -v chromium >/dev/null || missing="$missing chromium chromium-driver"
command -v dciodvfy >/dev/null || missing="$missing dicom3tools"
command -v Orthanc >/dev/null && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
    || missing="$missing orthanc orthanc-dicomweb"  # a real PACS for the DICOMweb tests (started by the tests)
command -v node >/dev/null || missing="$missing nodejs"
if [ -n "$missing" ]; then
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq && $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
bash scripts/audit.sh  # known vulnerabilities in the lock (skips, saying so, where PyPI cannot be asked)
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python -m pytest "$@"
