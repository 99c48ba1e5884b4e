#!/usr/bin/env bash
# Idempotent setup: virtual environment, Python packages, the project (editable), offline 3Dmol.js.
#   bash scripts/setup.sh          runtime only (what scripts/start.sh needs)
#   bash scripts/setup.sh --dev    + test packages, the sgdml peer and Debian's chromium (scripts/test.sh)
# Safe to run again: every step is skipped when its result is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEV=0
for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        *) echo "setup.sh: unknown option $arg (only --dev)" >&2; exit 2 ;;
    esac
done

PY="$ROOT/.venv/bin/python"

# 1. Virtual environment.
if [ ! -x "$PY" ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi

# 2. Python packages (pip is a no-op when the pins are already satisfied).
"$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt
if [ "$DEV" = 1 ]; then
    "$PY" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
    # the peer (reference sgdml package) for its tests: torch first, so pip takes the CPU
    # wheel of torch 2.13.0 this machine kind keeps on disk (see requirements-peer.txt)
    if ! "$PY" -c "import sgdml, torch" >/dev/null 2>&1; then
        "$PY" -m pip install --quiet --disable-pip-version-check torch==2.13.0
        "$PY" -m pip install --quiet --disable-pip-version-check -r requirements-peer.txt
    fi
fi

# 2b. The project itself, editable (pyproject.toml): `import aff_app` from any folder, and the `aff-app`
#     command. --no-deps: the pinned requirements above are the tested set; --no-build-isolation: the
#     venv's setuptools builds it (no download). Skipped when this checkout is already installed.
if ! (cd / && "$PY" -c "import aff_app, sys; sys.exit(aff_app.__file__ != '$ROOT/aff_app/__init__.py')" 2>/dev/null) \
        || [ ! -x "$ROOT/.venv/bin/aff-app" ]; then
    "$PY" -m pip install --quiet --disable-pip-version-check "setuptools>=64"
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
fi

# 3. 3Dmol.js for the offline viewer: the npm package at exactly the version
#    py3Dmol loads from its CDN by default (py3Dmol's wheel ships no JavaScript).
TDM_VERSION="$("$PY" - <<'PYEOF'
import inspect, re
import py3Dmol
url = inspect.signature(py3Dmol.view.__init__).parameters["js"].default
m = re.search(r"3dmol@([0-9][0-9A-Za-z.\-]*)/", url)
print(m.group(1) if m else py3Dmol.__version__)
PYEOF
)"
TDM_DIR="$ROOT/vendor/3dmol"
TDM_JS="$TDM_DIR/package/build/3Dmol-min.js"
if [ ! -s "$TDM_JS" ] || [ "$(cat "$TDM_DIR/VERSION" 2>/dev/null)" != "$TDM_VERSION" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "setup: npm is needed once to fetch 3Dmol.js $TDM_VERSION (apt-get install -y npm)" >&2
        exit 1
    fi
    echo "setup: fetching 3dmol@$TDM_VERSION into vendor/3dmol"
    rm -rf "$TDM_DIR"
    mkdir -p "$TDM_DIR"
    (cd "$TDM_DIR" && npm pack --silent "3dmol@$TDM_VERSION" >/dev/null)
    tar -xzf "$TDM_DIR/3dmol-$TDM_VERSION.tgz" -C "$TDM_DIR" \
        package/build/3Dmol-min.js package/LICENSE package/package.json
    rm -f "$TDM_DIR/3dmol-$TDM_VERSION.tgz"
    echo "$TDM_VERSION" > "$TDM_DIR/VERSION"
fi

# 4. Browser for the end-to-end tests (never `playwright install`: Debian's chromium),
#    and an emoji font so the page icons in the screenshots are not empty boxes.
if [ "$DEV" = 1 ]; then
    MISSING=""
    [ -x /usr/bin/chromium ] || MISSING="$MISSING chromium"
    dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || MISSING="$MISSING fonts-noto-color-emoji"
    if [ -n "$MISSING" ]; then
        echo "setup: installing$MISSING (browser tests)"
        SUDO=""
        if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
        $SUDO apt-get update
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y $MISSING
    fi
fi

# 5. Byte-compile the library, as pip does for an installed package: where PYTHONDONTWRITEBYTECODE
#    is set (this machine kind) every `python -m aff_app` run would otherwise compile it again
#    (~0.05 s of a 2 s CLI fit). Sources edited later are recompiled in memory, never run stale.
"$PY" -m compileall -q aff_app >/dev/null

echo "setup: ok (3Dmol.js $TDM_VERSION)"
