#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every test: unit and component tests, then the multi-host
# tests on real shoald processes in network-namespace hosts. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The default run includes the QEMU lab (integration/vm, last): about 12 min with its guest image
# cached in /var/cache/shoal-vm, 3-4 min more the first time on a machine. Leave it out with
# -m "not vm" (e.g. bash scripts/test.sh -m "not vm" tests integration).
# The scale run (integration/test_scale_small.py, marker scale: 3 managers and 1,000 simulated
# nodes, 20,000 tasks; about 3.5 min) is part of the default run; leave it out with
# -m "not scale".
if [ $# -eq 0 ]; then set -- tests integration; fi
exec .venv/bin/python -m pytest -ra "$@"
