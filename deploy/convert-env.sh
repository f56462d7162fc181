#!/bin/sh
# Create the PC-side converter environment (rknn-toolkit2 2.3.2 on CPython 3.11).
#
#   deploy/convert-env.sh [VENV_DIR]      default: .venv-convert in the repository root
#
# Idempotent: a second run with unchanged pins only checks the environment. The daemon never
# needs this environment; `rkserve convert` re-executes itself into it.
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-"$REPO/.venv-convert"}
REQS="$REPO/deploy/convert-requirements.txt"
# Installed with --no-deps: see the comments in convert-requirements.txt.
TOOLKIT="rknn-toolkit2==2.3.2"
TORCH=${RKSERVE_TORCH:-"torch==2.13.0+cpu"}

say() { printf '==> %s\n' "$*"; }
die() { printf 'convert-env.sh: error: %s\n' "$*" >&2; exit 1; }

find_python() {
    if [ -n "${RKSERVE_PYTHON311:-}" ]; then echo "$RKSERVE_PYTHON311"; return; fi
    for candidate in "$HOME"/.pyenv/versions/3.11*/bin/python3.11; do
        if [ -x "$candidate" ]; then echo "$candidate"; return; fi
    done
    command -v python3.11 || true
}

START=$(date +%s)
PY=$(find_python)
[ -n "$PY" ] && "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null ||
    die "CPython 3.11 not found (looked in ~/.pyenv/versions/3.11*/bin and on PATH; set RKSERVE_PYTHON311=/path/to/python3.11). rknn-toolkit2 2.3.2 is verified on 3.11 only."

STAMP="$VENV/.rkserve-convert-stamp"
WANT=$(cat "$REQS"; echo "$TOOLKIT $TORCH $REPO")
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/python" ]; then
    say "$VENV is up to date; checking it"
else
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV with $PY"
        "$PY" -m venv "$VENV"
    fi
    VPIP="$VENV/bin/python -m pip --disable-pip-version-check"
    say "installing the pinned set from deploy/convert-requirements.txt"
    $VPIP install -q -r "$REQS"
    say "installing $TORCH (CPU build) and $TOOLKIT without their dependency pins"
    $VPIP install -q --no-deps "$TORCH" "$TOOLKIT" ||
        die "could not install $TORCH: if no local wheel is configured, rerun with PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu"
    say "installing rkserve from $REPO (editable)"
    $VPIP install -q --no-deps -e "$REPO"
    printf '%s' "$WANT" >"$STAMP"
fi

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import rknn.api  # noqa: F401  (fails here, not in the middle of a conversion)
import rkserve.cli, rkserve.convert.flow  # noqa: F401  (rkserve imports here too)
names = ("rknn-toolkit2", "torch", "numpy", "onnx", "onnxruntime", "opencv-python-headless")
print("==> ok: " + ", ".join(f"{n} {md.version(n)}" for n in names))
PY
say "converter environment ready in $(( $(date +%s) - START )) s: $VENV"
