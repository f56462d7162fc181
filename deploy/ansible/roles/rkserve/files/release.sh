#!/bin/sh
# release.sh SRC WHEEL OUT: the release as one archive OUT/release.tar (the wheel under
# dist/ and what deploy/install.sh needs beside it, at their places in the source tree);
# prints the release id: a SHA-256 over those files' paths and contents.
set -eu
src=$1 wheel=$2 out=$3
stage=$out/release
rm -rf "$stage"
mkdir -p "$stage/deploy" "$stage/systemd" "$stage/dist"
cp "$src/deploy/install.sh" "$src/deploy/rkserve.yaml" "$stage/deploy/"
cp "$src/systemd/rkserve.service" "$src/systemd/rkserve.env" "$stage/systemd/"
cp "$wheel" "$stage/dist/"
tar -C "$stage" -cf "$out/release.tar" .
sh "$(dirname "$0")/tree-digest.sh" "$stage" | cut -d' ' -f2
