#!/usr/bin/env bash
# Installs what Ironcore needs on a Debian machine with Python 3.11+: the system
# packages named as arguments (plus the base ones) through apt-get when missing,
# and the project with its Python dependencies into .venv. fuse3 and its headers
# are for `ironfs mount` (pyfuse3 builds against them); the WebDAV clients
# (davfs2, litmus, rclone, cadaver) are there for tests/test_dav.py; tinyproxy is the
# authenticating HTTP proxy that tests/test_proxy.py runs with its own config.
set -euo pipefail
cd "$(dirname "$0")/.."

need=(acl attr gcc python3-venv fuse3 libfuse3-dev pkg-config davfs2 litmus rclone cadaver tinyproxy "$@")
missing=()
for pkg in "${need[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # noninteractive: no prompt ever blocks (davfs2 asks whether unprivileged users
  # may mount; its default, no, is what we want). Set through env so sudo keeps it.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[test]'; } > .venv/pip.log 2>&1; then
  cat .venv/pip.log
  echo "error: installing the Python packages failed (log above, also in .venv/pip.log)" >&2
  exit 1
fi
# Bytecode for our own packages, as a regular (not editable) install writes it:
# commands then start without compiling them, even where PYTHONDONTWRITEBYTECODE
# keeps Python from caching what it compiles (0.1 s of every command here).
.venv/bin/python -m compileall -q -j 0 ironfs client replication > /dev/null
# The editable install builds native/ into ironfs/_native*.so; insist on it here.
.venv/bin/python -c "from ironfs.format import delta; assert delta.IMPLEMENTATION == 'native', delta.IMPLEMENTATION"
