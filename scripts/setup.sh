#!/usr/bin/env bash
# Set up a fresh Debian machine for sealinfer and run the end-to-end hospital demo.
#   bash scripts/setup.sh            # install everything, then run the demo
#   bash scripts/setup.sh --no-demo  # install only (what scripts/test.sh uses)
# Idempotent: packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DEMO=1
[[ "${1:-}" == "--no-demo" ]] && RUN_DEMO=0

# System packages the product and its tests need: SoftHSM2 (PKCS#11 tests), Chromium + driver
# (dashboard end-to-end tests), poppler (pdftotext for report tests), Pango/fonts (WeasyPrint PDFs).
APT_PACKAGES=(softhsm2 opensc chromium chromium-driver poppler-utils fonts-dejavu-core
              libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 sqlite3 strace)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  echo "==> apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# torch first, pinned by constraints.txt to the local CPU wheel, so nothing pulls the CUDA build.
echo "==> pip install (torch pinned by constraints.txt)"
python3 -m pip install -q --disable-pip-version-check -c constraints.txt "torch==2.13.0"
python3 -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"

if ((RUN_DEMO)); then
  echo "==> sealinfer demo"
  python3 -m sealinfer.runtime demo --workdir demo-out
fi
