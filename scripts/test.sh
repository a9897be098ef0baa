#!/usr/bin/env bash
# Run the whole test suite on this machine (installs what the tests need first).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/runtime -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-demo
python3 -m ruff check .
# pytest exits 5 when it collected no tests; set -e turns that into a failure.
python3 -m pytest "$@"
