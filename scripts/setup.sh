#!/usr/bin/env bash
# Installs what Ironcore needs on a Debian machine with Python 3.11+: the system
# packages named as arguments (plus the base ones) through apt-get when missing
# (as root, or through sudo), and the project with its Python dependencies into
# .venv. fuse3 and its headers are for `ironfs mount` (pyfuse3 builds against
# them); the WebDAV clients (davfs2, litmus, rclone, cadaver) are there for
# tests/test_dav.py; tinyproxy is the authenticating HTTP proxy that
# tests/test_proxy.py runs with its own config. What is installed already is
# not installed again: apt-get only runs for missing packages, pip only when
# pyproject.toml, setup.py or native/ changed since the last install (a stamp
# in .venv). A package lock held by another apt-get (unattended upgrades) is
# waited for, up to 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "setup: $*"; }

need=(acl attr gcc python3-venv fuse3 libfuse3-dev pkg-config davfs2 litmus rclone cadaver tinyproxy "$@")
missing=()
for pkg in "${need[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing system packages with apt-get (needs root): ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # noninteractive: no prompt ever blocks (davfs2 asks whether unprivileged users
  # may mount; its default, no, is what we want). Set through env so sudo keeps it.
  apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
  $SUDO "${apt[@]}" update -q
  $SUDO "${apt[@]}" install -y -q "${missing[@]}"
else
  step "system packages: all there"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  "$PY" -m venv .venv
fi
# What the install is made from: when none of it changed, the venv is current.
stamp=$({ .venv/bin/python -V; cat pyproject.toml setup.py $(find native -maxdepth 1 -type f | sort); } | sha256sum | cut -d" " -f1)
native_ok() {
  .venv/bin/python -c "from ironfs.format import delta; assert delta.IMPLEMENTATION == 'native', delta.IMPLEMENTATION" \
    2>/dev/null
}
if [ "$(cat .venv/installed.stamp 2>/dev/null)" = "$stamp" ] && native_ok; then
  step "Python packages in .venv: current"
else
  step "installing the Python packages into .venv and compiling native/ (a minute or two; log: .venv/pip.log)"
  rm -f .venv/installed.stamp
  if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[test]'; } > .venv/pip.log 2>&1; then
    cat .venv/pip.log
    echo "error: installing the Python packages failed (log above, also in .venv/pip.log)" >&2
    exit 1
  fi
  # The editable install builds native/ into ironfs/_native*.so; insist on it here.
  .venv/bin/python -c "from ironfs.format import delta; assert delta.IMPLEMENTATION == 'native', delta.IMPLEMENTATION"
  echo "$stamp" > .venv/installed.stamp
fi
# Bytecode for our own packages, as a regular (not editable) install writes it:
# commands then start without compiling them, even where PYTHONDONTWRITEBYTECODE
# keeps Python from caching what it compiles (0.1 s of every command here).
# Only changed modules are compiled again.
.venv/bin/python -m compileall -q -j 0 ironfs client replication > /dev/null
step "ready"
