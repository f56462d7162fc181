#!/usr/bin/env bash
# Install rkserve as a systemd service on a board (run as root), or into a staging root.
# Run with --help for the options. Safe to run again: what is already in place is left alone.
set -eu

usage() {
    cat <<'EOF'
Usage: deploy/install.sh [OPTIONS]
       deploy/install.sh --uninstall [--purge] [--root DIR]

Install rkserve on this board: system user "rkserve" (groups video, render), a virtual
environment in /opt/rkserve/venv, /etc/rkserve/{rkserve.yaml,rkserve.env}, the model
repository /var/lib/rkserve/models and /etc/systemd/system/rkserve.service, then enable
and start the service. Running it again changes nothing that is already in place; existing
configuration and models are never overwritten.

Options:
  --wheel FILE            install this rkserve wheel (default: the source tree around
                          this script)
  --python PY             interpreter for the venv (default: python3; needs >= 3.8)
  --system-site-packages  let the venv see the system's Python packages (e.g. apt's
                          python3-numpy, python3-opencv)
  --no-deps               install rkserve without its Python dependencies
  --no-venv               do not create the venv nor install the package
  --no-start              enable the service but do not start or restart it
  --root DIR              install under DIR instead of / (also: DESTDIR=DIR); no user
                          is created and systemctl is not run: the script prints what
                          it would do instead
  --uninstall             remove what was installed (listed in the install manifest);
                          configuration and models are kept
  --purge                 with --uninstall: also remove configuration, models and the
                          rkserve user
  -h, --help              show this help
EOF
}

die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

SRC=$(cd "$(dirname "$0")/.." && pwd)
# A PYTHONPATH of the calling shell would make pip see (and skip) some other rkserve.
unset PYTHONPATH PYTHONHOME
ROOT=${DESTDIR:-}
WHEEL=""
PYTHON=python3
SYSTEM_SITE=0
DEPS=1
VENV=1
START=1
ACTION=install
PURGE=0

while [ $# -gt 0 ]; do
    case "$1" in
        --wheel) [ $# -ge 2 ] || die "--wheel needs a FILE"; WHEEL=$2; shift ;;
        --wheel=*) WHEEL=${1#*=} ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PYTHON=$2; shift ;;
        --python=*) PYTHON=${1#*=} ;;
        --root) [ $# -ge 2 ] || die "--root needs a DIR"; ROOT=$2; shift ;;
        --root=*) ROOT=${1#*=} ;;
        --system-site-packages) SYSTEM_SITE=1 ;;
        --no-deps) DEPS=0 ;;
        --no-venv) VENV=0 ;;
        --no-start) START=0 ;;
        --uninstall) ACTION=uninstall ;;
        --purge) ACTION=uninstall; PURGE=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

# The layout on the target system (prefixed with ROOT when staging).
OPT=/opt/rkserve
VENV_DIR=$OPT/venv
ETC=/etc/rkserve
STATE=/var/lib/rkserve
MODELS=$STATE/models
UNIT=/etc/systemd/system/rkserve.service
# Lists what this script created, so that uninstall removes exactly that.
MANIFEST=$STATE/.install-manifest
SERVICE_USER=rkserve
SERVICE_GROUPS="video render"

if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" = / ] && ROOT=""
fi

CHANGES=0
NEW_MANIFEST=$(mktemp)
STAGE=""
cleanup() {
    rm -f "$NEW_MANIFEST"
    [ -z "$STAGE" ] || rm -rf "$STAGE"
}
trap cleanup EXIT

r() { printf '%s%s' "$ROOT" "$1"; }
say() { printf '  %-10s %s\n' "$1" "$2"; }
changed() {
    CHANGES=$((CHANGES + 1))
    say "$1" "$2"
}
record() { printf '%s %s\n' "$1" "$2" >>"$NEW_MANIFEST"; }
staging() { [ -n "$ROOT" ]; }
# What a staging install leaves to the real system, shown instead of done.
would() { say "would run" "$*"; }
systemd_running() { ! staging && [ -d /run/systemd/system ]; }

# --- install -------------------------------------------------------------------------------

ensure_dir() { # PATH MODE
    if [ -d "$(r "$1")" ]; then
        return 0
    fi
    mkdir -p "$(r "$1")"
    chmod "$2" "$(r "$1")"
    changed created "$1/"
}

put_file() { # SOURCE DEST MODE: install or replace, only when the content differs
    local dest
    dest=$(r "$2")
    if [ -f "$dest" ] && cmp -s "$1" "$dest"; then
        say unchanged "$2"
    elif [ -e "$dest" ]; then
        install -m "$3" "$1" "$dest"
        changed updated "$2"
    else
        install -m "$3" "$1" "$dest"
        changed installed "$2"
    fi
    record file "$2"
}

put_config() { # SOURCE DEST MODE: install once; an existing file is the admin's
    if [ -e "$(r "$2")" ]; then
        say unchanged "$2 (exists: kept as is)"
    else
        install -m "$3" "$1" "$(r "$2")"
        changed installed "$2"
        record config "$2"
    fi
}

