#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then shows the main job on this machine: a sample
# folder backed up into an encrypted volume, changed, backed up again (only the
# change is stored), verified, and restored byte for byte.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
top=$PWD
demo=$top/demo
rm -rf "$demo" && mkdir -p "$demo/sample/docs" "$demo/sample/data"
export IRONCORE_HOME=$demo/home IRONCORE_PASSWORD=demo-password IRONFS_PASSWORD=demo-password
PATH=$top/.venv/bin:$PATH

for i in $(seq 1 50); do echo "note $i: the quick brown fox jumps over the lazy dog" > "$demo/sample/docs/note-$i.txt"; done
head -c 8M /dev/urandom > "$demo/sample/data/database.bin"
ln -s docs/note-1.txt "$demo/sample/latest-note"
setfattr -n user.comment -v "kept with the file" "$demo/sample/docs/note-1.txt" 2>/dev/null || true

echo "== add a backup set"
ironcore set add demo --source "$demo/sample" --to "file://$demo/volume"
echo "== first backup"
ironcore backup demo
echo "== change 64 KiB in the middle of database.bin and add a file, back up again"
head -c 64K /dev/urandom | dd of="$demo/sample/data/database.bin" bs=64K seek=40 conv=notrunc status=none
echo "new" > "$demo/sample/docs/new.txt"
ironcore backup demo
echo "== snapshots"
ironcore snapshots demo
echo "== verify the volume, reading every blob"
ironfs verify --read-data "$demo/volume"
echo "== restore the latest snapshot and compare"
ironcore restore demo --to "$demo/restore"
diff -r "$demo/sample" "$demo/restore$demo/sample" && echo "restored tree is identical to the source"
