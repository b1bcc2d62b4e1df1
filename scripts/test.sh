#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export IRONFS_REQUIRE_NATIVE=1
exec .venv/bin/python -m pytest -n 2 -q -p no:cacheprovider tests "$@"
