# Sourced by scripts/dev and scripts/test: makes .venv/ with the project installed, once.
# Needs only Python 3.11+. On Debian/Ubuntu without python3-venv it creates the venv without
# pip and installs pip from its PyPI wheel.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/.venv"

find_python() {
    for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
    exit 1
}

if [ ! -x "$VENV/bin/python" ]; then
    python=$(find_python)
    echo "creating $VENV with $python" >&2
    if [ -n "${BOOTSTRAP_WITHOUT_ENSUREPIP:-}" ] || ! "$python" -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        "$python" -m venv --without-pip "$VENV"
        "$VENV/bin/python" "$ROOT/scripts/install_pip.py"
    fi
fi
# The runtime dependencies at the versions the image pins (requirements.lock), so tests and
# type checks see what production runs; the test tools at their newest compatible releases.
if [ ! -f "$VENV/.installed" ] || [ "$ROOT/pyproject.toml" -nt "$VENV/.installed" ] ||
    [ "$ROOT/requirements.lock" -nt "$VENV/.installed" ]; then
    echo "installing the project and its test tools into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$ROOT/requirements.lock" -e "$ROOT[dev]"
    touch "$VENV/.installed"
fi
