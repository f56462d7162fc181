#!/usr/bin/env bash
# Build (or reuse) the emulated boards the `emulated` tests run on: an arm64 Debian bookworm
# userland run with qemu-aarch64-static -L, the aarch64 wheels of the daemon's dependencies and
# of each rknn-toolkit-lite2 release (one folder each), and board roots holding the files a
# real RK3568/RK3588 has plus the stand-in librknnrt.so (standin/). See tests/emulated/README.md.
#
#   tests/emulated/build.sh [--python PY] [--out DIR]
#
# Needs: qemu-user-static, mmdebstrap, gcc-aarch64-linux-gnu (apt), pip access to PyPI.
# Everything lands in DIR (default .emulated/, ignored by git) and is rebuilt only when an
# input of the build changed (DIR/stamp). Exit status 3: a tool is missing (tests skip).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="$REPO/.emulated"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
while [ $# -gt 0 ]; do
    case "$1" in
        --python) PYTHON="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

LITE2_RELEASES="2.3.0 2.3.2 2.5.0"      # the seed board's, the converter's, the newest
DEPS="numpy opencv-python-headless pyzmq msgpack prometheus-client PyYAML psutil ruamel.yaml"
SUITE=bookworm
# librknnrt releases the stand-in is built as: version=build id (as in Rockchip's files)
RUNTIMES="1.5.0=e6fe0c678@2023-05-25T08:09:20 2.3.0=c949ad889d@2024-11-07T11:35:33 2.3.2=429f97ae6b@2025-04-09T09:09:27"

missing=""
for tool in qemu-aarch64-static:qemu-user-static mmdebstrap:mmdebstrap \
            aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing="$missing ${tool#*:}"
done
if [ -n "$missing" ]; then
    echo "emulated board: missing tools; apt-get install$missing" >&2
    exit 3
fi
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

stamp="$( (cat "$0" "$HERE"/standin/*.c "$HERE"/standin/*.h "$HERE/fixtures.py" \
            "$REPO/tests/boards.py"; echo "$LITE2_RELEASES $DEPS $SUITE $RUNTIMES") | sha256sum | cut -c1-16)"
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$stamp" ]; then
    echo "emulated board: up to date in $OUT"
    exit 0
fi
started=$SECONDS
rm -rf "$OUT/userland" "$OUT/site" "$OUT/lib" "$OUT/boards" "$OUT/stamp"

echo "emulated board: arm64 $SUITE userland"
mmdebstrap --quiet --variant=extract --arch=arm64 --include=python3,libstdc++6 "$SUITE" "$OUT/userland"
# --variant=extract runs no install scripts, so nothing compiled the standard library: do it
# here (bytecode does not depend on the CPU) instead of in every emulated process
if "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    "$PYTHON" -m compileall -q -j0 "$OUT/userland/usr/lib/python3.11" >/dev/null 2>&1 || true
fi

echo "emulated board: aarch64 wheels"
pip_target() {  # DIR PACKAGE...
    local dir="$1"; shift
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --target "$dir" \
        --platform manylinux2014_aarch64 --only-binary=:all: --python-version 3.11 "$@"
}
pip_target "$OUT/site/deps" $DEPS
for release in $LITE2_RELEASES; do
    pip_target "$OUT/site/lite2-$release" --no-deps "rknn-toolkit-lite2==$release"
done

echo "emulated board: stand-in librknnrt.so"
mkdir -p "$OUT/lib"
reference="${RKSERVE_SHARED:-$REPO/../shared}/reference/rknn-toolkit2/rknpu2/runtime/Linux/librknn_api/include"
if [ -f "$reference/rknn_api.h" ]; then  # the stand-in's structs against Rockchip's header
    for header in rknn_abi.h rknn_api.h; do
        aarch64-linux-gnu-gcc -static -O0 "-DABI_HEADER=\"$header\"" -I"$HERE/standin" \
            -I"$reference" "$HERE/standin/abi_check.c" -o "$OUT/lib/abi-$header"
        qemu-aarch64-static "$OUT/lib/abi-$header" >"$OUT/lib/abi-$header.txt"
    done
    diff "$OUT/lib/abi-rknn_abi.h.txt" "$OUT/lib/abi-rknn_api.h.txt" >&2 ||
        { echo "emulated board: the stand-in's ABI differs from rknn_api.h" >&2; exit 1; }
fi
for runtime in $RUNTIMES; do
    aarch64-linux-gnu-gcc -shared -fPIC -O2 -Wall -Wextra -Werror -Wno-format-truncation \
        -fvisibility=hidden -DSTANDIN_VERSION="\"${runtime%%=*}\"" \
        -DSTANDIN_BUILD="\"${runtime#*=}\"" -o "$OUT/lib/librknnrt-${runtime%%=*}.so" \
        "$HERE/standin/standin.c" "$HERE/standin/sha256.c" -lm -lpthread
done

# qemu-user 7.2 does not apply -L to faccessat: os.access() would look at the host
aarch64-linux-gnu-gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o "$OUT/userland/usr/lib/qemu-access.so" \
    "$HERE/standin/qemu_access.c"

echo "emulated board: board roots"
board() {  # NAME SOC LIBRKNNRT RKNN_SERVER DRIVER [fixtures.py options...]
    local root="$OUT/boards/$1"
    mkdir -p "$OUT/boards"
    cp -al "$OUT/userland" "$root"  # hard links: the fixtures below are new files
    PYTHONPATH="$REPO:$REPO/tests" "$PYTHON" "$HERE/fixtures.py" "$root" \
        --soc "$2" --librknnrt "$OUT/lib/librknnrt-$3.so" --rknn-server "$4" --driver "$5" "${@:6}"
}
board rk3568-seed rk3568 1.5.0 2.3.0 0.8.2   # the seed board as found
board rk3568 rk3568 2.3.0 2.3.0 0.8.2        # ...after its runtime update
board rk3588 rk3588 2.3.2 2.3.2 0.9.8        # a three-core NPU
# the boards people really have (docs/CONTAINERS.md, docs/DOCTOR.md)
board rk3568-renderD128 rk3568 2.3.0 2.3.0 0.8.2 --device dev/dri/renderD128  # no GPU driver
board rk3568-rknpu rk3568 2.3.0 2.3.0 0.8.2 --device dev/rknpu   # an older vendor kernel
board rk3588-rocket rk3588 2.3.2 2.3.2 none --device dev/accel/accel0 --npu-driver rocket
board rk3588f rk3588f 2.3.2 2.3.2 0.9.8 --compatible radxa,rock-5c   # a Rock 5C

echo "$stamp" >"$OUT/stamp"
echo "emulated board: built in $((SECONDS - started)) s in $OUT"
