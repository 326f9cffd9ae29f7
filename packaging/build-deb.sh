#!/usr/bin/env bash
# Builds target/debian/veilfs_<version>_<arch>.deb: a release binary, then the man pages and shell
# completions it generates, then `cargo deb --no-build` (installs cargo-deb when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
rm -rf target/packaging
mkdir -p target/packaging/man "$target/release"
# cargo-deb takes the binary from "$target/release" (it follows CARGO_TARGET_DIR) and the
# generated files below from target/packaging in the checkout.
bin="$target/release/veilfs"
if [ -n "${VEILFS_DEB_BINARY:-}" ]; then
    # CI packages the binary its tests already built (debug info stripped) instead of
    # spending minutes on a release build: what is proven is the packaging, not the optimizer.
    objcopy --strip-debug "$VEILFS_DEB_BINARY" "$bin"
else
    cargo build --release --locked
fi
"$bin" man --out-dir target/packaging/man
gzip -9n target/packaging/man/*.1
"$bin" completions bash > target/packaging/veilfs.bash
"$bin" completions zsh > target/packaging/_veilfs
"$bin" completions fish > target/packaging/veilfs.fish
# cargo-deb is installed once into the tool cache (beside Garage and cargo-fuzz).
tools="${VEILFS_TOOL_CACHE:-$HOME/.cache/veilfs-tools}/cargo-deb-3.8.0"
export PATH="$tools/bin:$PATH"
command -v cargo-deb >/dev/null ||
    cargo install --locked --quiet cargo-deb --version 3.8.0 --root "$tools"
cargo deb --no-build --no-strip
ls "$target"/debian/*.deb