nologin_shell() {
    for shell in /usr/sbin/nologin /sbin/nologin /bin/false; do
        [ -x "$shell" ] && { echo "$shell"; return; }
    done
    echo /bin/false
}

ensure_user() {
    local group
    if staging; then
        would "groupadd --system video/render (if missing)"
        would "useradd --system --user-group -G ${SERVICE_GROUPS// /,} $SERVICE_USER"
        return
    fi
    for group in $SERVICE_GROUPS; do
        if ! getent group "$group" >/dev/null; then
            groupadd --system "$group"
            changed created "group $group"
            record group "$group"
        fi
    done
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        useradd --system --user-group --home-dir "$STATE" --no-create-home \
            --shell "$(nologin_shell)" --comment "rkserve inference daemon" \
            --groups "${SERVICE_GROUPS// /,}" "$SERVICE_USER"
        changed created "user $SERVICE_USER"
        record user "$SERVICE_USER"
        return
    fi
    for group in $SERVICE_GROUPS; do
        if ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx "$group"; then
            usermod -a -G "$group" "$SERVICE_USER"
            changed added "user $SERVICE_USER to group $group"
        fi
    done
}

check_python() {
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (use --python)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 8))' ||
        die "rkserve needs Python >= 3.8; $PYTHON is $("$PYTHON" -V 2>&1)"
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
        die "$PYTHON cannot create virtual environments (Debian/Ubuntu: apt-get install python3-venv)"
}

# Copy the parts of the source tree that make the package, so that pip never writes build
# files into the tree, and so that the copy's checksum says whether anything changed.
stage_source() {
    STAGE=$(mktemp -d)
    [ -f "$SRC/pyproject.toml" ] && [ -d "$SRC/rkserve" ] ||
        die "$SRC is not an rkserve source tree (or use --wheel)"
    tar -C "$SRC" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml rkserve |
        tar -C "$STAGE" -xf -
    if [ -f "$SRC/README.md" ]; then
        cp "$SRC/README.md" "$STAGE/"
    else
        echo "rkserve" >"$STAGE/README.md" # pyproject.toml names it as the readme
    fi
}

tree_checksum() { # DIR
    (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum |
        cut -d' ' -f1)
}

