#!/usr/bin/env bash
# A single-node Garage (the self-hosted S3 store, written in Rust) on loopback, for the tests
# of `veilfs serve --s3-bucket`.
#
#   scripts/garage.sh install     builds garage once into a cache outside the checkout (about
#                                 9 minutes on 2 cores) and prints the binary's path
#   scripts/garage.sh start DIR   installs if needed, starts a node keeping its state in DIR,
#                                 creates a bucket and a key allowed to use it, and prints
#                                 `export VEILFS_GARAGE_…=…` lines for `eval`
#   scripts/garage.sh stop DIR    stops the node started in DIR
#
# The cache is ${VEILFS_TOOL_CACHE:-~/.cache/veilfs-tools}/garage-<version>, keyed by version,
# so CI machines that keep their home directory build it only once.
set -euo pipefail

VERSION=2.5.0
CACHE="${VEILFS_TOOL_CACHE:-$HOME/.cache/veilfs-tools}/garage-$VERSION"
BIN="$CACHE/bin/garage"

log() { printf '==> garage: %s\n' "$*" >&2; }

install() {
    if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
        return
    fi
    log "building garage $VERSION into $CACHE (once; several minutes)"
    mkdir -p "$CACHE"
    # Its own target directory, removed afterwards: only the binary is kept.
    local target
    target="$(mktemp -d)"
    CARGO_TARGET_DIR="$target" cargo install garage --version "$VERSION" --locked \
        --root "$CACHE" --quiet >&2
    rm -rf "$target"
    "$BIN" --version >&2
}

# A free TCP port on loopback (bound and released; the window for a clash is tiny).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
        shuf -i 20000-60000 -n 1
}

start() {
    local dir="$1"
    install
    mkdir -p "$dir/meta" "$dir/data"
    dir="$(cd "$dir" && pwd)"
    local s3_port rpc_port secret
    s3_port="$(free_port)"
    rpc_port="$(free_port)"
    secret="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
    cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"
EOF
    local g=("$BIN" -c "$dir/garage.toml")
    "${g[@]}" server >"$dir/garage.log" 2>&1 &
    echo $! >"$dir/garage.pid"

    # The node answers its own CLI once its RPC is up.
    local id="" tries=0
    until id="$("${g[@]}" node id -q 2>/dev/null)"; do
        tries=$((tries + 1))
        if [ "$tries" -gt 100 ] || ! kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null; then
            log "node did not come up; its log:"
            cat "$dir/garage.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    id="${id%%@*}"
    # Setup chatter goes to a log, shown only if a step fails.
    local setup="$dir/setup.log"
    trap 'log "setup failed:"; cat "$setup" >&2' ERR
    "${g[@]}" layout assign -z dc1 -c 1G "$id" >>"$setup"
    "${g[@]}" layout apply --version 1 >>"$setup"
    "${g[@]}" bucket create veilfs-test >>"$setup"
    local key
    key="$("${g[@]}" key create veilfs-test-key)"
    "${g[@]}" bucket allow --read --write veilfs-test --key veilfs-test-key >>"$setup"
    trap - ERR
    local key_id secret_key
    key_id="$(printf '%s\n' "$key" | sed -n 's/^Key ID: *//p' | head -n1)"
    secret_key="$(printf '%s\n' "$key" | sed -n 's/^Secret key: *//p' | head -n1)"
    if [ -z "$key_id" ] || [ -z "$secret_key" ]; then
        log "could not read the key from:"
        printf '%s\n' "$key" >&2
        exit 1
    fi
    # Wait until S3 answers (the layout takes a moment to reach the API).
    tries=0
    until curl -s -o /dev/null "http://127.0.0.1:$s3_port/"; do
        tries=$((tries + 1))
        [ "$tries" -gt 100 ] && { log "S3 API not answering"; exit 1; }
        sleep 0.1
    done
    log "running on 127.0.0.1:$s3_port (state in $dir)"
    cat <<EOF
export VEILFS_GARAGE_ENDPOINT=http://127.0.0.1:$s3_port
export VEILFS_GARAGE_REGION=garage
export VEILFS_GARAGE_BUCKET=veilfs-test
export VEILFS_GARAGE_KEY_ID=$key_id
export VEILFS_GARAGE_SECRET=$secret_key
EOF
}

stop() {
    local dir="$1"
    if [ -f "$dir/garage.pid" ]; then
        kill "$(cat "$dir/garage.pid")" 2>/dev/null || true
        rm -f "$dir/garage.pid"
    fi
}

case "${1:-}" in
install) install && echo "$BIN" ;;
start) start "${2:?usage: garage.sh start DIR}" ;;
stop) stop "${2:?usage: garage.sh stop DIR}" ;;
*)
    echo "usage: scripts/garage.sh install | start DIR | stop DIR" >&2
    exit 2
    ;;
esac
