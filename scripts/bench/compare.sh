#!/usr/bin/env bash
# veilfs beside what people would use instead, on the same machine in the same run:
#   - veilfs: a mount of `veilfs serve` on loopback (release build);
#   - gocryptfs (Debian package): local encrypted FUSE, no network;
#   - rclone mount of a `crypt` remote over a local directory, --vfs-cache-mode full;
#   - and veilfs again on its Filen backend (same server), as a last column (BENCH_FILEN=0 skips it).
#
#   sudo scripts/bench/compare.sh                  full size (1 GiB file, 10 000 small files …)
#   sudo BENCH_SCALE=0.1 scripts/bench/compare.sh  a tenth of every count and size
#   sudo BENCH_ONLY="small rsync" scripts/bench/compare.sh   only some workloads: big (write and
#                                                  reads of the big file), small, rsync, ls,
#                                                  account (the 100 000-node mounts)
#   BENCH_FS="veilfs"                              only some file systems (default: veilfs filen
#                                                  gocryptfs rclone; BENCH_FILEN=0 drops filen)
#   VEILFS_BIN=PATH                                the veilfs binary to measure (default: the
#                                                  release build of this tree, built first); to
#                                                  compare two builds, alternate runs of each
#   BENCH_REPEAT=N                                 every workload N times, the file systems in
#                                                  turn each round, and the median reported with
#                                                  each run's figure (single runs on a shared VM
#                                                  swing by a third)
#
# Runs as root (mounts, dropping the page cache); installs gocryptfs, rclone and rsync when
# missing. Prints a Markdown table: the time of each workload on each file system and the
# speed of veilfs relative to each peer (peer time / veilfs time: above 1 means veilfs is
# faster), then veilfs' own figures (mount times, the daemon's peak RSS).
#
# "Durable" means: veilfs — the upload is confirmed by the server (`veilfs status` shows no
# pending upload); gocryptfs — fsync/sync returned; rclone — its upload queue is empty
# (`vfs/stats` over its remote control). rclone's write-back delay is set to 0.1 s instead
# of its default 5 s so that it is not charged for waiting. Cold reads start from an empty
# local cache (veilfs, rclone) and a dropped page cache (all three).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."

SCALE="${BENCH_SCALE:-1}"
REPEAT="${BENCH_REPEAT:-1}"
ROUND=1
TARGET="${CARGO_TARGET_DIR:-target}"
scaled() { awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s); print (v < 1 ? 1 : v) }'; }
BIG_MIB="$(scaled 1024)"
SMALL_FILES="$(scaled 10000)"
RSYNC_FILES="$(scaled 2000)"
RANDOM_READS=20000
# Trees as TOP folders × SUB subfolders × FILES files: 1 + TOP·(1 + SUB·(1 + FILES)) nodes.
LS_TOP="$(scaled 25)"   # 25 × 40 × 49 → 50 026 nodes
ACCOUNT_TOP="$(scaled 40)" # 40 × 50 × 49 → 100 041 nodes

log() { printf '==> %s\n' "$*" >&2; }
want() { [ -z "${BENCH_ONLY:-}" ] || [[ " $BENCH_ONLY " == *" $1 "* ]]; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (mounts, drop_caches)" >&2; exit 1; }

missing=()
command -v gocryptfs >/dev/null || missing+=(gocryptfs)
command -v rclone >/dev/null || missing+=(rclone)
command -v rsync >/dev/null || missing+=(rsync)
command -v fusermount3 >/dev/null || missing+=(fuse3)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if [ -z "${VEILFS_BIN:-}" ]; then
    log "building (release)"
    cargo build --release --quiet
fi
want ls || want account && cargo bench --bench populate --no-run --quiet 2>/dev/null
BIN="$(realpath "${VEILFS_BIN:-$TARGET/release/veilfs}")"
FILE_SYSTEMS="${BENCH_FS:-veilfs filen gocryptfs rclone}"
[ "${BENCH_FILEN:-1}" = 0 ] && FILE_SYSTEMS="${FILE_SYSTEMS//filen/}"
measure() { [[ " $FILE_SYSTEMS " == *" $1 "* ]]; }

# On disk, not tmpfs: the file systems under test stage and store there, as they would for a user.
WORK="$(mktemp -d /var/tmp/veilfs-bench.XXXXXX)"
SERVER_PID=""
RCLONE_PID=""
cleanup() {
    for m in "$WORK"/mnt-*; do
        mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }
    done
    [ -n "$RCLONE_PID" ] && kill "$RCLONE_PID" 2>/dev/null || true
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK" /dev/shm/veilfs-bench-big
}
trap cleanup EXIT
RESULTS="$WORK/results"
: >"$RESULTS"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; log "$2: $1 = $3"; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
wait_mounted() {
    for _ in $(seq 600); do mountpoint -q "$1" && return 0; sleep 0.05; done
    echo "$1 never mounted" >&2
    return 1
}