install_package() {
    local venv target source stamp
    venv=$(r "$VENV_DIR")
    if [ ! -x "$venv/bin/python" ]; then
        if [ "$SYSTEM_SITE" = 1 ]; then
            "$PYTHON" -m venv --system-site-packages "$venv"
        else
            "$PYTHON" -m venv "$venv"
        fi
        changed created "$VENV_DIR ($("$venv/bin/python" -V 2>&1))"
    fi
    record venv "$VENV_DIR"
    if [ -n "$WHEEL" ]; then
        [ -f "$WHEEL" ] || die "no such wheel: $WHEEL"
        target=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")
        source="wheel $(basename "$WHEEL") $(sha256sum <"$target" | cut -d' ' -f1)"
    else
        stage_source
        target=$STAGE
        source="source $SRC $(tree_checksum "$STAGE")"
    fi
    stamp=$venv/.rkserve-install-source
    if [ -x "$venv/bin/rkserve" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$source" ]; then
        say unchanged "rkserve in $VENV_DIR"
        return
    fi
    # Same version number, new code: pip would keep the old files, so remove them first.
    "$venv/bin/python" -m pip uninstall -y -q rkserve >/dev/null 2>&1 || true
    if [ "$DEPS" = 1 ]; then
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "$target"
    else
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$target"
    fi
    printf '%s\n' "$source" >"$stamp"
    changed installed "rkserve in $VENV_DIR (from ${source%% *})"
}

install_models() {
    local folder count=0
    if [ -d "$(r "$MODELS")" ]; then
        say unchanged "$MODELS/ (exists: models kept as they are)"
        record data "$MODELS"
        return
    fi
    mkdir -p "$(r "$MODELS")"
    for folder in "$SRC"/models/*/; do
        [ -f "$folder/model.yaml" ] || continue
        cp -R "$folder" "$(r "$MODELS")/"
        count=$((count + 1))
    done
    staging || chown -R "$SERVICE_USER:" "$(r "$MODELS")" # "user:" = and its login group
    changed created "$MODELS/ ($count demo model(s) from $SRC/models)"
    record data "$MODELS"
}

# Keep what earlier runs recorded (a config file created then is still ours), add this run's.
write_manifest() {
    local path merged
    path=$(r "$MANIFEST")
    merged=$(mktemp)
    { [ ! -f "$path" ] || cat "$path"; cat "$NEW_MANIFEST"; } | LC_ALL=C sort -u >"$merged"
    if [ -f "$path" ] && cmp -s "$merged" "$path"; then
        rm -f "$merged"
        return
    fi
    if [ -f "$path" ]; then
        changed updated "$MANIFEST"
    else
        changed created "$MANIFEST"
    fi
    install -m 0644 "$merged" "$path"
    rm -f "$merged"
}

start_service() { # TOUCHED: 1 when the package, configuration or unit changed
    if staging; then
        [ "$1" = 0 ] || would "systemctl daemon-reload"
        if [ "$START" = 1 ]; then
            would "systemctl enable --now rkserve"
        else
            would "systemctl enable rkserve"
        fi
        return
    fi
    if ! systemd_running; then
        say skipped "systemctl (systemd is not running here)"
        return
    fi
    [ "$1" = 0 ] || systemctl daemon-reload
    if ! systemctl is-enabled --quiet rkserve; then
        systemctl enable --quiet rkserve
        changed enabled rkserve.service
    fi
    [ "$START" = 1 ] || return 0
    if ! systemctl is-active --quiet rkserve; then
        systemctl start rkserve
        changed started rkserve.service
    elif [ "$1" = 1 ]; then
        systemctl restart rkserve
        changed restarted rkserve.service
    fi
}

do_install() {
    local before touched=0
    if ! staging && [ "$(id -u)" != 0 ]; then
        die "run as root (or use --root DIR to stage an install)"
    fi
    [ -f "$SRC/systemd/rkserve.service" ] || die "$SRC/systemd/rkserve.service is missing"
    echo "Installing rkserve into ${ROOT:-/}"
    ensure_user
    ensure_dir "$OPT" 0755
    ensure_dir "$ETC" 0755
    ensure_dir "$STATE" 0755
    ensure_dir /etc/systemd/system 0755
    before=$CHANGES
    if [ "$VENV" = 1 ]; then
        check_python
        install_package
    else
        say skipped "venv and package (--no-venv)"
    fi
    put_config "$SRC/deploy/rkserve.yaml" "$ETC/rkserve.yaml" 0644
    put_config "$SRC/systemd/rkserve.env" "$ETC/rkserve.env" 0640
    install_models
    put_file "$SRC/systemd/rkserve.service" "$UNIT" 0644
    [ "$CHANGES" = "$before" ] || touched=1
    write_manifest
    start_service "$touched"
    if [ "$CHANGES" = 0 ]; then
        echo "rkserve: unchanged (everything was already in place)"
    else
        echo "rkserve: installed ($CHANGES change(s))"
    fi
}

# --- uninstall -----------------------------------------------------------------------------

# Refuse to delete anything outside rkserve's own places, whatever the manifest says.
ours() {
    case "$1" in
        *..*) return 1 ;;
        "$OPT" | "$OPT"/* | "$ETC"/* | "$MODELS" | "$MODELS"/* | "$UNIT") return 0 ;;
        *) return 1 ;;
    esac
}

remove() { # KIND PATH: prints the manifest line again when it is kept
    case "$1" in
        file | venv)
            ours "$2" || die "manifest entry outside rkserve's directories: $2"
            rm -rf "$(r "$2")"
            changed removed "$2"
            ;;
        config | data)
            ours "$2" || die "manifest entry outside rkserve's directories: $2"
            if [ "$PURGE" = 1 ]; then
                rm -rf "$(r "$2")"
                changed removed "$2"
            else
                say kept "$2 (remove with --purge)"
                printf '%s %s\n' "$1" "$2" >>"$NEW_MANIFEST"
            fi
            ;;
        user)
            if [ "$PURGE" = 0 ]; then
                say kept "user $2 (remove with --purge)"
                printf '%s %s\n' "$1" "$2" >>"$NEW_MANIFEST"
            elif staging; then
                would "userdel $2"
            elif getent passwd "$2" >/dev/null; then
                userdel "$2"
                changed removed "user $2"
            fi
            ;;
        group) say kept "group $2 (devices may belong to it)" ;;
        *) die "unknown manifest entry: $1 $2" ;;
    esac
}

do_uninstall() {
    local manifest kind path
    if ! staging && [ "$(id -u)" != 0 ]; then
        die "run as root (or use --root DIR)"
    fi
    manifest=$(r "$MANIFEST")
    [ -f "$manifest" ] || die "no install manifest at $manifest: nothing to uninstall"
    echo "Removing rkserve from ${ROOT:-/}"
    if staging; then
        would "systemctl disable --now rkserve"
    elif systemd_running; then
        systemctl disable --now --quiet rkserve 2>/dev/null || true
    fi
    while read -r kind path; do
        [ -n "$kind" ] && remove "$kind" "$path"
    done <"$manifest"
    if [ "$PURGE" = 1 ]; then
        rm -f "$manifest"
        for path in "$STATE" "$ETC" "$OPT"; do
            rmdir "$(r "$path")" 2>/dev/null && changed removed "$path/" || true
        done
    else
        install -m 0644 "$NEW_MANIFEST" "$manifest"
        rmdir "$(r "$OPT")" 2>/dev/null && changed removed "$OPT/" || true
    fi
    if staging; then
        would "systemctl daemon-reload"
    elif systemd_running; then
        systemctl daemon-reload
    fi
    echo "rkserve: removed ($CHANGES change(s))"
}

if [ "$ACTION" = install ]; then
    do_install
else
    do_uninstall
fi
