#!/usr/bin/env bash
# Set up (with test packages and chromium), then run the test suite; extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --dev
exec .venv/bin/python -m pytest "$@"
