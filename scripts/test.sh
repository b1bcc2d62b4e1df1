#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite (about 15 minutes on
# 2 cores). Tests work in a temporary folder of their own, removed at the end
# whatever the outcome (large trees, data roots, loop devices' images).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export IRONFS_REQUIRE_NATIVE=1
work=$(mktemp -d "${TMPDIR:-/tmp}/ironcore-tests.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
.venv/bin/python -m pytest -n 2 -q -p no:cacheprovider --basetemp "$work/tmp" tests "$@"