# ---------------------------------------------------------------------------------------------
# The three file systems: start/stop/durable/cold for each.

export XDG_CONFIG_HOME="$WORK/home/config" XDG_STATE_HOME="$WORK/home/state"
export XDG_CACHE_HOME="$WORK/home/cache" XDG_DATA_HOME="$WORK/home/data"
PASSWORD="bench $(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
EMAIL=bench@example.org
export VEILFS_PASSWORD="$PASSWORD"

start_server "$BIN" "$WORK/veilfs-server" "$WORK/serve.log"
"$BIN" signup --server "$URL" --email "$EMAIL" >&2

veilfs_pid() { cat "$XDG_STATE_HOME"/veilfs/mounts/*.pid 2>/dev/null | head -1; }
PEAK_RSS_KB=0
note_rss() {
    local pid kb
    pid="$(veilfs_pid)"
    [ -n "$pid" ] || return 0
    kb="$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)"
    [ "${kb:-0}" -gt "$PEAK_RSS_KB" ] && PEAK_RSS_KB="$kb"
    return 0
}
veilfs_start() {
    "$BIN" mount "$1" --server "$URL" --email "${2:-$EMAIL}" --cache-dir "$WORK/veilfs-cache${3:-}" >&2
}
veilfs_stop() { note_rss; "$BIN" unmount "$1" >&2; }
# The polls of veilfs and rclone only grep their status: each runs every 20 ms while the
# upload it waits for competes for the same cores, and a Python interpreter per poll (through
# pyenv's shims, ~130 ms of CPU each) took about one core of two away from the workload.
veilfs_durable() {
    until "$BIN" status "$1" --json | grep '"pending_uploads": 0,' >/dev/null; do
        sleep 0.02
    done
}
veilfs_cold() { veilfs_stop "$1"; rm -rf "$WORK"/veilfs-cache/*/blocks; drop_caches; veilfs_start "$1"; }

