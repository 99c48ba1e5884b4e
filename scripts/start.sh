#!/usr/bin/env bash
# Set up if needed, then serve the app on http://127.0.0.1:8501 (opens on the bundled benzene sample).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/python -m streamlit run app.py --server.address 127.0.0.1 --browser.gatherUsageStats false "$@"
