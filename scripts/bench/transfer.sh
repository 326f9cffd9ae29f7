#!/usr/bin/env bash
# Upload and download throughput over loopback against `veilfs serve`, with the real megajs
# and with our own client (veilfs::mega::MegaClient), as a Markdown table.
#
#   scripts/bench/transfer.sh            256 MiB and 16 MiB of random data, 3 runs each
#   BENCH_RUNS=5 BENCH_SIZES_MIB="64 1024" scripts/bench/transfer.sh
#
# Builds the release binary and the bench, starts a server on a free loopback port with a
# temporary data directory (local-disk blobs), creates an account with `veilfs signup`, then
# alternates the two clients over the files so drift hits both alike. Every upload includes
# encryption and MACs; every download includes decryption and the MAC check (both clients fail
# on a mismatch), and is compared with the original after the clock stops. The table shows the
# median of the runs; MB/s is 10^6 bytes per second.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."

RUNS="${BENCH_RUNS:-3}"
SIZES_MIB="${BENCH_SIZES_MIB:-16 256}"
TARGET="${CARGO_TARGET_DIR:-target}"
EMAIL=bench@example.org

log() { printf '==> %s\n' "$*" >&2; }

log "building (release)"
cargo build --release --quiet
cargo bench --bench transfer --no-run --quiet 2>/dev/null
(cd tests/interop && [ -d node_modules/megajs ] || npm ci --no-audit --no-fund --loglevel=error)
BIN="$TARGET/release/veilfs"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

files=()
for mib in $SIZES_MIB; do
    head -c "$((mib << 20))" /dev/urandom >"$WORK/random-${mib}MiB"
    files+=("$WORK/random-${mib}MiB")
done

start_server "$BIN" "$WORK/data" "$WORK/serve.log"
log "server at $URL"

export VEILFS_BENCH_SERVER="$URL" VEILFS_BENCH_EMAIL="$EMAIL"
VEILFS_BENCH_PASSWORD="bench $(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
export VEILFS_BENCH_PASSWORD
VEILFS_PASSWORD="$VEILFS_BENCH_PASSWORD" "$BIN" signup --server "$URL" --email "$EMAIL" >&2

results="$WORK/results"
: >"$results"
for run in $(seq "$RUNS"); do
    log "run $run of $RUNS: megajs"
    node tests/interop/megajs_bench.js "${files[@]}" | tee -a "$results" >&2
    log "run $run of $RUNS: rust"
    cargo bench --quiet --bench transfer -- "${files[@]}" 2>/dev/null | grep '^rust ' | tee -a "$results" >&2
done

# Lines are `client bytes upload_s download_s`; one table row per size, medians of the runs.
awk -v runs="$RUNS" '
function median(list,    n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
    return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
{
    up[$1, $2] = up[$1, $2] " " ($2 / 1e6 / $3)
    down[$1, $2] = down[$1, $2] " " ($2 / 1e6 / $4)
    sizes[$2] = 1
}
END {
    print ""
    printf "| file | upload megajs | upload Rust | Rust/megajs | download megajs | download Rust | Rust/megajs |\n"
    printf "|---|---|---|---|---|---|---|\n"
    n = 0
    for (s in sizes) order[++n] = s + 0
    for (i = 2; i <= n; i++) for (j = i; j > 1 && order[j-1] > order[j]; j--) { t = order[j]; order[j] = order[j-1]; order[j-1] = t }
    for (i = 1; i <= n; i++) {
        s = order[i]
        mu = median(up["megajs", s]); ru = median(up["rust", s])
        md = median(down["megajs", s]); rd = median(down["rust", s])
        printf "| %d MiB | %.0f MB/s | %.0f MB/s | %.2f | %.0f MB/s | %.0f MB/s | %.2f |\n", s / 1048576, mu, ru, ru / mu, md, rd, rd / md
    }
    printf "\nmedian of %d runs; MB = 10^6 bytes; loopback, blobs on local disk\n", runs
}' "$results"