# The same daemon on the Filen backend, against the same server's Filen API.
FILEN_EMAIL=filen@example.org
"$BIN" signup --backend filen --server "$URL" --email "$FILEN_EMAIL" >&2
filen_start() {
    "$BIN" mount "$1" --backend filen --server "$URL" --email "$FILEN_EMAIL" \
        --cache-dir "$WORK/filen-cache" >&2
}
filen_stop() { "$BIN" unmount "$1" >&2; }
filen_durable() { veilfs_durable "$1"; }
filen_cold() { filen_stop "$1"; rm -rf "$WORK"/filen-cache/*/blocks; drop_caches; filen_start "$1"; }

mkdir -p "$WORK/gocryptfs-cipher"
gocryptfs -init -q -extpass "echo $PASSWORD" "$WORK/gocryptfs-cipher" >/dev/null
gocryptfs_start() { gocryptfs -q -extpass "echo $PASSWORD" "$WORK/gocryptfs-cipher" "$1"; }
gocryptfs_stop() { fusermount3 -u "$1"; }
gocryptfs_durable() { sync -f "$1"; }
gocryptfs_cold() { gocryptfs_stop "$1"; drop_caches; gocryptfs_start "$1"; }

RCLONE_CONF="$WORK/rclone.conf"
RCLONE_RC="127.0.0.1:$((20000 + RANDOM % 20000))"
mkdir -p "$WORK/rclone-base"
cat >"$RCLONE_CONF" <<EOF
[base]
type = local

[secret]
type = crypt
remote = base:$WORK/rclone-base
password = $(rclone obscure "$PASSWORD")
EOF
rclone_start() {
    rclone mount secret: "$1" --config "$RCLONE_CONF" --vfs-cache-mode full \
        --vfs-write-back 100ms --cache-dir "$WORK/rclone-cache" \
        --rc --rc-addr "$RCLONE_RC" --rc-no-auth >"$WORK/rclone.log" 2>&1 &
    RCLONE_PID=$!
    wait_mounted "$1"
}
rclone_stop() {
    fusermount3 -u "$1"
    wait "$RCLONE_PID" 2>/dev/null || true
    RCLONE_PID=""
}
rclone_durable() {
    while :; do
        [ "$(rclone rc vfs/stats --rc-addr "$RCLONE_RC" |
            grep -cE '"uploads(InProgress|Queued)": 0,?$')" = 2 ] && return 0
        sleep 0.02
    done
}
rclone_cold() { rclone_stop "$1"; rm -rf "$WORK/rclone-cache"; drop_caches; rclone_start "$1"; }

# ---------------------------------------------------------------------------------------------
# Inputs, generated once.

log "generating inputs (${BIG_MIB} MiB file, ${RSYNC_FILES}-file tree)"
want big && head -c "$((BIG_MIB << 20))" /dev/urandom >/dev/shm/veilfs-bench-big
python3 - "$WORK/rsync-src" "$RSYNC_FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for i in range(n):
    d = os.path.join(root, f"pkg{i % 40:02d}", f"mod{i % 7}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"src{i:05d}.rs"), "wb") as f:
        f.write(rng.randbytes(rng.randint(200, 32 * 1024)))
EOF
# The listing tree, the same names as benches/populate.rs makes.
make_tree() {
    python3 - "$1" "$2" "$3" "$4" <<'EOF'
import os, sys
root, top, sub, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for t in range(top):
    for s in range(sub):
        d = os.path.join(root, f"dir{t:04d}", f"sub{s:04d}")
        os.makedirs(d)
        for f in range(files):
            open(os.path.join(d, f"file{f:05d}.txt"), "wb").close()
EOF
}
want ls && make_tree "$WORK/ls-src/ls" "$LS_TOP" 40 49
LS_NODES=$((1 + LS_TOP * (1 + 40 * 50)))

populate() {
    VEILFS_BENCH_SERVER="$URL" VEILFS_BENCH_EMAIL="$1" VEILFS_BENCH_PASSWORD="$PASSWORD" \
        cargo bench --quiet --bench populate -- "$2" "$3" "$4" "$5" 2>/dev/null
}

# ---------------------------------------------------------------------------------------------
# The workloads, the same commands on each file system.

random_reads() {
    python3 - "$1" "$RANDOM_READS" <<'EOF'
import os, random, sys, time
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
rng = random.Random(42)
offsets = [rng.randrange(0, size - 4096) // 4096 * 4096 for _ in range(n)]
t = time.perf_counter()
for o in offsets:
    if len(os.pread(fd, 4096, o)) != 4096:
        raise SystemExit("short read")
print(f"{time.perf_counter() - t:.3f}")
EOF
}

small_files() {
    python3 - "$1" "$SMALL_FILES" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
data = os.urandom(1024)
for i in range(n):
    d = os.path.join(root, f"d{i // 100:03d}")
    if i % 100 == 0:
        os.makedirs(d)
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(data)
EOF
}

run_fs() {
    local fs="$1" mnt="$WORK/mnt-$1" t
    mkdir -p "$mnt"
    "${fs}_start" "$mnt"

    if want big; then
    # Whatever was written before (the inputs, the previous file system's files and their
    # deletion) is still reaching the disk: let it settle, so that no file system is charged
    # for another's writeback.
    sync
    log "$fs: sequential write of ${BIG_MIB} MiB until durable"
    t="$(now)"
    local big="$mnt/big$ROUND"
    dd if=/dev/shm/veilfs-bench-big of="$big" bs=1M conv=fsync status=none
    "${fs}_durable" "$mnt"
    record "write ${BIG_MIB} MiB until durable" "$fs" "$(since "$t")"

    "${fs}_cold" "$mnt"
    t="$(now)"
    dd if="$big" of=/dev/null bs=1M status=none
    record "cold sequential read" "$fs" "$(since "$t")"
    t="$(now)"
    dd if="$big" of=/dev/null bs=1M status=none
    record "warm sequential read" "$fs" "$(since "$t")"
    record "random 4 KiB reads ×$RANDOM_READS (warm)" "$fs" "$(random_reads "$big")"
    cmp -s /dev/shm/veilfs-bench-big "$big" || { echo "$fs: the big file differs" >&2; exit 1; }
    fi

    if want small; then
    # The big file's pages and deletions are still being written out: let the disk settle, so
    # that the small-file workload (which syncs at every close on veilfs) is not charged for it.
    sync
    log "$fs: $SMALL_FILES small files"
    t="$(now)"
    small_files "$mnt/small$ROUND"
    record "$SMALL_FILES × 1 KiB files created" "$fs" "$(since "$t")"
    "${fs}_durable" "$mnt"
    record "$SMALL_FILES × 1 KiB files until durable" "$fs" "$(since "$t")"
    fi

    if want rsync; then
    sync
    log "$fs: rsync -a of $RSYNC_FILES files"
    t="$(now)"
    rsync -a "$WORK/rsync-src/" "$mnt/tree$ROUND/"
    record "rsync -a, $RSYNC_FILES files" "$fs" "$(since "$t")"
    t="$(now)"
    rsync -a "$WORK/rsync-src/" "$mnt/tree$ROUND/"
    record "rsync -a no-op second pass" "$fs" "$(since "$t")"
    "${fs}_durable" "$mnt"
    diff -r "$WORK/rsync-src" "$mnt/tree$ROUND" >/dev/null || { echo "$fs: the rsync copy differs" >&2; exit 1; }
    fi

    # The listing tree is made once; later rounds list it again.
    if ! want ls; then
        "${fs}_stop" "$mnt"
        return
    fi
    if [ "$ROUND" -gt 1 ]; then
        "${fs}_stop" "$mnt"
        drop_caches
        "${fs}_start" "$mnt"
        list_fresh "$fs" "$mnt"
        return
    fi
    log "$fs: ls -lR of $LS_NODES nodes"
    case "$fs" in
        veilfs)
            populate "$EMAIL" ls "$LS_TOP" 40 49 >/dev/null
            # The live mount learns of them from the change feed; let it catch up before it
            # stops, so that the fresh mount starts from complete local metadata.
            until [ "$(find "$mnt/ls" 2>/dev/null | wc -l)" -ge "$LS_NODES" ]; do sleep 0.5; done
            ;;
        gocryptfs) cp -a "$WORK/ls-src/ls" "$mnt/ls" ;;
        filen) cp -a "$WORK/ls-src/ls" "$mnt/ls" && filen_durable "$mnt" ;;
        rclone) rclone copy --config "$RCLONE_CONF" --create-empty-src-dirs --transfers 16 \
            "$WORK/ls-src/ls" secret:ls ;;
    esac
    "${fs}_stop" "$mnt"
    drop_caches
    "${fs}_start" "$mnt"
    list_fresh "$fs" "$mnt"
}

# list_fresh FS MNT: times `ls -lR` of the listing tree on a fresh mount, then unmounts.
list_fresh() {
    local fs="$1" mnt="$2" t n
    t="$(now)"
    n="$(ls -lR "$mnt/ls" | grep -c '^[-d]')"
    record "ls -lR, $LS_NODES nodes (fresh mount)" "$fs" "$(since "$t")"
    [ "$n" -ge $((LS_NODES - 1)) ] || { echo "$fs: ls -lR saw $n entries of $LS_NODES" >&2; exit 1; }
    "${fs}_stop" "$mnt"
}

PEAK_RSS_KB_ALL=0
for ROUND in $(seq "$REPEAT"); do
    [ "$REPEAT" -gt 1 ] && log "round $ROUND of $REPEAT"
    if measure veilfs; then
        run_fs veilfs
        PEAK_RSS_KB_ALL="$PEAK_RSS_KB"
    fi
    for fs in filen gocryptfs rclone; do
        measure "$fs" && run_fs "$fs"
    done
done

# ---------------------------------------------------------------------------------------------
# veilfs alone: mounting a 100 000-node account, cold and with local metadata.

if want account; then
BIG_EMAIL=big@example.org
"$BIN" signup --server "$URL" --email "$BIG_EMAIL" >&2
log "populating an account of $((1 + ACCOUNT_TOP * (1 + 50 * 50))) nodes"
ACCOUNT_NODES="$(populate "$BIG_EMAIL" all "$ACCOUNT_TOP" 50 49)"
mnt="$WORK/mnt-account"
mkdir -p "$mnt"
PEAK_RSS_KB=0
t="$(now)"
veilfs_start "$mnt" "$BIG_EMAIL" -account
ls "$mnt/all/dir0000/sub0000" >/dev/null
MOUNT_COLD="$(since "$t")"
n="$(ls -lR "$mnt/all" | grep -c '^[-d]')"
[ "$n" -ge $((ACCOUNT_NODES - 1)) ] || { echo "the account shows $n of $ACCOUNT_NODES nodes" >&2; exit 1; }
veilfs_stop "$mnt"
RSS_COLD_KB="$PEAK_RSS_KB"
PEAK_RSS_KB=0
t="$(now)"
veilfs_start "$mnt" "$BIG_EMAIL" -account
ls "$mnt/all/dir0000/sub0000" >/dev/null
MOUNT_WARM="$(since "$t")"
ls -lR "$mnt/all" >/dev/null
veilfs_stop "$mnt"
RSS_WARM_KB="$PEAK_RSS_KB"
fi

# ---------------------------------------------------------------------------------------------
# The report.

echo
echo "veilfs $("$BIN" --version | awk '{print $2}'), gocryptfs $(gocryptfs -version | awk 'NR==1 {print $2}' | tr -d ';'), rclone $(rclone version | awk 'NR==1 {print $2}'); $(nproc) cores; scale $SCALE"
echo
# With BENCH_REPEAT, each cell is the median of the rounds (the lower middle one of an even
# count) and a second table lists every round's figure.
MEDIANS="$WORK/medians"
sort -t$'\t' -k1,1 -k2,2 -k3,3g "$RESULTS" | awk -F'\t' '
{ k = $1 SUBSEP $2; v[k, ++c[k]] = $3; if (!(k in first)) { first[k] = 1; keys[++n] = k } }
END { for (i = 1; i <= n; i++) { k = keys[i]; split(k, p, SUBSEP); printf "%s\t%s\t%s\n", p[1], p[2], v[k, int((c[k] + 1) / 2)] } }' >"$MEDIANS"
awk -F'\t' '
NR == FNR { t[$1, $2] = $3; next }
{ if (!($1 in order)) { order[$1] = ++n; name[n] = $1 } }
function cell(x) { return x == "" ? "—" : sprintf("%.3f s", x) }
function ratio(a, b) { return (a == "" || b == "" || a == 0) ? "—" : sprintf("%.2f×", b / a) }
END {
    print "| workload | veilfs (MEGA) | gocryptfs | rclone crypt | vs gocryptfs | vs rclone | veilfs (Filen) |"
    print "|---|---:|---:|---:|---:|---:|---:|"
    for (i = 1; i <= n; i++) {
        w = name[i]; v = t[w, "veilfs"]; g = t[w, "gocryptfs"]; r = t[w, "rclone"]; f = t[w, "filen"]
        printf "| %s | %s | %s | %s | %s | %s | %s |\n", w, cell(v), cell(g), cell(r), ratio(v, g), ratio(v, r), cell(f)
    }
}' "$MEDIANS" "$RESULTS"
if [ "$REPEAT" -gt 1 ]; then
    echo
    echo "Medians of $REPEAT rounds; every round, in order:"
    echo
    awk -F'\t' '
    { if (!($1 in order)) { order[$1] = ++n; name[n] = $1 }
      if (!($2 in seen)) { seen[$2] = 1; fss[++m] = $2 }
      runs[$1, $2] = runs[$1, $2] (runs[$1, $2] == "" ? "" : ", ") sprintf("%.3f", $3) }
    END {
        for (i = 1; i <= n; i++)
            for (j = 1; j <= m; j++)
                if ((name[i], fss[j]) in runs) printf "- %s, %s: %s s\n", name[i], fss[j], runs[name[i], fss[j]]
    }' "$RESULTS"
fi
mbps() { awk -v s="$1" -v mib="$BIG_MIB" 'BEGIN { printf "%.0f MB/s", mib * 1048576 / s / 1e6 }'; }
warm="$(awk -F'\t' '$1 == "warm sequential read" && $2 == "veilfs" { print $3 }' "$MEDIANS")"
cold="$(awk -F'\t' '$1 == "cold sequential read" && $2 == "veilfs" { print $3 }' "$MEDIANS")"
echo
[ -z "$cold" ] || echo "veilfs: cold read $(mbps "$cold"), warm read $(mbps "$warm")."
echo "veilfs: daemon peak RSS during the workloads $((PEAK_RSS_KB_ALL / 1024)) MB."
if want account; then
    echo "veilfs, account of $ACCOUNT_NODES nodes: first mount (whole tree fetched) ${MOUNT_COLD} s, peak RSS $((RSS_COLD_KB / 1024)) MB;" \
    "remount with local metadata ${MOUNT_WARM} s, peak RSS after ls -lR of every node $((RSS_WARM_KB / 1024)) MB."
fi
