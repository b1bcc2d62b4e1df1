#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then shows the main job on this machine: a server
# (`ironfs serve` over TLS on loopback) with a demo account, a client logged in
# to it, a sample folder backed up, changed and backed up again (only the change
# is sent), verified on the server, and restored byte for byte over the network.
# On a terminal the server keeps running until Ctrl-C; otherwise it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
top=$PWD
demo=$top/demo
PATH=$top/.venv/bin:$PATH
[ -f "$demo/server.pid" ] && kill "$(cat "$demo/server.pid")" 2>/dev/null || true
rm -rf "$demo" && mkdir -p "$demo/sample/docs" "$demo/sample/data"
export IRONCORE_HOME=$demo/home IRONFS_DATA_ROOT=$demo/server
demo_password=demo-password

for i in $(seq 1 50); do echo "note $i: the quick brown fox jumps over the lazy dog" > "$demo/sample/docs/note-$i.txt"; done
head -c 8M /dev/urandom > "$demo/sample/data/database.bin"
ln -s docs/note-1.txt "$demo/sample/latest-note"
setfattr -n user.comment -v "kept with the file" "$demo/sample/docs/note-1.txt" 2>/dev/null || true

echo "== a data root with an admin account, and a demo account"
ironfs init --admin admin
echo "$demo_password" | ironfs account add demo --quota 10G --password-stdin
echo "== serve it over TLS on loopback"
ironfs serve --listen 127.0.0.1:0 > "$demo/server.out" 2>&1 &
echo $! > "$demo/server.pid"
stop_server() { kill "$(cat "$demo/server.pid")" 2>/dev/null || true; }
trap stop_server EXIT
for _ in $(seq 1 100); do grep -q "^listening on" "$demo/server.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$demo/server.out")
echo "server: $url"
echo "== log this machine in (the certificate is pinned) and add a set kept on the server"
echo "$demo_password" | ironcore login --server "$url" --account demo --password-stdin
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
echo
echo "WebDAV:   $url/dav/   (account demo, password $demo_password; read-only, every snapshot)"
echo "          (self-signed: compare the certificate with the fingerprint 'ironfs init' printed above)"
echo "Sync API: $url/api/v1"
echo "The web console is not served yet (see the open issues)."
if [ -t 0 ]; then
    echo "The server runs until Ctrl-C."
    wait "$(cat "$demo/server.pid")" || true
fi
