#!/usr/bin/env bash
# The first mount of a big MEGA account (no local tree yet: the whole tree comes from `f`):
# how long until the root folder is listed and until every node has been listed through the
# mount, and the daemon's peak RSS (VmHWM).
#
#   sudo scripts/bench/cold_mount.sh                  40 × 50 × 49 → 100 041 nodes
#   sudo BENCH_SCALE=0.1 scripts/bench/cold_mount.sh  a tenth of the top folders
#
# Optional:
#   BENCH_ROUNDS=N     mount cold N times (a fresh cache dir each time; default 1)
#   BENCH_REMOUNT=0    skip the remount after each first mount (local metadata, for comparison)
#   BENCH_WORK=DIR     keep the server's data in DIR and reuse it on the next run (the account
#                      is populated once); default: a temporary directory, removed at the end
#   VEILFS_BIN=PATH    the veilfs binary to measure (default: the release build of this tree,
#                      built first)
#
# Runs as root (FUSE mounts). Prints one line per round: nodes, the first mount's times and
# peak RSS, then the same for a remount from the local metadata the first mount stored.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."

SCALE="${BENCH_SCALE:-1}"
ROUNDS="${BENCH_ROUNDS:-1}"
TARGET="${CARGO_TARGET_DIR:-target}"
scaled() { awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s); print (v < 1 ? 1 : v) }'; }
TOP="$(scaled 40)" # 40 × 50 × 49 → 100 041 nodes
SUB=50
FILES=49

log() { printf '==> %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (FUSE mounts)" >&2; exit 1; }
command -v fusermount3 >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3
}

if [ -z "${VEILFS_BIN:-}" ]; then
    log "building (release)"
    cargo build --release --quiet
fi
BIN="$(realpath "${VEILFS_BIN:-$TARGET/release/veilfs}")"

if [ -n "${BENCH_WORK:-}" ]; then
    WORK="$BENCH_WORK"
    mkdir -p "$WORK"
    KEEP=1
else
    WORK="$(mktemp -d /var/tmp/veilfs-cold.XXXXXX)"
    KEEP=0
fi
MNT="$WORK/mnt"
SERVER_PID=""
MOUNT_PID=""
cleanup() {
    mountpoint -q "$MNT" 2>/dev/null && { fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT"; }
    [ -n "$MOUNT_PID" ] && kill "$MOUNT_PID" 2>/dev/null || true
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK/cache" "$WORK/home"
    [ "$KEEP" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

export XDG_CONFIG_HOME="$WORK/home/config" XDG_STATE_HOME="$WORK/home/state"
export XDG_CACHE_HOME="$WORK/home/cache" XDG_DATA_HOME="$WORK/home/data"
EMAIL="cold-$TOP@example.org"
[ -f "$WORK/password" ] || od -An -tx1 -N12 /dev/urandom | tr -d ' \n' >"$WORK/password"
export VEILFS_PASSWORD="bench $(cat "$WORK/password")"

# The server's port changes from run to run; its data (and so the account) stays in $WORK.
start_server "$BIN" "$WORK/server" "$WORK/serve.log"

NODES_FILE="$WORK/nodes-$TOP"
if [ ! -s "$NODES_FILE" ]; then
    cargo bench --bench populate --no-run --quiet 2>/dev/null
    "$BIN" signup --server "$URL" --email "$EMAIL" >&2
    log "populating an account of $((1 + TOP * (1 + SUB * (1 + FILES)))) nodes"
    VEILFS_BENCH_SERVER="$URL" VEILFS_BENCH_EMAIL="$EMAIL" VEILFS_BENCH_PASSWORD="$VEILFS_PASSWORD" \
        cargo bench --quiet --bench populate -- all "$TOP" "$SUB" "$FILES" 2>/dev/null >"$NODES_FILE.tmp"
    mv "$NODES_FILE.tmp" "$NODES_FILE"
fi
NODES="$(cat "$NODES_FILE")"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# Mounts, then times until the root folder is listed (ROOT_SECS), until a folder at the bottom
# of the tree is listed (DEEP_SECS; on a first mount its listing arrives somewhere in the
# middle of the tree's), and until every node has been listed through the mount (ALL_SECS,
# `ls -lR`, which also checks the count; mostly the kernel's 100 000 lookups); unmounts. KB is
# the daemon's VmHWM.
measure() {
    local t seen
    t="$(now)"
    "$BIN" mount "$MNT" --server "$URL" --email "$EMAIL" --cache-dir "$WORK/cache" \
        --foreground 2>"$WORK/mount.log" &
    MOUNT_PID=$!
    until ls "$MNT" 2>/dev/null | grep -qx all; do
        kill -0 "$MOUNT_PID" 2>/dev/null || { cat "$WORK/mount.log" >&2; exit 1; }
        sleep 0.01
    done
    ROOT_SECS="$(since "$t")"
    ls "$MNT/all/dir0000/sub0000" >/dev/null
    DEEP_SECS="$(since "$t")"
    # Every node but the root ("all" is one of them) is listed.
    seen="$(ls -lR "$MNT/all" | grep -c '^[-d]')"
    ALL_SECS="$(since "$t")"
    [ "$seen" -eq $((NODES - 1)) ] || {
        echo "the mount shows $seen of $((NODES - 1)) nodes" >&2
        exit 1
    }
    KB="$(awk '/^VmHWM/ { print $2 }' "/proc/$MOUNT_PID/status")"
    "$BIN" unmount "$MNT" >&2
    wait "$MOUNT_PID" || true
    MOUNT_PID=""
}
mb() { echo "$(($1 / 1024)) MB ($1 kB)"; }

mkdir -p "$MNT"
for round in $(seq "$ROUNDS"); do
    rm -rf "$WORK/cache" "$WORK/home"
    mkdir -p "$WORK/cache"
    measure
    line="round $round: $NODES nodes, first mount: root listed in $ROOT_SECS s, a deep folder in $DEEP_SECS s, every node in $ALL_SECS s, peak RSS $(mb "$KB")"
    if [ "${BENCH_REMOUNT:-1}" = 1 ]; then
        measure
        line="$line; remount: $ROOT_SECS s, $DEEP_SECS s, $ALL_SECS s, $(mb "$KB")"
    fi
    echo "$line"
done
