#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then shows the main job on this machine: a server
# (`ironfs serve` over TLS on loopback) with a demo account, a client logged in
# to it, a sample folder backed up, changed and backed up again (only the change
# is sent), verified on the server, and restored byte for byte over the network.
# It asks nothing and runs the same with or without a terminal. The server keeps
# running afterwards, detached; the last lines say how to use it, stop it and
# start it again. Running the demo again starts over (stopping the old server).
# IRONCORE_DEMO_DIR puts it elsewhere than demo/ (the tests do).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
top=$PWD
demo=${IRONCORE_DEMO_DIR:-$top/demo}   # everything the demo makes is in here
PATH=$top/.venv/bin:$PATH
[ -f "$demo/server.pid" ] && kill "$(cat "$demo/server.pid")" 2>/dev/null || true
rm -rf "$demo" && mkdir -p "$demo/sample/docs" "$demo/sample/data"
export IRONCORE_HOME=$demo/home IRONFS_DATA_ROOT=$demo/server
demo_password=demo-password
admin_password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
exec </dev/null   # nothing below reads the terminal: every secret is given on stdin

for i in $(seq 1 50); do echo "note $i: the quick brown fox jumps over the lazy dog" > "$demo/sample/docs/note-$i.txt"; done
head -c 8M /dev/urandom > "$demo/sample/data/database.bin"
ln -s docs/note-1.txt "$demo/sample/latest-note"
setfattr -n user.comment -v "kept with the file" "$demo/sample/docs/note-1.txt" 2>/dev/null || true

echo "== a data root with an admin account, and a demo account"
echo "$admin_password" | ironfs init --admin admin --password-stdin | tee "$demo/init.out"
fingerprint=$(sed -n 's/^TLS certificate SHA-256 fingerprint (clients pin it): //p' "$demo/init.out")
echo "$demo_password" | ironfs account add demo --quota 10G --password-stdin
echo "== serve it over TLS on loopback"
serve() {   # detached (its own session): it outlives this script and its terminal
  setsid ironfs serve --listen "$1" > "$demo/server.out" 2>&1 < /dev/null &
  echo $! > "$demo/server.pid"
  for _ in $(seq 1 300); do grep -q "^listening on" "$demo/server.out" 2>/dev/null && return; sleep 0.1; done
  cat "$demo/server.out" >&2; echo "error: the server did not start (log above)" >&2; exit 1
}
serve 127.0.0.1:0
url=$(sed -n 's/^listening on //p' "$demo/server.out")
port=${url##*:}
echo "server: $url"
echo "== log this machine in (the certificate is pinned) and add a set kept on the server"
echo "$demo_password" | ironcore login --server "$url" --account demo --fingerprint "$fingerprint" --password-stdin
echo "$demo_password" | ironcore set add demo --source "$demo/sample" --password-stdin
echo "== first backup"
ironcore backup demo
echo "== change 64 KiB in the middle of database.bin and add a file, back up again"
head -c 64K /dev/urandom | dd of="$demo/sample/data/database.bin" bs=64K seek=40 conv=notrunc status=none
echo "new" > "$demo/sample/docs/new.txt"
ironcore backup demo
echo "== snapshots, as the client and as the admin sees them"
ironcore snapshots demo
ironfs snapshots demo demo
echo "== verify the set on the server, reading every blob with the account password"
echo "$demo_password" | ironfs verify demo demo --read-data --password-stdin
echo "== one file of the first snapshot through WebDAV"
first=$(ironcore snapshots demo --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["name"])')
curl -sf --cacert "$IRONFS_DATA_ROOT/tls/cert.pem" -u "demo:$demo_password" \
    "${url/127.0.0.1/localhost}/dav/demo/snapshots/$first$demo/sample/docs/note-1.txt" || echo "(curl is not installed)"
echo "== restore the latest snapshot over the network and compare"
ironcore restore demo --to "$demo/restore"
diff -r "$demo/sample" "$demo/restore$demo/sample" && echo "restored tree is identical to the source"
# The same lines in demo/README.txt, to find them again later.
cat <<INFO | tee "$demo/README.txt"

The demo server is running (process $(cat "$demo/server.pid"), log $demo/server.out).
  WebDAV:       $url/dav/      read-only, every snapshot of every set of the account
  Sync API:     $url/api/v1
  Account:      demo, password $demo_password      (ironcore and WebDAV)
  Admin:        admin, password $admin_password
  Certificate:  $IRONFS_DATA_ROOT/tls/cert.pem (self-signed), SHA-256 $fingerprint
To use it from another shell:
  export PATH=$top/.venv/bin:\$PATH IRONCORE_HOME=$IRONCORE_HOME IRONFS_DATA_ROOT=$IRONFS_DATA_ROOT
  ironcore snapshots demo;  ironcore restore demo --to /tmp/demo-restore
Stop the server:
  kill \$(cat $demo/server.pid)
Start it again (same port, so the login above still works):
  setsid $top/.venv/bin/ironfs serve --data-root $IRONFS_DATA_ROOT --listen 127.0.0.1:$port > $demo/server.out 2>&1 < /dev/null & echo \$! > $demo/server.pid
INFO
