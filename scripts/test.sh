#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests need, checks
# formatting and lints, then runs every test. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# System packages: FUSE for the mount tests, Node.js for the interop tests against the real
# megajs and @filen/sdk, a C toolchain for crates that build C.
missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v cc >/dev/null || missing+=(build-essential)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v curl >/dev/null || missing+=(curl)
command -v rsync >/dev/null || missing+=(rsync)
# tests/packaging.rs checks the systemd units with systemd-analyze.
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# Rust: the project needs edition 2024 (Rust ≥ 1.85), newer than Debian's packaged rustc.
if ! command -v cargo >/dev/null; then
    log "installing Rust with rustup"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

log "node modules for the interop tests (pinned by tests/interop/package-lock.json)"
(cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)

# A clean build in CI gains nothing from incremental state, which alone took 4.4 GB of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

# A real S3 store for the `serve --s3-bucket` tests: a single Garage node on loopback, built
# once into a cache outside the checkout. The tests fail rather than skip when it is missing.
log "Garage (S3) on loopback for the S3 blob store tests"
GARAGE_DIR="$(mktemp -d)"
trap 'scripts/garage.sh stop "$GARAGE_DIR"; rm -rf "$GARAGE_DIR"' EXIT
garage_env="$(scripts/garage.sh start "$GARAGE_DIR")" # fails the script if Garage does not start
eval "$garage_env"
export VEILFS_REQUIRE_GARAGE=1

log "cargo test"
cargo test --all-targets --no-fail-fast

# The Debian package, end to end: built around the binary the tests just built, installed with
# dpkg, mounted through `mount -t veilfs`, a file written and read, removed again.
if [ "$(id -u)" -eq 0 ]; then
    log "packaging: build the .deb, dpkg -i, mount -t veilfs"
    VEILFS_DEB_BINARY="${CARGO_TARGET_DIR:-target}/debug/veilfs" packaging/build-deb.sh
    packaging/test-deb.sh
fi

# A short run of the /cs decoder fuzz target (tests/server_decoder.rs also throws random input at
# the same decoder in every run). cargo-fuzz is installed once into the tool cache, like Garage;
# its build directory lives there too, so later runs only rebuild veilfs itself. cargo-fuzz
# wants nightly features: RUSTC_BOOTSTRAP=1 enables them on the stable toolchain. No sanitizer:
# the decoder is safe Rust and what we hunt is panics; debug assertions (overflow checks) stay on.
TOOLS="${VEILFS_TOOL_CACHE:-$HOME/.cache/veilfs-tools}"
CARGO_FUZZ_VERSION=0.13.2
if [ ! -x "$TOOLS/cargo-fuzz-$CARGO_FUZZ_VERSION/bin/cargo-fuzz" ]; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS (once)"
    cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION" \
        --root "$TOOLS/cargo-fuzz-$CARGO_FUZZ_VERSION"
fi
log "cargo fuzz run cs_decoder (20 s)"
# The target keeps its server's files under $TMPDIR until the process exits, which libFuzzer
# ends without running destructors: a directory of its own, removed here, whatever the outcome.
FUZZ_TMP="$(mktemp -d)"
fuzz_status=0
PATH="$TOOLS/cargo-fuzz-$CARGO_FUZZ_VERSION/bin:$PATH" RUSTC_BOOTSTRAP=1 \
    CARGO_TARGET_DIR="$TOOLS/fuzz-target" TMPDIR="$FUZZ_TMP" \
    cargo fuzz run --dev --sanitizer none cs_decoder -- -max_total_time=20 -print_final_stats=1 \
    || fuzz_status=$?
rm -rf "$FUZZ_TMP"
[ "$fuzz_status" = 0 ] || exit "$fuzz_status"
