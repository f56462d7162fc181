#!/bin/sh
# tree-digest.sh DIR...: one line "NAME DIGEST" per folder (NAME: its base name), DIGEST the
# SHA-256 over its files' paths and contents ("absent" when the folder does not exist).
# The same sum as deploy/install.sh's tree_checksum, run on the controller and on the board.
set -eu
for dir in "$@"; do
    name=$(basename "$dir")
    if [ -d "$dir" ]; then
        sum=$(cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum |
            sha256sum | cut -d' ' -f1)
    else
        sum=absent
    fi
    printf '%s %s\n' "$name" "$sum"
done
