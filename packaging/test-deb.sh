#!/usr/bin/env bash
# The package, end to end on this machine (as root): installs target/debian/veilfs_*.deb with
# dpkg, checks what it put where, runs the packaged `veilfs serve`, mounts an account through
# `mount -t veilfs` (the packaged mount.veilfs), writes and reads a file, unmounts, and removes
# the package again. Build the .deb first with packaging/build-deb.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(ls "${CARGO_TARGET_DIR:-target}"/debian/veilfs_*.deb | tail -n 1)
[ "$(id -u)" -eq 0 ] || { echo "test-deb.sh needs root (dpkg -i, mount)" >&2; exit 1; }

work=$(mktemp -d)
server_pid=""
cleanup() {
    mountpoint -q "$work/drive" 2>/dev/null && fusermount3 -u -z "$work/drive" || true
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    dpkg -r veilfs >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

dpkg -i "$deb"
for f in /usr/bin/veilfs /usr/sbin/mount.veilfs /usr/lib/systemd/user/veilfs@.service \
    /usr/lib/systemd/system/veilfs-serve.service /usr/share/man/man1/veilfs.1.gz \
    /usr/share/bash-completion/completions/veilfs; do
    [ -e "$f" ] || { echo "missing from the package: $f" >&2; exit 1; }
done
systemd-analyze verify --man=no /usr/lib/systemd/system/veilfs-serve.service
zcat /usr/share/man/man1/veilfs.1.gz | grep -q '^.TH veilfs'

export HOME="$work/home" XDG_CONFIG_HOME="$work/home/.config" XDG_STATE_HOME="$work/home/.state" \
    XDG_CACHE_HOME="$work/home/.cache"
mkdir -p "$HOME" "$work/drive"
/usr/bin/veilfs serve --data "$work/server" --listen 127.0.0.1:0 > "$work/serve.out" &
server_pid=$!
for _ in $(seq 100); do grep -q 'listening on' "$work/serve.out" && break; sleep 0.1; done
url=$(sed -n 's/^veilfs serve: listening on //p' "$work/serve.out")
printf 'a packaged password\n' > "$work/password"
/usr/bin/veilfs signup --server "$url" --email deb@test.veilfs --password-file "$work/password"

mount -t veilfs deb@test.veilfs "$work/drive" -o "server=$url,password_file=$work/password,noatime"
mountpoint -q "$work/drive"
head -c 3000000 /dev/urandom > "$work/data.bin"
cp "$work/data.bin" "$work/drive/data.bin"
cmp "$work/data.bin" "$work/drive/data.bin"
/usr/bin/veilfs unmount "$work/drive"
! mountpoint -q "$work/drive"
/usr/bin/veilfs get /data.bin "$work/back.bin"
cmp "$work/data.bin" "$work/back.bin"
echo "test-deb.sh: the package installs, mounts through mount -t veilfs, and round-trips a file"
