# Shared by the benchmark scripts (sourced, not run).

# start_server BIN DATA_DIR LOG: runs `veilfs serve` on a free loopback port with DATA_DIR,
# logging to LOG; sets SERVER_PID and URL once it listens, or prints the log and exits.
start_server() {
    "$1" serve --data "$2" --listen 127.0.0.1:0 --quota 1T >"$3" 2>&1 &
    SERVER_PID=$!
    URL=""
    for _ in $(seq 100); do
        URL="$(sed -n 's/^veilfs serve: listening on //p' "$3")"
        [ -n "$URL" ] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "veilfs serve did not start:" >&2
    cat "$3" >&2
    exit 1
}
