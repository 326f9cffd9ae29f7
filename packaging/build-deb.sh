#!/usr/bin/env bash
# Builds target/debian/veilfs_<version>_<arch>.deb: a release binary, then the man pages and shell
# completions it generates, then `cargo deb --no-build` (installs cargo-deb when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked
rm -rf target/packaging
mkdir -p target/packaging/man
# cargo-deb reads assets from target/ relative to the checkout; follow a custom target dir.
if [ "$target" != "target" ]; then
    mkdir -p target/release
    cp "$target/release/veilfs" target/release/veilfs
fi
bin=target/release/veilfs
"$bin" man --out-dir target/packaging/man
gzip -9n target/packaging/man/*.1
"$bin" completions bash > target/packaging/veilfs.bash
"$bin" completions zsh > target/packaging/_veilfs
"$bin" completions fish > target/packaging/veilfs.fish
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
cargo deb --no-build --no-strip
ls "$target"/debian/*.deb
