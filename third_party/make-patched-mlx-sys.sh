#!/usr/bin/env bash
# Recreate the patched mlx-sys 0.7.0 (third_party/mlx-sys) from crates.io + mlx-sys.patch.
# usage: make-patched-mlx-sys.sh DEST   (DEST must not exist)
# LICENSE-MIT and LICENSE-APACHE are not in the published crate: copy them from
# https://github.com/oxiglade/mlx-rs (see README.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="$1"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/p/src" && cd "$tmp/p"
printf '[package]\nname="f"\nversion="0.0.0"\nedition="2021"\n[dependencies]\nmlx-sys="=0.7.0"\n' > Cargo.toml
touch src/lib.rs
cargo vendor -q --versioned-dirs "$tmp/v" >/dev/null
cp -a "$tmp/v/mlx-sys-0.7.0" "$dest"
rm -f "$dest/.cargo-checksum.json" "$dest/Cargo.lock"
patch -d "$dest" -p1 < "$here/mlx-sys.patch"
