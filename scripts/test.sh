#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every test: unit and component tests, then the multi-host
# tests on real shoald processes in network-namespace hosts. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then set -- tests integration; fi
exec .venv/bin/python -m pytest -ra "$@"
