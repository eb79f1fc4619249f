#!/usr/bin/env bash
# The main job on one machine: build sluice, generate a dataset, move it over loopback QUIC with
# `sluice copy`, and confirm the result independently with BLAKE3.
#   tools/demo.sh [SIZE]      SIZE of the big file, default 1G (binary suffixes: 512M, 2G)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1G}
cargo build --release -p sluice-cli
bin=$PWD/target/release/sluice
work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
src=$work/dataset
mkdir -p "$src/small/nested"
echo "generating $size of random data and 200 small files in $src" >&2
head -c "$size" /dev/urandom > "$src/big.bin"
for i in $(seq 1 200); do head -c $((i * 97)) /dev/urandom > "$src/small/nested/f$i"; done
ln -s big.bin "$src/link-to-big"
"$bin" copy "$src" "$work/dest"
want=$("$bin" hash "$src/big.bin" | cut -d' ' -f1)
got=$("$bin" hash "$work/dest/dataset/big.bin" | cut -d' ' -f1)
diff -r "$src" "$work/dest/dataset" >/dev/null
[ "$want" = "$got" ] && echo "verified: big.bin BLAKE3 $got matches the source; the whole tree is identical"
